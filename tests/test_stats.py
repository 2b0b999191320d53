"""Statistical checks of vfm_transfer.stats beyond the notebook's examples: interval coverage under simulated nulls
(the verdict rule's error rate), power under clear effects, exact bootstrap distributions by enumeration, and
DeLong's test against the O(mn) definition and the bootstrap.

Every simulation is seeded, so every assertion is deterministic. Bounds leave room for Monte-Carlo error of the
simulation itself (300 nulls: a true 95 % coverage reads 95 +- 2.5 %), so a correct interval passes while an
interval that ignores a level of variation (seeds or cases) or has the wrong width fails.
"""
import itertools
import json

import numpy as np
import pytest
from scipy import stats

from vfm_transfer.stats import (aggregate_ci, auc, auc_bootstrap, check_findings, delong_test, finding,
                                paired_bootstrap, probability_of_improvement, verdict)

N_SIMS, N_BOOT = 300, 300


def simulate(n_seeds, n_cases, seed_sd, case_sd=0.0, shift=0.0, design="nested", n_sims=N_SIMS, rng_seed=0):
    "Verdict counts for paired differences d = shift + seed effect + (shared) case effect + noise."
    rng, counts = np.random.default_rng(rng_seed), dict(reproduced=0, contradicted=0, inconclusive=0)
    for i in range(n_sims):
        d = (shift + rng.normal(0, seed_sd, size=(n_seeds, 1)) + rng.normal(0, case_sd, size=(1, n_cases))
             + rng.normal(0, 1, size=(n_seeds, n_cases)))
        r = paired_bootstrap(d, np.zeros_like(d), n_boot=N_BOOT, cases=design, seed=i)
        counts[verdict(r["ci"], +1)] += 1
    return {k: v / n_sims for k, v in counts.items()}


# (n_seeds, n_cases, seed_sd, case_sd, design): one seed; seeds that agree; a seed spread as large as the case-level
# standard error (1/sqrt(200) = 0.07); the same cases under every seed with case difficulty shared across seeds
RESOLVABLE = [(1, 200, 0.0, 0.0, "nested"), (3, 200, 0.0, 0.0, "nested"), (3, 200, 0.07, 0.0, "nested"),
              (3, 200, 0.1, 1.0, "shared")]


@pytest.mark.parametrize("n_seeds,n_cases,seed_sd,case_sd,design", RESOLVABLE)
def test_null_is_inconclusive(n_seeds, n_cases, seed_sd, case_sd, design):
    rates = simulate(n_seeds, n_cases, seed_sd, case_sd, design=design)
    assert rates["inconclusive"] >= 0.90, rates
    assert rates["reproduced"] <= 0.08 and rates["contradicted"] <= 0.08, rates  # errors fall on both sides


@pytest.mark.parametrize("n_seeds,n_cases,seed_sd,case_sd,design", RESOLVABLE)
def test_clear_effects_are_resolved(n_seeds, n_cases, seed_sd, case_sd, design):
    shift = 0.4 if case_sd == 0 else 1.0  # about 5 standard errors of the effect in each design
    assert simulate(n_seeds, n_cases, seed_sd, case_sd, shift, design, n_sims=40)["reproduced"] >= 0.95
    assert simulate(n_seeds, n_cases, seed_sd, case_sd, -shift, design, n_sims=40)["contradicted"] >= 0.95


def test_shared_cases_need_the_shared_design():
    # the same cases under every seed: nested resampling under-counts the shared case difficulty
    assert simulate(3, 200, 0.0, 1.0, design="nested")["inconclusive"] < 0.90


@pytest.mark.xfail(strict=True, reason="known limit: a percentile interval over 3 seeds covers ~80 % when the seed "
                   "spread dominates (the bootstrap cannot reach beyond the 3 seed means)")
def test_seed_dominated_null_with_three_seeds():
    assert simulate(3, 200, 0.3)["inconclusive"] >= 0.90


def exact_two_level(d, design):
    "All equally likely two-level resamples of the mean of `d` (n_seeds, n_cases), enumerated."
    n_seeds, n_cases = d.shape
    case_draws = list(itertools.product(range(n_cases), repeat=n_cases))
    out = []
    for seeds in itertools.product(range(n_seeds), repeat=n_seeds):
        if design == "shared":
            out += [np.mean([d[s, list(c)].mean() for s in seeds]) for c in case_draws]
        else:
            for cs in itertools.product(case_draws, repeat=n_seeds):
                out.append(np.mean([d[s, list(c)].mean() for s, c in zip(seeds, cs)]))
    return np.array(out)


