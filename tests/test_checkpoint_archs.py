"""Checkpoints set the architectures: a ProFound-Conv file (3-D ConvNeXt-V2 in FCMAE's layout) makes the MAE model and
scratch a ConvNeXt through the transfer-limits and alignment notebooks; DINOv2 files in facebookresearch/dinov2's
published layout (ViT-S/14, with and without registers) build their own teacher in `run_kd` with no `teacher` set."""
import json
import warnings

import pandas as pd
import pytest
import torch

from conftest import ROOT
from test_convnext import _hub_layout
from test_paper_path import image_folders  # noqa: F401  (the image-folder fixture)
from vfm_transfer.core import load_profile
from vfm_transfer.distill import pretrained_teacher, run_kd
from vfm_transfer.encoders import build_teacher_2d, safe_load
from vfm_transfer.pretrain import init_encoder_config, pretrained_encoder
from vfm_transfer.reproduce import reproduce


@pytest.fixture(scope="module")
def fcmae_file(tmp_path_factory):
    "ProFound-Conv's FCMAE pretraining checkpoint at micro size (tests/data, made from ProFound's own code)."
    ck = safe_load(ROOT / "tests" / "data" / "profound_conv_micro.pt")["checkpoint"]
    path = tmp_path_factory.mktemp("profound_conv") / "checkpoint-best.pth"
    torch.save(ck, path)
    return path


def test_profound_conv_sets_mae_and_scratch_architectures(fcmae_file):
    p = load_profile("micro", profound_ckpt=str(fcmae_file))
    for init in ("mae", "random"):
        cfg = init_encoder_config(init, p)
        assert cfg["arch"] == "convnext3d" and tuple(cfg["depths"]) == (1, 1, 2, 1), cfg
    assert init_encoder_config("contrastive", p)["arch"] == "vit3d"  # the contrastive model is untouched
    enc = pretrained_encoder("mae", p)
    assert type(enc).__name__ == "ConvNeXtEncoder"


def test_transfer_limits_and_alignment_on_profound_conv(fcmae_file, tmp_path, monkeypatch):
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(tmp_path / "cache"))
    recs = reproduce("micro", tmp_path / "out", only=["transfer_limits", "alignment"],
                     params={"profound_ckpt": str(fcmae_file)}, notebooks=ROOT / "nbs" / "experiments",
                     echo=lambda *a: None)
    for r in recs:
        assert r["status"] == "ok", f"{r['notebook']} failed: {r.get('error')}; executed notebook: {r['executed']}"
    t = pd.read_csv(tmp_path / "out" / "transfer_limits" / "test_metrics.csv")
    assert {"mae", "scratch", "contrastive"} <= set(t.model) and t.task.nunique() == 5
    dist = pd.read_csv(tmp_path / "out" / "alignment" / "distances.csv")
    assert (dist.model == "mae").sum() >= 5  # features of the ConvNeXt: its pooled vector, for every task


@pytest.mark.parametrize("name,registers", [("vit_small_patch14_dinov2", 0), ("vit_small_patch14_reg4_dinov2", 4)])
def test_dinov2_file_sets_the_teacher(image_folders, tmp_path, monkeypatch, name, registers):  # noqa: F811
    monkeypatch.setenv("VFM_TRANSFER_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    vit = build_teacher_2d(name, img_size=28)  # the published ViT-S/14 (width 384, depth 12, 6 heads)
    path = tmp_path / "dinov2_vits14.pth"
    torch.save(_hub_layout(vit.vit), path)
    p = load_profile("micro", img2d_size=28, **{**image_folders, "dinov2_ckpt": str(path)})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        enc, info = pretrained_teacher(p)
    assert info["report"]["missing"] == info["report"]["unexpected"] == info["report"]["mismatched"] == []
    assert enc.encoder.embed_dim == 384 and len(enc.encoder.vit.blocks) == 12
    assert getattr(enc.encoder.vit, "num_reg_tokens", 0) == registers
    lines = [str(x.message) for x in w if "differs from" in str(x.message)]
    assert len(lines) == 1 and "'vit_tiny'" in lines[0] and "dinov2_vits14.pth" in lines[0] and "\n" not in lines[0]
    r = run_kd("task", "generic", labels_per_class=p.labels_per_class[0], profile=p, device="cpu")
    assert 0 <= r["metric"] <= 1 and r["flops_per_image"]["teacher"]["forward"] > 0
    json.dumps(r)  # plain numbers
