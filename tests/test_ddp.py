"""`finetune` under `torchrun --nproc_per_node=2` (gloo, CPU) matches one process with the same global batch."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import torch

from conftest import ROOT

# 8 training items, global batch 4 (2 per rank), 4 validation items (2 per rank, gathered), no dropout.
SCRIPT = r'''
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
torch.set_num_threads(1)
from vfm_transfer.core import set_seed, load_profile
from vfm_transfer.data import make_task_dataset
from vfm_transfer.encoders import build_encoder, encoder_config
from vfm_transfer.heads import build_head
from vfm_transfer.finetune import finetune, evaluate

out = Path(sys.argv[1])
p = load_profile("micro", n_train=8, n_val=4, n_test=4)
train, val, test = (make_task_dataset("segmentation", s, p, seed=0) for s in ("train", "val", "test"))
set_seed(0)
enc = build_encoder(**encoder_config(p))
head = build_head("segmentation", enc)
h = finetune(enc, head, "segmentation", train, val, epochs=2, batch_size=4, lr=1e-3, ckpt_dir=out, device="cpu",
             verbose=False)
test_metrics = evaluate(enc, head, "segmentation", test, batch_size=2, device="cpu")
rank = dist.get_rank() if dist.is_initialized() else 0
if rank == 0:
    torch.save({**{"enc." + k: v for k, v in enc.state_dict().items()},
                **{"head." + k: v for k, v in head.state_dict().items()}}, out / "final.pt")
    (out / "result.json").write_text(json.dumps(dict(rows=h.rows, test=test_metrics, world=h.meta["world_size"])))
if dist.is_initialized(): dist.destroy_process_group()
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd):
    env = {**os.environ, "VFM_TRANSFER_QUIET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc):
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-5000:]


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    script = tmp_path / "ddp_finetune.py"
    script.write_text(SCRIPT)
    one, two = tmp_path / "one", tmp_path / "two"
    single = _start([sys.executable, str(script), str(one)])  # both at once: the runs are independent
    ddp = _start([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                  "--master_addr=127.0.0.1", str(script), str(two)])
    _wait(single)
    _wait(ddp)

    r1, r2 = (json.loads((d / "result.json").read_text()) for d in (one, two))
    assert (r1["world"], r2["world"]) == (1, 2)
    assert len(r1["rows"]) == len(r2["rows"]) == 2
    # gradients are summed in another order across ranks, so weights agree to float precision; Dice goes through an
    # argmax, where such differences can flip a few voxels (1e-3 of Dice is ~ one voxel of a small gland; 1.3e-3 seen)
    for a, b in zip(r1["rows"], r2["rows"]):
        for k in ("train_loss", "lr"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
        for k in ("dice", "dice_gland", "dice_lesion"):
            np.testing.assert_allclose(b[k], a[k], atol=3e-3, err_msg=k)
    for k in r1["test"]:
        np.testing.assert_allclose(r2["test"][k], r1["test"][k], atol=3e-3, err_msg=k)
    # Weights: float-level gradient differences (another summation order of strongly cancelling conv gradients)
    # are amplified by Adam's per-element normalisation, but one Adam step moves a weight by at most ~lr, so any
    # real divergence (other batches, other data, missing gradient averaging) shows as a large relative difference.
    w1, w2 = (torch.load(d / "final.pt", weights_only=True) for d in (one, two))
    a, b = (torch.cat([w[k].flatten().double() for k in sorted(w1)]) for w in (w1, w2))
    assert ((a - b).norm() / a.norm()).item() < 1e-2
    assert (a - b).abs().max().item() <= 2 * 1e-3 * 4  # 2 x lr x (4 steps)
    # only rank 0 wrote: one checkpoint, no stray per-rank files
    assert sorted(p.name for p in two.iterdir()) == ["final.pt", "last.pt", "result.json"]


# MAE pretraining on the same engine under torchrun: the replicas stay identical (gradients are averaged), the
# epoch's loss is the mean over both ranks, every rank sees its half of each global batch, and only rank 0 writes.
PRETRAIN_SCRIPT = r'''
import json, os, sys
from pathlib import Path
import torch, torch.distributed as dist
torch.set_num_threads(1)
out = Path(sys.argv[1])
os.environ["VFM_TRANSFER_CACHE"] = str(out / "cache")
from vfm_transfer.encoders import encoder_config
from vfm_transfer.pretrain import pretrain_mae
g = torch.Generator().manual_seed(0)
pool = [{"image": torch.randn(3, 16, 16, 16, generator=g)} for _ in range(8)]
cfg = {**encoder_config("micro"), **dict(hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2)}
r = pretrain_mae(cfg, pool, epochs=3, lr=1e-3, batch_size=4, seed=0, device="cpu", verbose=False)
rank = dist.get_rank() if dist.is_initialized() else 0
torch.save(r.encoder.state_dict(), out / f"rank{rank}.pt")
(out / f"rank{rank}.json").write_text(json.dumps(dict(losses=r.losses, world=dist.get_world_size() if dist.is_initialized() else 1)))
if dist.is_initialized(): dist.destroy_process_group()
'''


def test_ddp_pretraining_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_pretrain.py"
    script.write_text(PRETRAIN_SCRIPT)
    two = tmp_path / "two"
    two.mkdir()
    _wait(_start([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                  "--master_addr=127.0.0.1", str(script), str(two)]))
    r0, r1 = (json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 3  # all-reduced: one loss per epoch for both
    assert r0["losses"][-1] < r0["losses"][0]
    w0, w1 = (torch.load(two / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # averaged gradients keep the replicas identical
    written = sorted(p.name for p in (two / "cache").rglob("*.pt"))
    assert written == ["encoder.pt", "last.pt"], written  # one cache entry, written by rank 0
