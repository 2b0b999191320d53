"""A fine-tune killed with SIGKILL mid-epoch and resumed ends exactly where an uninterrupted run ends (CPU, same seed)."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from conftest import ROOT
from vfm_transfer.train import load_checkpoint

# The micro run: segmentation on the micro profile with a real head. The training items get noise drawn from
# torch's, numpy's and python's global generators, so the resumed run only matches if every RNG state is restored.
SCRIPT = r'''
import json, random, sys, time
from pathlib import Path
import numpy as np, torch
from torch.utils.data import Dataset
torch.set_num_threads(1)
from vfm_transfer.core import set_seed, load_profile
from vfm_transfer.data import make_task_dataset
from vfm_transfer.encoders import build_encoder, encoder_config
from vfm_transfer.heads import build_head
from vfm_transfer.finetune import finetune

class Noisy(Dataset):
    def __init__(self, ds, sleep): self.ds, self.sleep = ds, sleep
    def __len__(self): return len(self.ds)
    def __getitem__(self, i):
        time.sleep(self.sleep)  # only slows the run down so that the kill lands mid-epoch; no effect on numbers
        it = dict(self.ds[i])
        it["input"] = it["input"] + 0.05 * torch.randn(it["input"].shape) + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        return it

out, sleep = Path(sys.argv[1]), float(sys.argv[2])
p = load_profile("micro", n_train=8)
train = Noisy(make_task_dataset("segmentation", "train", p, seed=0), sleep)
val = make_task_dataset("segmentation", "val", p, seed=0)
set_seed(0)
enc = build_encoder(**encoder_config(p))
head = build_head("segmentation", enc)
h = finetune(enc, head, "segmentation", train, val, epochs=3, batch_size=2, lr=1e-3, ckpt_dir=out, device="cpu",
             verbose=False)
torch.save({k: v.clone() for k, v in {**{"enc." + k: v for k, v in enc.state_dict().items()},
                                      **{"head." + k: v for k, v in head.state_dict().items()}}.items()}, out / "final.pt")
(out / "history.json").write_text(json.dumps(h.rows))
'''

EPOCHS = 3


def _run(script, out, sleep, wait=True):
    env = {**os.environ, "VFM_TRANSFER_QUIET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(script), str(out), str(sleep)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in rows]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    script = tmp_path / "micro_finetune.py"
    script.write_text(SCRIPT)
    ref, killed = tmp_path / "reference", tmp_path / "killed"

    # 1. the run to be killed: slow items, SIGKILL as soon as the first checkpoint exists (mid epoch 2);
    #    meanwhile, an uninterrupted reference run in another folder
    reference = _run(script, ref, sleep=0, wait=False)
    proc = _run(script, killed, sleep=0.15, wait=False)
    deadline = time.time() + 240
    while not (killed / "last.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    ck = load_checkpoint(killed / "last.pt")
    assert 1 <= ck["epoch"] < EPOCHS, ck["epoch"]
    assert not (killed / "final.pt").exists()

    # 2. resume in the same folder (fast now)
    _run(script, killed, sleep=0)
    out = reference.communicate(timeout=300)[0].decode()
    assert reference.returncode == 0, out

    h_ref = json.loads((ref / "history.json").read_text())
    h_res = json.loads((killed / "history.json").read_text())
    assert len(h_ref) == len(h_res) == EPOCHS
    assert _strip(h_res) == _strip(h_ref)  # exactly equal: loss, every metric, lr
    w_ref = torch.load(ref / "final.pt", weights_only=True)
    w_res = torch.load(killed / "final.pt", weights_only=True)
    assert w_ref.keys() == w_res.keys()
    assert all(torch.equal(w_ref[k], w_res[k]) for k in w_ref)