def is_quantile(exact, q, value, tol=0.01):
    "Whether `value` is a q-quantile of the discrete distribution `exact`, up to `tol` in probability."
    return np.mean(exact < value - 1e-9) - tol <= q <= np.mean(exact <= value + 1e-9) + tol


@pytest.mark.parametrize("design", ["nested", "shared"])
def test_two_level_matches_enumeration(design):
    d = np.array([[0.0, 1.0, 3.0], [2.0, 2.5, 7.0]])
    exact = exact_two_level(d, design)
    r = paired_bootstrap(d, np.zeros_like(d), n_boot=40_000, cases=design, seed=1)
    assert is_quantile(exact, 0.025, r["ci"][0]) and is_quantile(exact, 0.975, r["ci"][1]), r["ci"]
    wide = paired_bootstrap(d, np.zeros_like(d), n_boot=40_000, cases=design, seed=1, ci=0.5)
    assert is_quantile(exact, 0.25, wide["ci"][0]) and is_quantile(exact, 0.75, wide["ci"][1]), wide["ci"]
    if design == "nested":  # and the analytic bootstrap variance: (between-seed + within-seed / n_cases) / n_seeds
        m, v = d.mean(1), d.var(1)
        assert exact.var() == pytest.approx((m.var() + v.mean() / d.shape[1]) / d.shape[0], rel=1e-12)


def test_stratified_aggregate_matches_enumeration():
    x = {"a": [0.0, 1.0, 5.0], "b": [10.0, 10.5, 13.0]}
    exact = [np.mean([np.mean(np.take(x["a"], i)), np.mean(np.take(x["b"], j))])
             for i in itertools.product(range(3), repeat=3) for j in itertools.product(range(3), repeat=3)]
    r = aggregate_ci(x, n_boot=40_000, seed=2)
    assert r["effect"] == pytest.approx(np.mean([np.mean(v) for v in x.values()]))
    assert is_quantile(np.array(exact), 0.025, r["ci"][0]) and is_quantile(np.array(exact), 0.975, r["ci"][1])


def aggregate_null_rate(n_tasks, n_seeds, n_sims=1000):  # cheap, so more sims: its coverage sits nearer 90 %
    rng, inconclusive = np.random.default_rng(3), 0
    for i in range(n_sims):
        x = rng.normal(0, 1, size=(n_seeds, n_tasks)) + rng.normal(0, 3, size=(1, n_tasks))  # tasks differ in scale
        y = x - rng.normal(0, 1, size=(n_seeds, n_tasks))  # paired by seed, no difference on average
        inconclusive += verdict(aggregate_ci(x, y, n_boot=N_BOOT, seed=i)["ci"], +1) == "inconclusive"
    return inconclusive / n_sims


def test_aggregate_null_is_inconclusive():
    assert aggregate_null_rate(5, 10) >= 0.90


@pytest.mark.xfail(strict=True, reason="known limit (rliable's design too): 3 seeds per task leave the stratified "
                   "bootstrap's variance (n-1)/n of the truth, so 3 tasks x 3 seeds cover ~80 %")
def test_aggregate_null_three_by_three():
    assert aggregate_null_rate(3, 3) >= 0.90


def test_aggregate_known_effect():
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, size=(5, 4)) + np.array([0.0, 10.0, -5.0, 100.0])
    r = aggregate_ci(x + 2.0, x, n_boot=500)
    assert r["effect"] == pytest.approx(2.0) and r["ci"] == pytest.approx((2.0, 2.0))
    noisy = aggregate_ci(x + 2.0 + rng.normal(0, 0.5, size=x.shape), x, n_boot=500)
    assert noisy["ci"][0] < 2.0 < noisy["ci"][1] and verdict(noisy["ci"], +1) == "reproduced"


def brute_improvement(x, y):
    return np.mean([np.mean([[(a > b) + 0.5 * (a == b) for b in y[k]] for a in x[k]]) for k in x])


