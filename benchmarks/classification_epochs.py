"""Classification test AUC against fine-tuning length: does a longer run make the 3-D ViT classifiers learn?

For each init and seed the profile's classification run is trained for each `--epochs` value (everything else as the
profile: its own n_train and lr from `finetune_overrides`) and scored on the seed's test set. Per init and epochs it
reports the mean test AUC with its two-level bootstrap CI (seeds, then test cases), per init the paired difference
between the longest and the shortest run, and per epochs each init's paired difference to the first init named
"scratch" (same seeds, same test cases). Each run's seconds are its epochs' own (from its history), so they hold for
reused run folders too; `wall_seconds` is this invocation's. This is a measurement for choosing
the profile, kept outside the experiment notebooks; it changes nothing in them.

Prints and saves benchmarks/results/classification_epochs_<profile>.json.
Usage: python benchmarks/classification_epochs.py [--profile cpu] [--epochs 10 20] [--seeds 0 1 2] [--workers 2]
       [--run-root DIR]   (run folders are reused, so a killed benchmark resumes where it stopped)
       [--out FILE]       (default benchmarks/results/classification_epochs_<profile>.json)
"""
import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VFM_TRANSFER_QUIET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from vfm_transfer.core import atomic_write_json, load_profile  # noqa: E402
from vfm_transfer.stats import estimate  # noqa: E402


def one_run(profile, init, seed, epochs, run_root):
    "Train (or reload) one classification run: its per-case labels and scores, and its epochs' seconds (from its history)."
    import torch
    torch.set_num_threads(1)
    from vfm_transfer.finetune import run_finetune
    run_dir = Path(run_root) / f"{init}_s{seed}_e{epochs}"
    h = run_finetune("classification", init, profile, seed=seed, run_dir=run_dir, finetune_epochs=epochs)
    cases = json.loads((run_dir / "test_cases.json").read_text())["values"]
    seconds = round(sum(r.get("seconds", 0.0) for r in h.rows), 1)
    return dict(init=init, seed=seed, epochs=epochs, seconds=seconds, test_auc=h.meta["test"]["auc"],
                val=[round(float(v), 4) for v in h.values()[1]], label=cases["label"], score=cases["prob"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--inits", nargs="+", default=["mae", "contrastive", "scratch"])
    ap.add_argument("--epochs", nargs="+", type=int, default=[10, 20])
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the profile's seeds")
    ap.add_argument("--workers", type=int, default=2, help="runs at a time, one thread each")
    ap.add_argument("--run-root", default=str(ROOT / ".bench_runs" / "classification_epochs"))
    ap.add_argument("--out", default=None, help="default: benchmarks/results/classification_epochs_<profile>.json")
    args = ap.parse_args()
    p = load_profile(args.profile)
    seeds = list(args.seeds if args.seeds is not None else p.seeds)
    jobs = [(args.profile, i, s, e, args.run_root) for e in sorted(args.epochs, reverse=True) for i in args.inits for s in seeds]
    t0 = time.time()
    with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as ex:
        runs = []
        for r in ex.map(one_run, *zip(*jobs)):
            runs.append(r)
            print(f"[{len(runs)}/{len(jobs)}] {r['init']} seed {r['seed']} {r['epochs']} epochs: test AUC "
                  f"{r['test_auc']:.4f} ({r['seconds']} s)", flush=True)
    by = {(r["init"], r["epochs"], r["seed"]): r for r in runs}
    lo_e, hi_e = min(args.epochs), max(args.epochs)
    summary = {}
    for i in args.inits:
        y = [by[(i, lo_e, s)]["label"] for s in seeds]
        per = {}
        for e in sorted(args.epochs):
            est = estimate(dict(kind="auc", y=y, score=[by[(i, e, s)]["score"] for s in seeds]))
            per[str(e)] = dict(mean=est["effect"], ci=est["ci"], per_seed=[by[(i, e, s)]["test_auc"] for s in seeds],
                               seconds_per_run=float(np.mean([by[(i, e, s)]["seconds"] for s in seeds])))
        d = estimate(dict(kind="auc_diff", y=y, a=[by[(i, hi_e, s)]["score"] for s in seeds],
                          b=[by[(i, lo_e, s)]["score"] for s in seeds]))
        summary[i] = dict(per_epochs=per, diff=dict(epochs=[hi_e, lo_e], effect=d["effect"], ci=d["ci"], test=d["test"]))
        print(i, {e: (round(v["mean"], 3), [round(c, 3) for c in v["ci"]]) for e, v in per.items()},
              f"{hi_e} - {lo_e} epochs: {d['effect']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]", flush=True)
    vs_scratch = {}
    if "scratch" in args.inits:
        for e in sorted(args.epochs):
            for i in (i for i in args.inits if i != "scratch"):
                d = estimate(dict(kind="auc_diff", y=[by[("scratch", e, s)]["label"] for s in seeds],
                                  a=[by[(i, e, s)]["score"] for s in seeds], b=[by[("scratch", e, s)]["score"] for s in seeds]))
                vs_scratch[f"{i} - scratch @ {e} epochs"] = dict(effect=d["effect"], ci=d["ci"])
                print(f"{i} - scratch @ {e} epochs: {d['effect']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]", flush=True)
    res = dict(profile=args.profile, seeds=seeds, n_test=len(runs[0]["label"]), epochs=sorted(args.epochs),
               workers=args.workers, wall_seconds=round(time.time() - t0, 1), cpu_count=os.cpu_count(),
               machine=platform.machine(), load_avg_end=list(os.getloadavg()), summary=summary, vs_scratch=vs_scratch,
               runs=[{k: v for k, v in r.items() if k not in ("label", "score")} for r in runs])
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"classification_epochs_{args.profile}.json"
    atomic_write_json(out, res)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    print("saved", out)


if __name__ == "__main__":
    main()
