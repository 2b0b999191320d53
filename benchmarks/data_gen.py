"""Generation rate of the synthetic data: 3-D prostate cases (volumes/s) at the tiny (32^3) and small (64^3) sizes,
each task's items/s, and 2-D images/s. Prints and saves benchmarks/results/data_gen.json.

Usage: .venv/bin/python benchmarks/data_gen.py [--n 40]
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # stable timing on a shared machine (before numpy/torch load BLAS)
import argparse
import platform
import time
from pathlib import Path

import torch

from vfm_transfer.core import atomic_write_json, load_profile
from vfm_transfer.data import TASKS, SyntheticImages2D, SyntheticProstate, make_task_dataset

OUT = Path(__file__).resolve().parent / "results" / "data_gen.json"


def rate(make, n):
    "(items per wall second, CPU seconds per item) over n uncached items, after one warm-up item."
    ds = make(n + 1)
    ds[0]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(1, n + 1): ds[i]
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40, help="volumes per measurement")
    args = ap.parse_args()
    torch.set_num_threads(1)  # stable timing on a shared machine; the library itself leaves threads alone
    res = {"load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(), "n": args.n, "torch_threads": 1, "machine": platform.machine(), "python": platform.python_version(), "volumes_per_s": {}, "task_items_per_s": {}}
    for prof in ("tiny", "small"):
        size = tuple(load_profile(prof).vol_size)
        n = args.n if prof == "tiny" else max(4, args.n // 4)
        r, cpu = rate(lambda k: SyntheticProstate(k, size=size, seed=123, cache=False), n)
        res["volumes_per_s"][f"{prof} {size[0]}^3"] = round(r, 2)
        res.setdefault("cpu_ms_per_volume", {})[f"{prof} {size[0]}^3"] = round(1000 * cpu, 1)
        print(f"SyntheticProstate {prof} {size}: {r:.1f} volumes/s ({1000 / r:.1f} ms/volume wall, {1000 * cpu:.1f} ms CPU)")
    p = load_profile("tiny", n_train=args.n + 1)
    for task in TASKS:
        # cases are generated once per split and shared by the tasks: warm the cases, then time the task transform
        ds = make_task_dataset(task, "train", p, seed=321)
        t0 = time.perf_counter()
        for i in range(len(ds)): ds[i]
        r = len(ds) / (time.perf_counter() - t0)
        res["task_items_per_s"][task] = round(r, 2)
        print(f"make_task_dataset({task!r}) tiny: {r:.1f} items/s (first task includes generating the cases)")
    for size in (32, 64):
        r, _ = rate(lambda k: SyntheticImages2D(k, size=size, n_classes=10, domain=list(range(6)) * (k // 6) + list(range(k % 6)), cache=False), 600)
        res[f"images2d_per_s_{size}px"] = round(r, 1)
        print(f"SyntheticImages2D {size}px (all domains): {r:.0f} images/s")
    atomic_write_json(OUT, res)
    print(f"saved {OUT}")


if __name__ == "__main__":
    main()
