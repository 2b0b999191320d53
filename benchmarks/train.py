"""The training engine against a bare PyTorch step, the old per-recipe loops, flush-to-zero per task, kill/resume.

    python benchmarks/train.py [--ref COMMIT] [--epochs N] [--skip-denormal] [--out benchmarks/results/train.json]

1. samples/s of one fine-tuning and one MAE pretraining workload (tiny profile sizes, one thread): a bare PyTorch
   loop (same model, batch, loss, AdamW, schedule, clipping), `train.fit` with a checkpoint every epoch, and the
   loops of `--ref` (the commit before the engine), run from a git worktree in a subprocess;
2. seconds of a tiny fine-tune per task with and without `torch.set_flush_denormal(True)` (each in a subprocess);
3. a SIGKILL in epoch 2 of 3 of a fine-tune and the resume: seconds lost and seconds to resume;
4. lines of library code (non-blank, `vfm_transfer/*.py` without `_modidx.py`) at `--ref` and now.
Prints and saves JSON; asserts nothing.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VFM_TRANSFER_QUIET", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A workload run in a fresh interpreter: prints one JSON line. MODE is bare | engine | old (the --ref tree's loops).
WORKLOAD = r'''
import json, math, os, sys, time, tempfile
import torch
torch.set_num_threads(1)
kind, mode, epochs, denormal = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "on"
if not denormal: torch.set_flush_denormal = lambda flag: True  # the engine's call becomes a no-op
from vfm_transfer.core import load_profile, set_seed
from vfm_transfer.data import make_task_dataset, unlabeled_dataset
from vfm_transfer.encoders import build_encoder, encoder_config
from vfm_transfer.heads import build_head
p = load_profile("tiny")
task = kind if kind != "mae" else None
res = {}
if kind == "mae":
    from vfm_transfer.pretrain import build_mae, masked_patch_loss, patchify, pretrain_mae
    ds = unlabeled_dataset(p, seed=0)
    n, bs = len(ds), p.batch_size
    cfg = encoder_config(p)
    t0 = time.perf_counter()
    if mode == "bare":
        set_seed(0)
        enc = build_encoder(**cfg); mae = build_mae(enc, mask_ratio=p.mask_ratio)
        from vfm_transfer.data import item_image
        loader = torch.utils.data.DataLoader([item_image(d) for d in ds], batch_size=bs, shuffle=True, drop_last=True)
        opt = torch.optim.AdamW(mae.parameters(), lr=p.pretrain_lr)
        total = epochs * len(loader)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        t0 = time.perf_counter()
        for _ in range(epochs):
            for x in loader:
                pred, mask = mae(x)
                loss = masked_patch_loss(pred, patchify(x, enc.patch_size), mask)
                opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(mae.parameters(), 1.0)
                opt.step(); sched.step()
        steps = total
    else:
        os.environ["VFM_TRANSFER_CACHE"] = tempfile.mkdtemp()
        r = pretrain_mae(cfg, ds, epochs=epochs, lr=p.pretrain_lr, batch_size=bs, seed=0, device="cpu", cache=False)
        steps = epochs * (n // bs)
    res["seconds"] = time.perf_counter() - t0
    res["samples_per_s"] = steps * bs / res["seconds"]
else:
    from vfm_transfer.finetune import finetune
    train = make_task_dataset(task, "train", p, seed=0)
    val = make_task_dataset(task, "val", p, seed=0)
    set_seed(0)
    enc = build_encoder(**encoder_config(p))
    kw = {} if task == "classification" else {"feature_size": p.head_feature_size}
    head = build_head(task, enc, **kw)
    bs = p.batch_size
    if mode == "bare":
        from vfm_transfer.finetune import TaskModel, task_loss, _collate
        model = TaskModel(enc, head)
        loader = torch.utils.data.DataLoader(train, batch_size=bs, shuffle=True, collate_fn=_collate)
        opt = torch.optim.AdamW(model.parameters(), lr=p.lr)
        total = epochs * len(loader)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        loss_fn = task_loss(task)
        t0 = time.perf_counter()
        for _ in range(epochs):
            for x, y in loader:
                loss = loss_fn(model(x).float(), y)
                opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step(); sched.step()
        res["train_seconds"] = time.perf_counter() - t0
    else:
        d = tempfile.mkdtemp()
        t0 = time.perf_counter()
        h = finetune(enc, head, task, train, val, epochs=epochs, batch_size=bs, lr=p.lr, ckpt_dir=d, device="cpu",
                     verbose=False)
        res["wall_seconds"] = time.perf_counter() - t0
        # training time with the checkpoint: each row's seconds less its validation (seconds - train_seconds is
        # validation + checkpoint in the engine; the old loop checkpointed after `seconds` was taken)
        res["train_seconds"] = sum(r["train_seconds"] for r in h.rows)
        res["final"] = {k: v for k, v in h.rows[-1].items() if k not in ("seconds", "train_seconds", "lr", "epoch")}
    res["samples_per_s"] = epochs * len(train) / res["train_seconds"]
print(json.dumps(res))
'''

KILL = r'''
import sys, torch
torch.set_num_threads(1)
from vfm_transfer.core import load_profile, set_seed
from vfm_transfer.data import make_task_dataset
from vfm_transfer.encoders import build_encoder, encoder_config
from vfm_transfer.heads import build_head
from vfm_transfer.finetune import finetune
p = load_profile("tiny")
train, val = (make_task_dataset("classification", s, p, seed=0) for s in ("train", "val"))
set_seed(0)
enc = build_encoder(**encoder_config(p))
finetune(enc, build_head("classification", enc), "classification", train, val, epochs=3, batch_size=p.batch_size,
         ckpt_dir=sys.argv[1], device="cpu", verbose=False)
'''


def _run(code, args, cwd=ROOT, pythonpath=ROOT, timeout=1800):
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", "VFM_TRANSFER_QUIET": "1"}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    r = subprocess.run([sys.executable, f.name, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode: raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _loc(tree: Path) -> int:
    return sum(sum(1 for line in p.read_text().splitlines() if line.strip())
               for p in sorted((tree / "vfm_transfer").glob("*.py")) if p.name != "_modidx.py")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="d099d7b", help="the commit whose own loops are compared")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--skip-denormal", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    a = ap.parse_args(argv)
    out = {"threads": 1, "epochs": a.epochs, "ref": a.ref}
    with tempfile.TemporaryDirectory() as wt:
        old = Path(wt) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), a.ref], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            out["lines_of_library_code"] = {"ref": _loc(old), "now": _loc(ROOT)}
            for kind in ("classification", "mae"):
                r = {m: _run(WORKLOAD, [kind, m if m != "old" else "engine", a.epochs, "on"],
                             pythonpath=old if m == "old" else ROOT) for m in ("bare", "engine", "old")}
                r["engine_vs_bare"] = r["engine"]["samples_per_s"] / r["bare"]["samples_per_s"]
                r["old_vs_bare"] = r["old"]["samples_per_s"] / r["bare"]["samples_per_s"]
                out[kind] = r
                print(kind, json.dumps({m: round(r[m]["samples_per_s"], 2) for m in ("bare", "engine", "old")}),
                      f"engine/bare {r['engine_vs_bare']:.3f}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    if not a.skip_denormal:
        out["flush_denormal"] = {}
        for task in ("classification", "segmentation", "super_resolution", "distortion_correction", "synthesis"):
            on, off = (_run(WORKLOAD, [task, "engine", a.epochs, flag]) for flag in ("on", "off"))
            out["flush_denormal"][task] = {"seconds_on": on["wall_seconds"], "seconds_off": off["wall_seconds"],
                                           "speedup": off["wall_seconds"] / on["wall_seconds"],
                                           "final_on": on["final"], "final_off": off["final"]}
            print("flush_denormal", task, json.dumps(out["flush_denormal"][task]), flush=True)
    # kill in epoch 2 of 3, then resume
    with tempfile.TemporaryDirectory() as d:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(KILL)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "VFM_TRANSFER_QUIET": "1"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, f.name, d], env=env)
        while not (Path(d) / "last.pt").exists(): time.sleep(0.05)
        t_ckpt = time.perf_counter() - t0
        time.sleep(0.5 * t_ckpt / 2)  # about a third into epoch 2
        proc.send_signal(signal.SIGKILL); proc.wait()
        t_kill = time.perf_counter() - t0
        t1 = time.perf_counter()
        subprocess.run([sys.executable, f.name, d], env=env, check=True)
        out["kill_resume"] = {"seconds_to_first_checkpoint": t_ckpt, "killed_after_seconds": t_kill,
                              "seconds_lost": t_kill - t_ckpt, "resume_seconds": time.perf_counter() - t1}
        print("kill_resume", json.dumps(out["kill_resume"]), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
