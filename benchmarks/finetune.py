"""Fine-tuning throughput on the tiny profile: samples/s of one training epoch per task (CPU; GPU when there is one),
plus the wall time of one complete `run_finetune` (mae init, tiny profile, pretraining cache cold and warm).

Prints and saves benchmarks/results/finetune.json. Usage: python benchmarks/finetune.py [--threads N] [--no-run]
"""
import argparse
import json
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

from vfm_transfer.core import atomic_write_json, load_profile, set_seed  # noqa: E402
from vfm_transfer.data import TASKS, make_task_dataset  # noqa: E402
from vfm_transfer.encoders import build_encoder, encoder_config  # noqa: E402
from vfm_transfer.finetune import build_specialised, finetune, run_finetune  # noqa: E402
from vfm_transfer.heads import build_head  # noqa: E402


def epoch_throughput(task, device, p, specialised=False, epochs=2):
    "Train `epochs` epochs; report the last one's (warm) training samples/s and the epoch's total seconds."
    train = make_task_dataset(task, "train", p, seed=0)
    val = make_task_dataset(task, "val", p, seed=0)
    set_seed(0)
    if specialised:
        enc, head = build_specialised(task), None
    else:
        enc = build_encoder(**encoder_config(p))
        head = build_head(task, enc)
    h = finetune(enc, head, task, train, val, epochs=epochs, batch_size=p.batch_size, lr=p.lr, device=device,
                 verbose=False)
    last = h.rows[-1]
    return dict(n_train=len(train), n_val=len(val), batch_size=p.batch_size,
                train_seconds=round(last["train_seconds"], 3), epoch_seconds=round(last["seconds"], 3),
                samples_per_s=round(len(train) / last["train_seconds"], 2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 gives stable numbers on a shared machine)")
    ap.add_argument("--no-run", action="store_true", help="skip the complete run_finetune timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = load_profile("tiny")
    res = dict(profile="tiny", vol_size=list(p.vol_size), encoder=p.encoder, torch_threads=torch.get_num_threads(),
               torch=torch.__version__, machine=platform.machine(), cpu_count=os.cpu_count(),
               load_avg_start=list(os.getloadavg()), cpu={}, cpu_specialised={})
    for task in TASKS:
        res["cpu"][task] = epoch_throughput(task, "cpu", p)
        res["cpu_specialised"][task] = epoch_throughput(task, "cpu", p, specialised=True)
        print(task, "vit", res["cpu"][task], "specialised", res["cpu_specialised"][task], flush=True)
    if torch.cuda.is_available():
        res["gpu"] = {task: epoch_throughput(task, "cuda", p) for task in TASKS}
        res["gpu_device"] = torch.cuda.get_device_name()
    else:
        res["gpu"] = {"skipped": "no CUDA GPU on this machine"}
    if not args.no_run:
        with tempfile.TemporaryDirectory() as d:
            os.environ["VFM_TRANSFER_CACHE"] = d  # cold pretraining cache
            t0 = time.perf_counter()
            h = run_finetune("segmentation", "mae", profile="tiny", run_dir=Path(d) / "cold", device="cpu", verbose=False)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            run_finetune("segmentation", "mae", profile="tiny", run_dir=Path(d) / "warm", device="cpu", verbose=False)
            warm = time.perf_counter() - t0
        res["run_finetune_tiny_segmentation_mae"] = dict(
            seconds_cold_cache=round(cold, 2), seconds_pretrain_cached=round(warm, 2), epochs=len(h.rows),
            test=h.meta.get("test"))
        print("run_finetune tiny segmentation mae:", res["run_finetune_tiny_segmentation_mae"], flush=True)
    res["load_avg_end"] = list(os.getloadavg())
    out = ROOT / "benchmarks" / "results" / "finetune.json"
    atomic_write_json(out, res)
    print(json.dumps(res, indent=1))
    print("saved", out)


if __name__ == "__main__":
    main()
