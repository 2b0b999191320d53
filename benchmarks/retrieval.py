"""Retrieval benchmark: build and query times, memory and recall@k of the gallery search backends, plus the
query-balanced assignment on top of the search.

Default: a 1,000,000 x 256 clustered synthetic gallery, 10,000 queries, k = 10, on this machine's CPU.
Backends: faiss IndexFlatIP (exact), torch brute force (exact, chunked matmul + topk), faiss IndexIVFFlat with
several nprobe values, faiss IndexHNSWFlat (on a subset when `--hnsw-n` is smaller than the gallery; the JSON says so).
Recall@k is measured against IndexFlatIP's top-k on the same gallery (for HNSW on a subset: against exact search of
that subset). Prints and saves benchmarks/results/retrieval.json.

    .venv/bin/python benchmarks/retrieval.py                      # full size (about 25 min on 2 busy cores)
    .venv/bin/python benchmarks/retrieval.py --n-gallery 100000 --n-queries 1000 --out /tmp/r.json   # quick
"""
import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from vfm_transfer.core import atomic_write_json  # noqa: E402
from vfm_transfer.retrieval import GalleryIndex, _torch_topk, query_balanced_retrieval  # noqa: E402


def rss_mib():
    return psutil.Process().memory_info().rss / 2**20


def clustered(n, d, n_centers, noise, seed, chunk=100_000):
    """L2-normalised points around `n_centers` Gaussian centres (the centres come from seed 12345, shared by
    gallery and queries)."""
    centers = np.random.default_rng(12345).normal(size=(n_centers, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        x = centers[rng.integers(0, n_centers, m)] + noise * rng.standard_normal((m, d), dtype=np.float32)
        out[a:a + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall_at_k(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth)]))