def test_probability_of_improvement_against_loops():
    rng = np.random.default_rng(5)
    x = {"t1": rng.integers(0, 4, 5).astype(float), "t2": rng.normal(size=3)}
    y = {"t1": rng.integers(0, 4, 4).astype(float), "t2": rng.normal(size=6)}  # ties, unequal run counts
    r = probability_of_improvement(x, y, n_boot=200)
    assert r["probability"] == pytest.approx(brute_improvement(x, y), abs=1e-12)
    assert r["effect"] == pytest.approx(r["probability"] - 0.5)
    same = probability_of_improvement(x, x, n_boot=200)
    assert same["probability"] == 0.5 and same["ci"][0] < 0 < same["ci"][1]


def brute_delong(y, scores):
    "DeLong et al. (1988) by its O(mn) definition: structural components from the full psi matrices."
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10, v01 = psi.mean(2), psi.mean(1)
    return psi.mean((1, 2)), np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]


@pytest.mark.parametrize("m,n,ties", [(5, 7, True), (40, 25, False), (30, 30, True)])
def test_delong_matches_definition(m, n, ties):
    rng = np.random.default_rng(m * n)
    y = np.r_[np.ones(m, int), np.zeros(n, int)]
    a, b = y + rng.normal(size=m + n), 0.5 * y + rng.normal(size=m + n)
    if ties: a, b = np.round(a), np.round(b * 2) / 2
    aucs, cov = brute_delong(y, np.stack([a, b]))
    r = delong_test(y, a, b)
    assert r["auc_a"] == pytest.approx(aucs[0], abs=1e-12) and r["auc_b"] == pytest.approx(aucs[1], abs=1e-12)
    assert r["se"] == pytest.approx(np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), rel=1e-10)
    one = delong_test(y, a)
    assert one["se"] == pytest.approx(np.sqrt(cov[0, 0]), rel=1e-10) and one["effect"] == pytest.approx(aucs[0] - 0.5)
    u = stats.mannwhitneyu(a[y == 1], a[y == 0]).statistic
    assert auc(y, a) == pytest.approx(u / (m * n), abs=1e-12)


def test_delong_agrees_with_bootstrap():
    rng = np.random.default_rng(6)
    y = np.repeat([0, 1], 150)
    shared = rng.normal(size=300)  # correlated models, as two encoders on the same cases are
    a, b = y * 1.2 + shared + rng.normal(size=300), y * 0.9 + shared + rng.normal(size=300)
    d, bs = delong_test(y, a, b), auc_bootstrap(y, a, b, n_boot=4000)
    assert d["effect"] == pytest.approx(bs["effect"], abs=1e-12)
    assert np.diff(bs["ci"])[0] == pytest.approx(np.diff(d["ci"])[0], rel=0.1)
    one_d, one_bs = delong_test(y, a), auc_bootstrap(y, a, n_boot=4000)
    assert np.diff(one_bs["auc_ci"])[0] == pytest.approx(np.diff(one_d["auc_ci"])[0], rel=0.1)
    assert one_bs["effect"] == pytest.approx(one_d["effect"], abs=1e-12)


def test_delong_null_is_inconclusive():
    rng, inconclusive = np.random.default_rng(7), 0
    y = np.repeat([0, 1], 100)
    for _ in range(N_SIMS):
        shared = rng.normal(size=200)
        a, b = y + shared + rng.normal(size=200), y + shared + rng.normal(size=200)  # equally good
        inconclusive += verdict(delong_test(y, a, b)["ci"], +1) == "inconclusive"
    assert inconclusive / N_SIMS >= 0.90


def test_auc_across_seeds_null_is_inconclusive():
    rng, inconclusive = np.random.default_rng(8), 0
    y = np.repeat([0, 1], 100)
    for i in range(100):
        a, b = y + rng.normal(size=(3, 200)), y + rng.normal(size=(3, 200))
        inconclusive += verdict(auc_bootstrap(y, a, b, n_boot=200, seed=i)["ci"], +1) == "inconclusive"
    assert inconclusive / 100 >= 0.90


def test_findings_round_trip_json():
    rng = np.random.default_rng(9)
    base = rng.normal(size=(3, 50))
    recs = [finding("A beats B", paired_bootstrap(base + 1, base + rng.normal(0, .1, (3, 50)), n_boot=200), +1),
            finding("A beats chance", delong_test(np.repeat([0, 1], 25), base[0]), +1),
            finding("X improves on Y across tasks", probability_of_improvement(base, base, n_boot=100), +1, n_test=50)]
    assert [f["verdict"] for f in recs] == ["reproduced", "inconclusive", "inconclusive"]
    assert check_findings(json.loads(json.dumps(recs))) == recs
