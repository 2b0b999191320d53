"""Pretraining cost at a profile's budget: wall seconds of `pretrain_mae` and `pretrain_contrastive` on the
profile's unlabeled pool (data.unlabeled_dataset when the data module exists, else random volumes of the same
shape), on this machine's CPU, cache disabled. Wall seconds on a shared CPU are inflated by other load (the JSON
records the load average); with 1 thread the process's CPU seconds approximate the wall time on an idle core. Prints and saves benchmarks/results/pretrain_tiny.json.

    .venv/bin/python benchmarks/pretrain_tiny.py                  # tiny profile, 1 torch thread
    .venv/bin/python benchmarks/pretrain_tiny.py --profile micro --threads 2 --out /tmp/p.json
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VFM_TRANSFER_QUIET", "1")
os.environ["VFM_TRANSFER_CACHE"] = tempfile.mkdtemp(prefix="vfm_bench_")  # never reuse a cached checkpoint
from vfm_transfer.core import atomic_write_json, load_profile  # noqa: E402
from vfm_transfer.encoders import encoder_config  # noqa: E402
from vfm_transfer.pretrain import pretrain_contrastive, pretrain_mae  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 gives stable timings on a shared CPU)")
    ap.add_argument("--epochs", type=int, default=None, help="override the profile's pretrain_epochs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pretrain_tiny.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    p = load_profile(a.profile)
    epochs = a.epochs or p.pretrain_epochs
    try:
        from vfm_transfer.data import unlabeled_dataset
        ds, source = unlabeled_dataset(p, seed=0), "data.unlabeled_dataset"
    except ImportError:
        g = torch.Generator().manual_seed(0)
        ds = [{"image": torch.randn(3, *p.img_size, generator=g)} for _ in range(p.n_unlabeled)]
        source = "random volumes (data module not available)"
    cfg = encoder_config(p)
    res = dict(load_avg_1min_at_start=os.getloadavg()[0], cpu_count=os.cpu_count(), profile=a.profile, n_unlabeled=len(ds), img_size=list(p.img_size), epochs=epochs,
               batch_size=p.batch_size, threads=a.threads, data=source, cpu=platform.processor() or platform.machine(),
               torch=torch.__version__)
    for name, fn, kw in (("mae", pretrain_mae, dict(mask_ratio=p.mask_ratio)), ("contrastive", pretrain_contrastive, {})):
        t, c = time.perf_counter(), time.process_time()
        r = fn(cfg, ds, epochs=epochs, lr=p.pretrain_lr, batch_size=p.batch_size, device="cpu", cache=False, **kw)
        sec, cpu = time.perf_counter() - t, time.process_time() - c
        res[name] = dict(seconds=round(sec, 2), cpu_seconds=round(cpu, 2), first_loss=r.losses[0], last_loss=r.losses[-1])
        print(f"{name}: {sec:.1f} s wall, {cpu:.1f} s CPU for {epochs} epochs, loss {r.losses[0]:.4f} -> {r.losses[-1]:.4f}",
              flush=True)
    atomic_write_json(a.out, res)
    print("saved", a.out)


if __name__ == "__main__":
    main()
