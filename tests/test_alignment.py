"""Statistical and numerical checks of vfm_transfer.alignment beyond the notebook's examples.

Everything is seeded, so every assertion is deterministic; the statistical bounds are chosen so that a correct
implementation fails them with probability well below 1e-3, while a biased estimator, a wrong p-value formula
or a permutation test that ignores the data fails them.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import cdist, pdist

from vfm_transfer.alignment import (correlate, feature_distances, linear_cka, median_bandwidth, mmd2,
                                    mmd_permutation_test)
from vfm_transfer.core import ConfigError, DataError


def direct_mmd2(x, y, sigma, unbiased=True):
    "Independent reference: scipy cdist, full matrices, float64."
    k = lambda p, q: np.exp(-cdist(p, q, "sqeuclidean") / (2 * sigma**2))
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    if unbiased:
        return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                - 2 * kxy.mean())
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def loop_mmd2(x, y, sigma):
    "Second reference: a plain double loop (tiny sizes only)."
    k = lambda a, b: math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * sigma**2))
    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(a, b) for a in x for b in y)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


@pytest.mark.parametrize("n,m,d", [(5, 5, 2), (9, 4, 3), (2, 7, 1)])
def test_matches_double_loop(n, m, d):
    rng = np.random.default_rng(n * 100 + m)
    x, y = rng.normal(size=(n, d)), rng.normal(0.4, 1.3, size=(m, d))
    sigma = float(np.median(pdist(np.vstack([x, y]))))
    assert mmd2(x, y) == pytest.approx(loop_mmd2(x.tolist(), y.tolist(), sigma), rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_matches_cdist_reference_float64_and_float32(estimator):
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(300, 32)), rng.normal(0.1, 1, size=(170, 32))
    sigma = float(np.median(pdist(np.vstack([x, y]))))
    ref = direct_mmd2(x, y, sigma, estimator == "unbiased")
    assert mmd2(x, y, estimator=estimator) == pytest.approx(ref, rel=1e-10)
    assert mmd2(x, y, estimator=estimator, chunk_size=37) == pytest.approx(ref, rel=1e-10)
    got32 = mmd2(x.astype(np.float32), y.astype(np.float32), estimator=estimator, bandwidth=sigma)
    assert got32 == pytest.approx(ref, rel=1e-4)


def test_chunked_equals_direct_1e9():
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(1000, 16)), rng.normal(0.05, 1, size=(777, 16))
    direct = mmd2(x, y)
    for chunk in (1, 64, 333, 999):
        if chunk == 1:
            got = mmd2(x[:40], y[:30], chunk_size=1)
            assert got == pytest.approx(mmd2(x[:40], y[:30]), rel=1e-9)
        else:
            assert mmd2(x, y, chunk_size=chunk) == pytest.approx(direct, rel=1e-9)
    # a value close to 0 (same distribution): still 1e-9 relative
    z = rng.normal(size=(600, 16))
    same = mmd2(x[:600], z)
    assert mmd2(x[:600], z, chunk_size=50) == pytest.approx(same, rel=1e-9)


def test_median_heuristic_matches_pdist():
    rng = np.random.default_rng(5)
    for n, m in ((10, 11), (100, 57), (3, 3), (2, 5)):  # even and odd numbers of pairs
        x, y = rng.normal(size=(n, 9)), rng.exponential(size=(m, 9))
        assert median_bandwidth(x, y) == pytest.approx(np.median(pdist(np.vstack([x, y]))), rel=1e-12)
    # subset above max_points: deterministic, and near the exact value
    x, y = rng.normal(size=(300, 9)), rng.normal(size=(300, 9))
    exact = np.median(pdist(np.vstack([x, y])))
    sub = median_bandwidth(x, y, max_points=200)
    assert sub == median_bandwidth(x, y, max_points=200)
    assert sub == pytest.approx(exact, rel=0.03)


def test_row_order_and_symmetry_and_input_types():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(80, 5)), rng.normal(0.3, 1, size=(61, 5))
    v = mmd2(x, y)
    assert mmd2(x[rng.permutation(80)], y[rng.permutation(61)]) == pytest.approx(v, rel=1e-12)
    assert mmd2(y, x) == pytest.approx(v, rel=1e-12)
    assert mmd2(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(v, rel=1e-12)
    for bw in ("multi", 0.9, [0.5, 2.0]):
        assert mmd2(x, y, bandwidth=bw) == pytest.approx(mmd2(y, x, bandwidth=bw), rel=1e-12)


def test_unbiased_centred_on_zero_biased_not():
    rng = np.random.default_rng(0)
    u, b = [], []
    for _ in range(200):
        x, y = rng.normal(size=(20, 3)), rng.normal(size=(25, 3))
        u.append(mmd2(x, y, bandwidth=1.5))
        b.append(mmd2(x, y, bandwidth=1.5, estimator="biased"))
    u, b = np.array(u), np.array(b)
    t_u = u.mean() / (u.std(ddof=1) / np.sqrt(len(u)))
    t_b = b.mean() / (b.std(ddof=1) / np.sqrt(len(b)))
    assert abs(t_u) < 4, t_u  # |t| > 4 has probability ~1e-4 under a correct unbiased estimator
    assert t_b > 10, t_b  # the V-statistic is biased upwards: the test above can tell


def test_null_p_values_uniform():
    rng = np.random.default_rng(42)
    ps = []
    for r in range(100):
        x, y = rng.normal(size=(15, 4)), rng.normal(size=(18, 4))
        ps.append(mmd_permutation_test(x, y, n_permutations=199, seed=r)[1])
    ps = np.array(ps)
    # p is discrete on {1/200, ..., 1}; KS against U(0,1) is conservative for it. Reject only at 0.001.
    assert stats.kstest(ps, "uniform").pvalue > 1e-3
    # fraction at or below 0.05 stays within a two-sided binomial 99.9% range around 0.05
    k = int((ps <= 0.05).sum())
    lo, hi = stats.binom.ppf(0.0005, 100, 0.05), stats.binom.ppf(0.9995, 100, 0.05)
    assert lo <= k <= hi, k


def test_mean_shift_detected_and_p_value_formula():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 6)), rng.normal(0.8, 1, size=(35, 6))
    stat, p = mmd_permutation_test(x, y, n_permutations=500)
    assert p < 0.01
    assert p == pytest.approx(1 / 501)  # nothing permuted reaches a strong shift: the smallest p possible
    assert stat == pytest.approx(mmd2(x, y), rel=1e-12)


def test_permutation_test_matches_brute_force_over_batches():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(10, 3)), rng.normal(0.2, 1, size=(8, 3))
    n, N, sigma, n_perm = 10, 18, 1.7, 60
    stat, p = mmd_permutation_test(x, y, n_permutations=n_perm, seed=4, bandwidth=sigma, batch_size=n_perm + 1)
    z, g = np.vstack([x, y]), np.random.default_rng(4)
    orders = g.random((n_perm + 1, N)).argsort(axis=1)[:, :n]
    ref = [direct_mmd2(z[o], np.delete(z, o, axis=0), sigma) for o in orders[1:]]
    obs = direct_mmd2(x, y, sigma)
    assert stat == pytest.approx(obs, rel=1e-12)
    assert p == (1 + sum(r >= obs - 1e-12 for r in ref)) / (1 + n_perm)
    # batch size changes the draws' grouping, not the distribution: p stays a valid value
    _, p2 = mmd_permutation_test(x, y, n_permutations=n_perm, seed=4, bandwidth=sigma, batch_size=7)
    assert 0 < p2 <= 1 and round(p2 * (n_perm + 1)) == p2 * (n_perm + 1)


def test_cka_invariances():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    y = rng.normal(size=(50, 4)) + x[:, :4]
    v = linear_cka(x, y)
    assert linear_cka(5.0 * x, 0.1 * y) == pytest.approx(v, rel=1e-12)
    assert linear_cka(x @ q, y) == pytest.approx(v, rel=1e-12)
    assert linear_cka(y, x) == pytest.approx(v, rel=1e-12)
    assert linear_cka(x, y, debiased=True) == pytest.approx(linear_cka(3 * x @ q, y, debiased=True), rel=1e-10)
    # debiased CKA of independent high-dimensional noise is near 0, plain CKA is not
    a, b = rng.normal(size=(30, 200)), rng.normal(size=(30, 200))
    assert abs(linear_cka(a, b, debiased=True)) < 0.1 < linear_cka(a, b)


def test_errors_name_the_culprit():
    x = np.zeros((5, 3)) + np.arange(5)[:, None]
    with pytest.raises(DataError, match="different feature dimensions"):
        mmd2(x, x[:, :2])
    with pytest.raises(DataError, match="y has 1 rows"):
        mmd2(x, x[:1])
    with pytest.raises(DataError, match="x contains NaN"):
        mmd2(np.full((3, 3), np.nan), x)
    with pytest.raises(ConfigError, match="bandwidth must be positive"):
        mmd2(x, x + 1, bandwidth=0)
    with pytest.raises(ConfigError, match="bandwidth must be positive"):
        mmd_permutation_test(x, x + 1, bandwidth=[1.0, -2.0])
    with pytest.raises(DataError, match="at least 3"):
        correlate([1.0, 2.0], [2.0, 1.0])
    with pytest.raises(DataError, match="gain contains NaN"):
        correlate([1.0, 2.0, 3.0], [2.0, np.nan, 1.0])


def test_feature_distances_run_dir(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(30, 4, generator=g)
    for task in ("classification", "synthesis"):
        for init, shift in (("mae", 0.1), ("contrastive", 1.0), ("scratch", 3.0)):
            d = tmp_path / task / init
            d.mkdir(parents=True)
            torch.save(dict(task=task, init=init, seed=0, before=base, after=base + shift,
                            random=torch.randn(30, 4, generator=g)), d / "features.pt")
    df = feature_distances(tmp_path)
    assert len(df) == 6 and set(df.model) == {"mae", "contrastive", "scratch"}
    row = df[(df.model == "mae") & (df.task == "synthesis")].iloc[0]
    assert row.D2P == pytest.approx(mmd2(base + 0.1, base), rel=1e-12)
    assert row.D2S == pytest.approx(mmd2(base + 0.1, base + 3.0), rel=1e-12)
    assert row.CKA == pytest.approx(1.0)  # a shift does not change centred representations
    # a checkpoint that would run code is refused by weights_only loading
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"before": base, "after": base, "random": base, "x": Evil()}, tmp_path / "synthesis" / "mae" / "features.pt")
    with pytest.raises(DataError, match="synthesis/mae/features.pt"):
        feature_distances(tmp_path)


def test_correlate_bootstrap():
    rng = np.random.default_rng(0)
    d = rng.uniform(size=12)
    g = -2 * d + rng.normal(0, 0.1, size=12)
    r = correlate(d, g, n_boot=500, seed=1)
    assert r["n"] == 12 and r["spearman_rho"] < -0.8 and r["pearson_p"] < 1e-3
    assert r["pearson_ci"][0] < r["pearson_r"] < r["pearson_ci"][1] < 0
    assert r == correlate(d, g, n_boot=500, seed=1)
    assert r["spearman_rho"] == pytest.approx(stats.spearmanr(d, g).statistic)
