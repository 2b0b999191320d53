"""Benchmark of vfm_transfer.distill on the tiny settings (CPU, one thread):

1. seconds per task-distillation epoch with and without a TeacherCache (target: >= 3x faster with it), plus the
   one-off cost of building the cache;
2. inference throughput (images/s) of the teacher and of each student.

Wall and CPU (process) seconds are both recorded: on a shared machine wall time includes waiting for a core.
Prints and saves benchmarks/results/distill.json (atomically).

    .venv/bin/python benchmarks/distill.py [--profile tiny] [--epochs 2] [--n-transfer N]
"""
import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from vfm_transfer.core import atomic_write_json, load_profile, set_seed
from vfm_transfer.data import SyntheticImages2D
from vfm_transfer.distill import STUDENTS, TeacherCache, build_student, build_teacher, count_flops, distill_task

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *a):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def throughput(model, size, batch=64, reps=3):
    model.eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        model(x)  # warm-up
        best_w, best_c = float("inf"), float("inf")
        for _ in range(reps):
            with Clock() as c:
                model(x)
            best_w, best_c = min(best_w, c.wall), min(best_c, c.cpu)
    return {"images_per_s_wall": batch / best_w, "images_per_s_cpu": batch / best_c,
            "params": sum(p.numel() for p in model.parameters()),
            "flops_per_image": count_flops(model, (1, 3, size, size), backward=False)["forward"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n-transfer", type=int, default=None, help="default: the profile's transfer_size")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)  # stable timing on a shared CPU
    os.environ.setdefault("VFM_TRANSFER_QUIET", "1")
    p = load_profile(args.profile)
    n = args.n_transfer or p.transfer_size
    size, C = p.img2d_size, p.n_classes_2d
    ds = SyntheticImages2D(n, size=size, n_classes=C, domain=0, seed=0)
    for i in range(n): ds[i]  # render once: image generation is not part of distillation
    set_seed(0)
    teacher = build_teacher(p.teacher, num_classes=C, img_size=size).eval()
    res = {"profile": args.profile, "n_transfer": n, "img_size": size, "teacher": p.teacher, "n_views": p.n_views,
           "batch_size": args.batch_size, "epochs_timed": args.epochs, "threads": 1,
           "machine": platform.platform(), "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    kw = dict(epochs=args.epochs, lr=p.lr, batch_size=args.batch_size, n_views=p.n_views, seed=0, device="cpu")
    with tempfile.TemporaryDirectory() as d:
        set_seed(0); s = build_student("student_tiny", C, size)
        with Clock() as c_no:
            h_no = distill_task(teacher, s, ds, **kw)
        with Clock() as c_build:
            cache = TeacherCache(teacher, ds, n_views=p.n_views, aug_seed=0, root=d, device="cpu",
                                 batch_size=args.batch_size)
        set_seed(0); s = build_student("student_tiny", C, size)
        with Clock() as c_yes:
            h_yes = distill_task(teacher, s, ds, cache=cache, **kw)
    e = args.epochs
    res["epoch_seconds_without_cache"] = {"wall": c_no.wall / e, "cpu": c_no.cpu / e, "per_epoch_wall": h_no["epoch_seconds"]}
    res["epoch_seconds_with_cache"] = {"wall": c_yes.wall / e, "cpu": c_yes.cpu / e, "per_epoch_wall": h_yes["epoch_seconds"]}
    res["cache_build_seconds"] = {"wall": c_build.wall, "cpu": c_build.cpu}
    res["speedup_with_cache"] = {"wall": c_no.wall / c_yes.wall, "cpu": c_no.cpu / c_yes.cpu}
    res["speedup_target"] = 3.0
    res["meets_target_cpu"] = res["speedup_with_cache"]["cpu"] >= 3.0
    res["break_even_epochs_cpu"] = c_build.cpu / max(1e-9, (c_no.cpu - c_yes.cpu) / e)
    res["kd_loss_without_cache"], res["kd_loss_with_cache"] = h_no["loss"], h_yes["loss"]
    res["throughput"] = {"teacher:" + p.teacher: throughput(teacher, size)}
    for name in STUDENTS:
        set_seed(0)
        res["throughput"]["student:" + name] = throughput(build_student(name, C, size), size)
    t_ips = res["throughput"]["teacher:" + p.teacher]["images_per_s_cpu"]
    res["student_speedup_over_teacher_cpu"] = {k: v["images_per_s_cpu"] / t_ips for k, v in res["throughput"].items()
                                               if k.startswith("student:")}
    res["load_avg_end"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / "distill.json"
    atomic_write_json(out, res)
    print(json.dumps(res, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