def timed(fn):
    gc.collect()
    r0 = rss_mib()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, rss_mib() - r0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-gallery", type=int, default=1_000_000)
    ap.add_argument("--n-queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--n-centers", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=1.0, help="per-dimension noise around unit-variance centres")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--nlist", type=int, default=None, help="IVF cells (default: about sqrt(n_gallery))")
    ap.add_argument("--hnsw-n", type=int, default=100_000, help="HNSW gallery subset size (its build on 100k took 2-3 min on the 2 busy cores, so 1M would take >20 min)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--skip", nargs="*", default=["torch_balanced"], choices=["torch", "ivf", "hnsw", "balanced", "torch_balanced"],
                    help="steps to leave out (default: the torch + balanced check, which tests/test_retrieval.py covers)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "retrieval.json"))
    a = ap.parse_args(argv)
    res = dict(config=vars(a).copy(), machine=dict(
        cpu_count=os.cpu_count(), platform=platform.platform(), processor=platform.processor(),
        torch_threads=torch.get_num_threads(), faiss_threads=faiss.omp_get_max_threads(),
        faiss=faiss.__version__, torch=torch.__version__, load_average_at_start=os.getloadavg(),
        note="2 CPU cores shared with other helpers' jobs while this ran: timings are noisy upper bounds"))
    print(json.dumps(res["machine"]), flush=True)

    (g, t, _) = timed(lambda: clustered(a.n_gallery, a.dim, a.n_centers, a.noise, seed=0))
    q = clustered(a.n_queries, a.dim, a.n_centers, a.noise, seed=1)
    res["data"] = dict(gallery_shape=list(g.shape), queries_shape=list(q.shape), gallery_mib=g.nbytes / 2**20,
                       generate_s=t, kind=f"clustered: {a.n_centers} Gaussian centres, noise {a.noise}, L2-normalised")
    print(res["data"], flush=True)
    rows = res["backends"] = []

    def report(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        atomic_write_json(a.out, res)  # partial results survive an interruption

    # exact: faiss IndexFlatIP
    flat, t_build, m_build = timed(lambda: GalleryIndex(g, "flat"))
    (s_flat, i_flat), t_q, _ = timed(lambda: flat.search(q, a.k))
    report(dict(backend="flat (IndexFlatIP)", exact=True, n_gallery=len(g), build_s=t_build, build_rss_mib=m_build,
                index_mib_analytic=len(g) * a.dim * 4 / 2**20, query_s=t_q, queries_per_s=len(q) / t_q, recall_at_k=1.0))

    # exact: torch brute force (chunked matmul + topk) on the same normalised gallery
    if "torch" not in a.skip:
        (s_t, i_t), t_q, m_q = timed(lambda: _torch_topk(q, flat.g, a.k))
        report(dict(backend="torch brute force", exact=True, n_gallery=len(g), build_s=0.0, query_s=t_q,
                    query_rss_mib=m_q, queries_per_s=len(q) / t_q, recall_at_k=recall_at_k(i_t, i_flat),
                    identical_rows_vs_flat=float(np.mean((i_t == i_flat).all(1))),
                    max_abs_sim_diff_vs_flat=float(np.abs(s_t - s_flat).max())))

    if "balanced" not in a.skip:
        (bal, t_b, m_b) = timed(lambda: query_balanced_retrieval(q, None, a.k, index=flat))
        base_bal = bal
        report(dict(backend="flat + query-balanced assignment", exact=True, n_gallery=len(g), query_s=t_b,
                    query_rss_mib=m_b, unique_items=int(len(np.unique(bal))), items=int(bal.size),
                    overlap_with_plain_topk=recall_at_k(bal, i_flat),
                    note="search (first pass with max(2k, k+16) candidates, then deeper searches for queries that "
                         "ran out) + greedy assignment; compare query_s with the plain flat search"))
        if "torch_balanced" not in a.skip:
            tidx = GalleryIndex(flat.g, "torch")
            (bal_t, t_bt, _) = timed(lambda: query_balanced_retrieval(q, None, a.k, index=tidx))
            report(dict(backend="torch + query-balanced assignment", exact=True, n_gallery=len(g), query_s=t_bt,
                        identical_to_flat_balanced=bool((bal_t == base_bal).all()),
                        rows_identical_to_flat_balanced=float(np.mean((bal_t == base_bal).all(1)))))

    # approximate: IVF
    if "ivf" not in a.skip:
        ivf, t_build, m_build = timed(lambda: GalleryIndex(g, "ivf", nlist=a.nlist, seed=0))
        report(dict(backend="ivf (IndexIVFFlat) build", exact=False, n_gallery=len(g), nlist=ivf.nlist,
                    build_s=t_build, build_rss_mib=m_build,
                    index_mib_analytic=(len(g) * (a.dim * 4 + 8) + ivf.nlist * a.dim * 4) / 2**20))
        for nprobe in a.nprobe:
            ivf.nprobe = nprobe
            (s_i, i_i), t_q, _ = timed(lambda: ivf.search(q, a.k))
            report(dict(backend="ivf", exact=False, n_gallery=len(g), nlist=ivf.nlist, nprobe=nprobe, query_s=t_q,
                        queries_per_s=len(q) / t_q, recall_at_k=recall_at_k(i_i, i_flat)))
        if "balanced" not in a.skip:
            ivf.nprobe = 16
            (bal_i, t_b, _) = timed(lambda: query_balanced_retrieval(q, None, a.k, index=ivf))
            report(dict(backend="ivf nprobe=16 + query-balanced assignment", exact=False, n_gallery=len(g),
                        query_s=t_b, unique_items=int(len(np.unique(bal_i))), items=int(bal_i.size),
                        item_overlap_with_exact_balanced=recall_at_k(bal_i, base_bal)))
        del ivf; gc.collect()

    # approximate: HNSW (optionally on a subset)
    if "hnsw" not in a.skip:
        n_h = min(a.hnsw_n or len(g), len(g))
        gh = g[:n_h]
        truth = i_flat if n_h == len(g) else GalleryIndex(gh, "flat").search(q, a.k)[1]
        hnsw, t_build, m_build = timed(lambda: GalleryIndex(gh, "hnsw", hnsw_m=a.hnsw_m))
        report(dict(backend="hnsw (IndexHNSWFlat) build", exact=False, n_gallery=n_h, subset=n_h < len(g),
                    M=a.hnsw_m, ef_construction=80, build_s=t_build, build_rss_mib=m_build,
                    index_mib_analytic=(n_h * a.dim * 4 + n_h * a.hnsw_m * 2 * 4 * 1.05) / 2**20))
        for ef in (16, 64, 128, 256):
            hnsw.ef_search = ef
            (s_h, i_h), t_q, _ = timed(lambda: hnsw.search(q, a.k))
            report(dict(backend="hnsw", exact=False, n_gallery=n_h, subset=n_h < len(g), ef_search=ef, query_s=t_q,
                        queries_per_s=len(q) / t_q, recall_at_k=recall_at_k(i_h, truth)))
        if "balanced" not in a.skip and n_h == len(g):
            hnsw.ef_search = 128
            (bal_h, t_b, _) = timed(lambda: query_balanced_retrieval(q, None, a.k, index=hnsw))
            report(dict(backend="hnsw ef=128 + query-balanced assignment", exact=False, n_gallery=len(g),
                        query_s=t_b, unique_items=int(len(np.unique(bal_h))), items=int(bal_h.size),
                        item_overlap_with_exact_balanced=recall_at_k(bal_h, base_bal)))

    res["notes"] = [
        "timings were taken while other helpers' jobs shared the 2 CPU cores (see load averages): upper bounds",
        "*_rss_mib are RSS deltas around one step; freed memory reused by the allocator makes later deltas "
        "under-count, so index_mib_analytic is the better memory figure",
        "the clustered synthetic data is easy for IVF/HNSW; recall on real image embeddings will be lower",
    ] + ([f"HNSW was built on the first {min(a.hnsw_n, a.n_gallery)} gallery vectors only (a full 1M build on the "
          "shared 2 cores would take well over 10 min); its recall is against exact search of that subset"]
         if a.hnsw_n and a.hnsw_n < a.n_gallery and "hnsw" not in a.skip else [])
    res["load_average_at_end"] = os.getloadavg()
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atomic_write_json(a.out, res)
    print("saved", a.out)


if __name__ == "__main__":
    main()
