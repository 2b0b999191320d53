"""Every recipe on the training engine survives a real SIGKILL mid-epoch: called again, it resumes (not restarts) and
ends with the weights of an uninterrupted run. MAE and contrastive pretraining, teacher fine-tuning (probe then
fine-tune), task KD, feature KD and student fine-tuning, each in its own subprocess."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

# The stage to run is argv[2]. With argv[3] == "kill" a global forward hook SIGKILLs the process three module calls
# after the first checkpoint (any last.pt under the output folder) appears: always inside epoch 2 of 3, mid-step.
SCRIPT = r'''
import glob, json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
out, stage, kill = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "kill"
os.environ["VFM_TRANSFER_CACHE"] = str(out / "cache")
from vfm_transfer.core import set_seed
from vfm_transfer.encoders import encoder_config
from vfm_transfer import pretrain as P, distill as D

calls = [0]
def hook(module, args, output):
    if kill and (calls[0] or glob.glob(str(out / "**" / "last.pt"), recursive=True)):
        calls[0] += 1
        if calls[0] >= 3: os.kill(os.getpid(), signal.SIGKILL)
if kill: torch.nn.modules.module.register_module_forward_hook(hook)

g = torch.Generator().manual_seed(0)
def images(n, size=16):
    return [{"image": torch.rand(3, size, size, generator=g), "label": torch.tensor(i % 3)} for i in range(n)]
labelled, transfer = images(12), images(16)
kw = dict(epochs=3, lr=1e-3, seed=0, device="cpu")
if stage in ("mae", "contrastive"):
    cfg = {**encoder_config("micro"), **dict(hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2)}
    pool = [{"image": torch.randn(3, 16, 16, 16, generator=g)} for _ in range(8)]
    fn = P.pretrain_mae if stage == "mae" else P.pretrain_contrastive
    r = fn(cfg, pool, batch_size=2, verbose=False, **kw)
    model, resumed = r.encoder, r.resumed_from
else:
    set_seed(0)
    teacher = D.build_teacher("vit_tiny", num_classes=3, img_size=16)
    student = D.build_student("student_tiny", num_classes=3, img_size=16)
    ck = out / "run"
    if stage == "teacher":
        h = D.finetune_teacher(teacher, labelled, probe_epochs=2, batch_size=4, ckpt_dir=ck, **kw)
        model = teacher
    elif stage == "task_kd":
        h = D.distill_task(teacher.eval(), student, transfer, batch_size=4, ckpt_dir=ck, **kw)
        model = student
    elif stage == "feature_kd":
        h = D.distill_features(teacher.eval(), student, transfer, batch_size=4, ckpt_dir=ck, **kw)
        model = student
    elif stage == "student":
        h = D.finetune_student(student, labelled, batch_size=4, ckpt_dir=ck, **kw)
        model = student
    resumed = h["resumed_from"]
torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "final.pt")
(out / "result.json").write_text(json.dumps({"resumed_from": resumed}))
'''

STAGES = ["mae", "contrastive", "teacher", "task_kd", "feature_kd", "student"]


def _start(script, out, stage, mode):
    env = {**os.environ, "VFM_TRANSFER_QUIET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(script), str(out), stage, mode], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc, what):
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{out[-4000:]}"


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, stage):
    script = tmp_path / "recipe.py"
    script.write_text(SCRIPT)
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref = _start(script, ref_dir, stage, "plain")
    killed = _start(script, run_dir, stage, "kill")
    out = killed.communicate(timeout=600)[0]
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed (exit {killed.returncode})\n{out[-4000:]}"
    assert not (run_dir / "final.pt").exists()
    ckpts = list(run_dir.rglob("last.pt"))
    assert ckpts, "no checkpoint before the kill"
    assert all(torch.load(c, weights_only=True)["epoch"] < 3 for c in ckpts)

    _finish(_start(script, run_dir, stage, "plain"), "resume")  # the same call again
    _finish(ref, "reference")
    assert json.loads((run_dir / "result.json").read_text())["resumed_from"] > 0  # resumed, not restarted
    assert json.loads((ref_dir / "result.json").read_text())["resumed_from"] == 0
    w_ref = torch.load(ref_dir / "final.pt", weights_only=True)
    w_res = torch.load(run_dir / "final.pt", weights_only=True)
    assert w_ref.keys() == w_res.keys()
    different = [k for k in w_ref if not torch.equal(w_ref[k], w_res[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
