"""MMD² benchmark: vfm_transfer.alignment against alibi-detect, torchdrift and hyppo; scaling; FLOP rate.

Prints a summary and writes benchmarks/results/mmd.json (atomically). Not a test: nothing here asserts a time.

What is measured (issue 7):
  1. the MMD² statistic at n = m = 2,000, d = 768, float32 input, for this project and each peer with matched
     settings: the SAME sigma (our median heuristic on the pooled sample) is passed explicitly to every library,
     and each library's value is converted to the unbiased U-statistic (or biased V-statistic) as documented
     below before comparing values;
  2. a 1,000-permutation test: ours vs alibi-detect's MMDDrift (and torchdrift's kernel_mmd), time per permutation;
  3. scaling at n = m = 10k, 30k, 100k: seconds and peak memory (ru_maxrss of a fresh subprocess per size; torch
     allocations are invisible to tracemalloc), and chunked-vs-direct agreement;
  4. achieved FLOP rate as a fraction of a plain float32 matmul's rate measured in the same process.
Peers run in a separate venv (.venv-peers, numpy<2 for alibi-detect), built by benchmarks/peers_venv.sh on first
use, and are called through subprocesses; a peer that fails to install or run is recorded with its reason.

Usage: python benchmarks/mmd.py [--sizes 10000 30000 100000] [--skip-peers] [--perm-peer-max-s 150]
       python benchmarks/mmd.py --update-scaling --sizes 10000   (re-measure scaling points into the JSON)
       python benchmarks/mmd.py --one N   (internal: one scaling point, prints JSON)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from vfm_transfer.alignment import (_auto_chunk, MEDIAN_MAX_POINTS, median_bandwidth, mmd2,  # noqa: E402
                                    mmd_permutation_test)
from vfm_transfer.core import atomic_write_json  # noqa: E402

PEERS_VENV = ROOT / ".venv-peers"
PEERS_PY = PEERS_VENV / "bin" / "python"
D = 768


def load() -> list[float]:
    return list(os.getloadavg())


def timed(fn, repeats=3):
    "Median wall seconds over `repeats` calls and the last result."
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), out, [round(v, 4) for v in ts]


def make_data(n: int, d: int = D, shift: float = 0.02, seed: int = 0):
    "float32 Gaussian samples generated in float32 (no float64 copy), y shifted in its mean."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, d, generator=g).add_(shift)
    return x, y


def matmul_rate(size: int = 4096, k: int = D + 2, repeats: int = 5) -> float:
    "GFLOP/s of a plain float32 (size x k) @ (k x size) matmul, best of `repeats` (the machine's ceiling)."
    a, b = torch.randn(size, k), torch.randn(k, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    med = timed(lambda: torch.mm(a, b, out=out), repeats)[0]  # median, as our own timings
    return 2 * size * size * k / med / 1e9


def kernel_entries(n: int, m: int, chunk: int) -> int:
    "Kernel entries our blocked path computes: upper block triangle of K_XX and K_YY (full diagonal blocks), all K_XY."
    def tri(k):
        sizes = [min(chunk, k - r) for r in range(0, k, chunk)]
        return sum(sizes[i] * sizes[j] for j in range(len(sizes)) for i in range(j + 1))
    return tri(n) + tri(m) + n * m


def flops(n, m, chunk, d=D):
    done = 2 * (d + 2) * kernel_entries(n, m, chunk)  # what the augmented matmuls do
    needed = 2 * d * (n * (n - 1) // 2 + m * (m - 1) // 2 + n * m)  # one d-length dot product per distinct pair
    return done, needed


# ----------------------------------------------------------------------------------------------------- one size
def peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB: VmHWM from /proc (reset by exec, so a subprocess does not
    inherit its parent's peak as getrusage's ru_maxrss does on Linux); ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def one_size(n: int) -> dict:
    "One scaling point in a fresh process: time, peak RSS, FLOP rate, chunked-vs-direct agreement."
    torch.manual_seed(0)
    rss_start = peak_rss_gib()
    x, y = make_data(n)
    rss_data = peak_rss_gib()
    t = time.perf_counter()
    sigma = median_bandwidth(x, y)
    t_median = time.perf_counter() - t
    load0 = load()
    t = time.perf_counter()
    value = mmd2(x, y, bandwidth=sigma)
    t_stat = time.perf_counter() - t
    load1 = load()
    rss_peak = peak_rss_gib()
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    chunk = _auto_chunk(n, n, None)  # the block size mmd2 chose
    done, needed = flops(n, n, chunk)
    rate = matmul_rate()
    return dict(n=n, m=n, d=D, dtype="float32", sigma=sigma, seconds_median_heuristic=t_median,
                seconds_statistic=t_stat, value=value, chunk_size=chunk,
                peak_rss_gib=rss_peak, rss_before_data_gib=rss_start, rss_after_data_gib=rss_data,
                peak_rss_minus_data_gib=rss_peak - rss_data, ru_maxrss_gib=ru_maxrss,
                memory_note="peak = VmHWM of a fresh process (imports ~rss_before_data_gib, input float32 data, "
                            "one augmented float32 copy of the pooled data, Gram blocks)",
                input_gib=2 * n * D * 4 / 2**30,
                gflop_done=done / 1e9, gflop_needed=needed / 1e9, achieved_gflops=done / t_stat / 1e9,
                useful_gflops=needed / t_stat / 1e9, matmul_gflops=rate,
                fraction_of_matmul_rate=done / t_stat / 1e9 / rate, useful_fraction_of_matmul_rate=needed / t_stat / 1e9 / rate,
                loadavg_before=load0, loadavg_after=load1, torch_threads=torch.get_num_threads())


# ------------------------------------------------------------------------------------------------------- peers
PEER_CODE = r'''
import json, sys, time, numpy as np, torch
args = json.loads(sys.argv[1])
x = np.load(args["x"]); y = np.load(args["y"]); sigma = float(args["sigma"]); n, m = len(x), len(y)
which, out = args["peer"], {}
def timed(fn, r=3):
    ts = []
    for _ in range(r):
        t = time.perf_counter(); v = fn(); ts.append(time.perf_counter() - t)
    return float(np.median(ts)), v, ts
if which == "alibi-detect":
    import alibi_detect
    from alibi_detect.utils.pytorch.kernels import GaussianRBF
    from alibi_detect.utils.pytorch.distance import mmd2
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    k = GaussianRBF(sigma=torch.tensor([sigma], dtype=torch.float32))
    with torch.no_grad():
        t, v, ts = timed(lambda: float(mmd2(xt, yt, k)))
    out.update(version=alibi_detect.__version__, seconds_statistic=t, runs=ts, value_raw=v, value_unbiased=v,
               call="alibi_detect.utils.pytorch.distance.mmd2(x, y, GaussianRBF(sigma=[sigma]))",
               convention="unbiased U-statistic (trace subtracted); GaussianRBF exp(-d^2/(2 sigma^2)); sigma passed explicitly")
    P = args.get("n_perm", 0)
    if P:
        from alibi_detect.cd import MMDDrift
        cd = MMDDrift(x, backend="pytorch", p_val=0.05, n_permutations=P, sigma=np.array([sigma], dtype=np.float32),
                      configure_kernel_from_x_ref=False, device="cpu")
        t0 = time.perf_counter(); p, dist, thr = cd.score(y); tp = time.perf_counter() - t0
        out.update(perm_n=P, perm_seconds=tp, perm_seconds_per_permutation=tp / P, perm_p=float(p), perm_stat=float(dist),
                   perm_call="MMDDrift(x_ref, backend='pytorch', n_permutations=P, sigma=[sigma]).score(y)")
elif which == "torchdrift":
    import torchdrift
    from torchdrift.detectors.mmd import kernel_mmd, GaussianKernel
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    kern = GaussianKernel(lengthscale=sigma)
    t, v, ts = timed(lambda: float(kernel_mmd(xt, yt, n_perm=None, kernel=kern)))
    out.update(version=getattr(torchdrift, "__version__", "0.1.0.post1"), seconds_statistic=t, runs=ts, value_raw=v,
               value_unbiased=v - 1 / (n - 1) - 1 / (m - 1),
               call="torchdrift.detectors.mmd.kernel_mmd(x, y, n_perm=None, kernel=GaussianKernel(lengthscale=sigma))",
               convention="keeps the diagonal k(a,a)=1 in K_XX, K_YY but divides by n(n-1): unbiased = raw - 1/(n-1) - 1/(m-1)")
    P = args.get("n_perm_torchdrift", 0)
    if P:
        torch.manual_seed(0)
        t0 = time.perf_counter(); st, p = kernel_mmd(xt, yt, n_perm=P, kernel=kern); tp = time.perf_counter() - t0
        out.update(perm_n=P, perm_seconds=tp, perm_seconds_per_permutation=tp / P, perm_p=float(p))
elif which == "values":
    # value check on small float64 data with the same sigma: every library's own float64 path
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    try:
        from alibi_detect.utils.pytorch.kernels import GaussianRBF
        from alibi_detect.utils.pytorch.distance import mmd2
        out["alibi-detect"] = float(mmd2(torch.from_numpy(x64), torch.from_numpy(y64), GaussianRBF(sigma=torch.tensor([sigma], dtype=torch.float64))))
    except Exception as e: out["alibi-detect_error"] = repr(e)[:300]
    try:
        from torchdrift.detectors.mmd import kernel_mmd, GaussianKernel
        out["torchdrift_raw"] = float(kernel_mmd(torch.from_numpy(x64), torch.from_numpy(y64), n_perm=None, kernel=GaussianKernel(lengthscale=sigma)))
        out["torchdrift"] = out["torchdrift_raw"] - 1 / (n - 1) - 1 / (m - 1)
    except Exception as e: out["torchdrift_error"] = repr(e)[:300]
    try:
        from hyppo.ksample import MMD
        out["hyppo_raw_bias"] = float(MMD(compute_kernel="gaussian", bias=True, gamma=1 / (2 * sigma ** 2)).statistic(x64, y64))
    except Exception as e: out["hyppo_error"] = repr(e)[:300]
elif which == "hyppo":
    import hyppo
    from hyppo.ksample import MMD
    gamma = 1 / (2 * sigma ** 2)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)  # hyppo fails on float32 (documented trap)
    t, v, ts = timed(lambda: float(MMD(compute_kernel="gaussian", bias=True, gamma=gamma).statistic(x64, y64)), r=1)
    out.update(version=hyppo.__version__, seconds_statistic=t, runs=ts, value_raw=v,
               call="hyppo.ksample.MMD(compute_kernel='gaussian', bias=True, gamma=1/(2 sigma^2)).statistic(x64, y64)",
               convention="HSIC of pooled data vs group labels, times 2 n^2 m^2/(n+m)^4; gamma also reaches the label kernel; float64 input")
    try:
        MMD(compute_kernel="gaussian", bias=True, gamma=gamma).statistic(x[:50], y[:50]); out["float32_ok"] = True
    except Exception as e:
        out["float32_ok"] = False; out["float32_error"] = f"{type(e).__name__}: {e}"[:300]
print("JSON" + json.dumps(out))
'''


def ensure_peers() -> dict:
    "Build .venv-peers if needed; return {peer: None | install failure reason}."
    if not PEERS_PY.exists():
        subprocess.run(["bash", str(ROOT / "benchmarks" / "peers_venv.sh")], check=False)
    status = {}
    for peer, mod in (("alibi-detect", "alibi_detect"), ("torchdrift", "torchdrift"), ("hyppo", "hyppo")):
        if not PEERS_PY.exists():
            status[peer] = "peers venv could not be created"
            continue
        r = subprocess.run([str(PEERS_PY), "-c", f"import {mod}"], capture_output=True, text=True)
        if r.returncode:
            log = PEERS_VENV / f"install-{peer}.log"
            tail = log.read_text()[-400:] if log.exists() else ""
            status[peer] = f"import failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''} {tail}".strip()
        else:
            status[peer] = None
    return status


def run_peer(peer: str, args: dict, timeout: int) -> dict:
    try:
        r = subprocess.run([str(PEERS_PY), "-c", PEER_CODE, json.dumps(dict(args, peer=peer))],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout} s")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("JSON")]
    if r.returncode or not line:
        return dict(error=(r.stderr.strip()[-600:] or f"exit {r.returncode}"))
    return json.loads(line[-1][4:])


# -------------------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", type=int)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 30_000, 100_000])
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--update-scaling", action="store_true", help="re-run only --sizes into the existing --out file")
    ap.add_argument("--perm-peer-max-s", type=float, default=150, help="cap on a peer's permutation-test run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mmd.json"))
    a = ap.parse_args()
    if a.one:
        print("JSON" + json.dumps(one_size(a.one)))
        return
    if a.update_scaling:  # re-measure only the scaling points of an existing results file
        res = json.loads(Path(a.out).read_text())
        res.setdefault("scaling_reruns", []).append(dict(sizes=a.sizes, loadavg_start=load()))
        scale(res, a.sizes, a.out)
        finish(res, a.out)
        return
    res = dict(machine=dict(platform=platform.platform(), cpu_count=os.cpu_count(), torch=torch.__version__,
                            numpy=np.__version__, torch_threads=torch.get_num_threads(), loadavg_start=load(),
                            note="2 shared cores; other sessions ran on this machine at the same time, so the "
                                 "timings were taken under load (see the load averages recorded with each part)"),
               settings=dict(kernel="Gaussian exp(-|a-b|^2/(2 sigma^2))",
                             sigma="our median heuristic on the pooled float32 sample, passed explicitly to every library",
                             timing="median of 3 calls unless noted; data already in memory; float32 input",
                             median_heuristic=f"exact up to {MEDIAN_MAX_POINTS} pooled points, else exact over a "
                                              f"fixed-seed subset of {MEDIAN_MAX_POINTS} points"))
    # -- 1. the statistic at n = m = 2000
    n = 2000
    x, y = make_data(n)
    sigma = median_bandwidth(x, y)
    t_med, _, _ = timed(lambda: median_bandwidth(x, y), 1)
    t_ours, v_ours, runs = timed(lambda: mmd2(x, y, bandwidth=sigma))
    t_default, v_default, _ = timed(lambda: mmd2(x, y), 1)
    v_biased = mmd2(x, y, bandwidth=sigma, estimator="biased")
    x64, y64 = x.double(), y.double()
    v64 = mmd2(x64, y64, bandwidth=sigma, chunk_size=n)  # direct: one block per sample
    v64_chunk = mmd2(x64, y64, bandwidth=sigma, chunk_size=300)
    v32_direct = mmd2(x, y, bandwidth=sigma, chunk_size=n)
    v32_chunk = mmd2(x, y, bandwidth=sigma, chunk_size=300)
    done, needed = flops(n, n, _auto_chunk(n, n, None))  # the blocks mmd2 chose (upper block-triangle of XX, YY)
    rate = matmul_rate()
    res["statistic_n2000"] = dict(
        n=n, m=n, d=D, sigma=sigma, loadavg=load(),
        ours=dict(seconds_statistic=t_ours, runs=runs, value_unbiased=v_ours, value_biased=v_biased,
                  value_float64_input=v64, seconds_with_median_heuristic=t_default, seconds_median_heuristic=t_med,
                  gflops_done=done / t_ours / 1e9, fraction_of_matmul_rate=done / t_ours / 1e9 / rate,
                  useful_fraction_of_matmul_rate=needed / t_ours / 1e9 / rate, matmul_gflops=rate),
        chunked_vs_direct=dict(float64_rel_diff=abs(v64_chunk - v64) / abs(v64),
                               float32_rel_diff=abs(v32_chunk - v32_direct) / abs(v32_direct),
                               float32_vs_float64_rel_diff=abs(v_ours - v64) / abs(v64),
                               float32_vs_float64_abs_diff=abs(v_ours - v64),
                               note="float64 input: chunked == direct to ~1e-12. float32 input computes the Gram "
                                    "blocks in float32, so the value carries float32 rounding of the kernel terms "
                                    "(absolute ~1e-9 on terms of size ~1) whatever the chunking; relative to a tiny "
                                    "MMD² that can be ~1e-5."))
    # -- 2. our permutation test
    t_perm, (st_perm, p_perm), _ = timed(lambda: mmd_permutation_test(x, y, n_permutations=1000, bandwidth=sigma), 1)
    res["permutation_n2000"] = dict(ours=dict(n_permutations=1000, seconds=t_perm, seconds_per_permutation=t_perm / 1000,
                                              statistic=st_perm, p_value=p_perm, loadavg=load()))
    print(f"ours n=2000: statistic {t_ours:.3f} s ({done / t_ours / 1e9:.1f} GFLOP/s, matmul {rate:.1f}), "
          f"1000 permutations {t_perm:.2f} s, p={p_perm:.4f}", flush=True)
    # -- peers
    if a.skip_peers:
        res["peers"] = dict(skipped="--skip-peers")
    else:
        status = ensure_peers()
        peers = {}
        with tempfile.TemporaryDirectory() as tmp:
            np.save(f"{tmp}/x.npy", x.numpy()); np.save(f"{tmp}/y.npy", y.numpy())
            base = dict(x=f"{tmp}/x.npy", y=f"{tmp}/y.npy", sigma=sigma)
            for peer, err in status.items():
                if err:
                    peers[peer] = dict(error=f"not installed: {err}")
                    continue
                args = dict(base)
                if peer in ("alibi-detect", "torchdrift"):
                    # probe the per-permutation cost with a few permutations, then run 1000 if it fits the cap
                    key = "n_perm" if peer == "alibi-detect" else "n_perm_torchdrift"
                    probe = run_peer(peer, dict(base, **{key: 10}), timeout=900)
                    per = probe.get("perm_seconds_per_permutation")
                    args[key] = 1000 if per and per * 1000 <= a.perm_peer_max_s else max(10, int(a.perm_peer_max_s / per) if per else 10)
                out = run_peer(peer, args, timeout=1800)
                out["loadavg_after"] = load()
                peers[peer] = out
                print(f"{peer}: {json.dumps({k: v for k, v in out.items() if k in ('seconds_statistic', 'value_unbiased', 'value_raw', 'perm_seconds_per_permutation', 'perm_n', 'error')})}", flush=True)
        # value agreement on small float64 data (each library's float64 path, same sigma)
        g = np.random.default_rng(5)
        xs, ys = g.normal(size=(200, 16)), g.normal(0.3, 1, size=(150, 16))
        sig_s = median_bandwidth(xs, ys)
        with tempfile.TemporaryDirectory() as tmp:
            np.save(f"{tmp}/x.npy", xs); np.save(f"{tmp}/y.npy", ys)
            vals = run_peer("values", dict(x=f"{tmp}/x.npy", y=f"{tmp}/y.npy", sigma=sig_s), timeout=600)
        ours_u, ours_b = mmd2(xs, ys, bandwidth=sig_s), mmd2(xs, ys, bandwidth=sig_s, estimator="biased")
        check = dict(n=200, m=150, d=16, dtype="float64", sigma=sig_s, ours_unbiased=ours_u, ours_biased=ours_b, peers=vals)
        for p in ("alibi-detect", "torchdrift"):
            if p in vals: check[f"{p}_rel_diff_unbiased"] = abs(vals[p] - ours_u) / abs(ours_u)
        if "hyppo_raw_bias" in vals:
            # hyppo's MMD is its HSIC k-sample statistic (a normalised, correlation-type HSIC of the pooled data
            # against the group labels) times 2 n^2 m^2/(n+m)^4; there is no constant conversion to MMD^2
            check["hyppo_ratio_raw_over_ours_biased"] = vals["hyppo_raw_bias"] / ours_b
        res["value_check_float64"] = check
        print("value check:", json.dumps({k: v for k, v in check.items() if "rel_diff" in k or "ratio" in k}), flush=True)
        # value agreement and speed ratios
        for peer, out in peers.items():
            if "value_unbiased" in out:
                out["rel_diff_vs_ours_unbiased"] = abs(out["value_unbiased"] - v_ours) / abs(v_ours)
            if "seconds_statistic" in out:
                out["ours_speedup"] = out["seconds_statistic"] / t_ours
            if "perm_seconds_per_permutation" in out:
                out["ours_speedup_per_permutation"] = out["perm_seconds_per_permutation"] / (t_perm / 1000)
        if "value_raw" in peers.get("hyppo", {}):
            hp = peers["hyppo"]
            gamma = 1 / (2 * sigma**2)
            N = 2 * n
            # derivation: HSIC_b(K, L) with L = e^-g 11^T + (1 - e^-g) L_delta equals (1 - e^-g) 2 n^2 m^2 / N^4 MMD_b^2,
            # and hyppo multiplies by 2 n^2 m^2 / N^4 once more
            factor = (1 - np.exp(-gamma)) * (2 * n * n * n * n / N**4) ** 2
            hp["ratio_to_ours_biased"] = hp["value_raw"] / v_biased
            hp["predicted_ratio"] = float(factor)
            hp["value_biased_converted"] = hp["value_raw"] / factor
            hp["rel_diff_vs_ours_biased"] = abs(hp["value_biased_converted"] - v_biased) / abs(v_biased)
        res["peers"] = peers
        timed_peers = {p: o["seconds_statistic"] for p, o in peers.items() if "seconds_statistic" in o}
        if timed_peers:
            fastest = min(timed_peers, key=timed_peers.get)
            res["statistic_n2000"]["fastest_peer"] = fastest
            res["statistic_n2000"]["speedup_vs_fastest_peer"] = timed_peers[fastest] / t_ours
        if "perm_seconds_per_permutation" in peers.get("alibi-detect", {}):
            res["permutation_n2000"]["alibi_detect"] = {k: peers["alibi-detect"][k] for k in
                                                        ("perm_n", "perm_seconds", "perm_seconds_per_permutation", "perm_p")}
            res["permutation_n2000"]["speedup_per_permutation_vs_alibi"] = peers["alibi-detect"]["perm_seconds_per_permutation"] / (t_perm / 1000)
    atomic_write_json(a.out, res)  # partial results survive a long scaling run
    # -- 3. scaling, one fresh process per size
    res["scaling"] = []
    scale(res, a.sizes, a.out)
    finish(res, a.out)


def scale(res: dict, sizes, out: str):
    "Run each scaling point in a fresh process; replace any earlier point of the same size; save after each."
    for size in sizes:
        print(f"scaling n=m={size} ...", flush=True)
        r = subprocess.run([sys.executable, __file__, "--one", str(size)], capture_output=True, text=True)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("JSON")]
        point = json.loads(line[-1][4:]) if line else dict(n=size, error=r.stderr[-600:])
        res["scaling"] = sorted([p for p in res.get("scaling", []) if p["n"] != size] + [point], key=lambda p: p["n"])
        print(json.dumps({k: point.get(k) for k in ("n", "seconds_statistic", "peak_rss_gib", "peak_rss_minus_data_gib",
                                                   "fraction_of_matmul_rate", "error")}), flush=True)
        atomic_write_json(out, res)


def finish(res: dict, out: str):
    "Targets summary and the GPU note; save."
    scaling = res.get("scaling", [])
    res["gpu"] = dict(skipped="no GPU lent to this task; the n = 1,000,000 per side GPU run was not done")
    res["targets"] = dict(
        statistic_2x_faster_than_fastest_peer=res["statistic_n2000"].get("speedup_vs_fastest_peer"),
        permutation_100x_less_time_than_alibi=res["permutation_n2000"].get("speedup_per_permutation_vs_alibi"),
        fraction_of_matmul_rate_n_ge_10k={p["n"]: p.get("fraction_of_matmul_rate") for p in scaling},
        peak_rss_gib_at_100k=next((p.get("peak_rss_gib") for p in scaling if p["n"] == 100_000), None),
        peak_rss_minus_input_gib_at_100k=next((p.get("peak_rss_minus_data_gib") for p in scaling if p["n"] == 100_000), None))
    res["machine"]["loadavg_end"] = load()
    atomic_write_json(out, res)
    print(json.dumps(res["targets"], indent=1))


if __name__ == "__main__":
    main()
