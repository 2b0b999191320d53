"""The `small` (one-GPU) profile's settings, exercised on CPU at reduced counts: 64³ volumes with the small ViT,
bf16 autocast (amp=True), DataLoader workers, the 64-px 2-D setting with the timm students and the ViT-S teacher.

Only the counts shrink (cases, epochs, pool sizes); every size and architecture setting is the profile's own, so a
setting that does not fit together (patch vs volume, head vs grid, student vs image size) fails here without a GPU.
"""
import math

import pytest

from vfm_transfer.core import load_profile
from vfm_transfer.distill import run_kd
from vfm_transfer.finetune import run_finetune


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_small_profile_finetunes_on_cpu(cache):
    p = load_profile("small", n_train=2, n_val=2, n_test=2, n_unlabeled=4, pretrain_epochs=1, finetune_epochs=1,
                     batch_size=2)
    assert p.amp and p.num_workers > 0 and p.vol_size == (64, 64, 64)
    h = run_finetune("segmentation", "mae", p, run_dir=cache / "seg", verbose=False)
    assert math.isfinite(h.meta["test"]["dice"]) and [r["epoch"] for r in h.rows] == [0, 1]  # the untrained row, then 1


def test_small_profile_distils_on_cpu(cache):
    p = load_profile("small", transfer_size=64, gallery_size=128, n_test_2d=40, teacher_pretrain_epochs=1, kd_epochs=1,
                     kd_finetune_steps=2, finetune_epochs=1, labels_per_class=(1, 2))
    r = run_kd("task", "retrieved", 2, p.students[0], p, 0, device="cpu", root=cache)
    assert r["student"] == "fastvit_t8" and 0.0 <= r["metric"] <= 1.0 and r["n_transfer"] > 0
