"""ProFound-Conv (3-D ConvNeXt-V2 / FCMAE) against outputs of ProFound's own code, a hand-written dense reference,
format detection for every layout, the short diagnosing errors, and DINOv2 teachers configured from their files."""
import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vfm_transfer.core import CheckpointError
from vfm_transfer.encoders import (build_encoder, build_teacher_2d, convnext_config_from_state_dict, detect_format,
                                   dinov2_config_from_state_dict, filter_profound_conv, load_pretrained, safe_load,
                                   teacher_conflict)

DATA = Path(__file__).parent / "data" / "profound_conv_micro.pt"  # made by tests/data/make_profound_conv_reference.py


@pytest.fixture(scope="module")
def profound():
    return safe_load(DATA)


def _lines(e) -> list[str]:
    return str(e.value).splitlines()


# --- the FCMAE checkpoint against ProFound's own remap + dense ConvNeXtV2

def test_fcmae_checkpoint_matches_profounds_own_loader(tmp_path, profound):
    ckpt = profound["checkpoint"]
    assert any(k.endswith(".kernel") for k in ckpt["model"]) and "mask_token" in ckpt["model"]
    torch.save(ckpt, tmp_path / "checkpoint-799.pth")
    cfg = convnext_config_from_state_dict(ckpt)
    assert (cfg["depths"], cfg["dims"], cfg["strides"]) == (tuple(profound["depths"]), tuple(profound["dims"]), (4, 2, 2, 1))
    enc = build_encoder(**cfg, img_size=profound["img_size"]).eval()
    rep = load_pretrained(enc, tmp_path / "checkpoint-799.pth")
    assert rep["format"] == "profound_conv" and rep["missing"] == rep["unexpected"] == rep["mismatched"] == []
    assert rep["expected_missing"] == ["norm.weight", "norm.bias"]  # FCMAE has no final norm: left at init, as ProFound
    with torch.no_grad():
        pooled, stages = enc(profound["x"])
    torch.testing.assert_close(pooled, profound["pooled"], atol=1e-5, rtol=1e-4)
    for got, want in zip(stages, profound["stages"], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_filter_is_pure_and_drops_the_decoder(profound):
    sd = profound["checkpoint"]["model"]
    before = {k: v.clone() for k, v in sd.items()}
    out = filter_profound_conv({"model": sd})
    assert not any(k.startswith(("decoder", "proj", "pred", "mask_token", "encoder.")) or ".ln." in k or ".linear." in k for k in out)
    assert out["stages.0.0.grn.gamma"].shape == (1, 1, 1, 1, 16) and out["downsample_layers.3.1.weight"].shape == (32, 16, 1, 1, 1)
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)


# --- a dense ConvNeXt-V2 (fine-tuned ProFound model: ConvNeXt under `encoder.`, a head beside it)

def _ref_forward(sd, x, depths, strides=(4, 2, 2, 1), eps=1e-6):
    "ProFound's dense ConvNeXtV2.forward_features written out with torch.nn.functional."
    def ln_cf(t, pre):
        u = t.mean(1, keepdim=True); s = (t - u).pow(2).mean(1, keepdim=True)
        t = (t - u) / torch.sqrt(s + eps)
        return sd[f"{pre}.weight"][:, None, None, None] * t + sd[f"{pre}.bias"][:, None, None, None]
    stages = []
    for i, n in enumerate(depths):
        if i == 0:
            x = ln_cf(F.conv3d(x, sd["downsample_layers.0.0.weight"], sd["downsample_layers.0.0.bias"], stride=strides[0]),
                      "downsample_layers.0.1")
        else:
            x = F.conv3d(ln_cf(x, f"downsample_layers.{i}.0"), sd[f"downsample_layers.{i}.1.weight"],
                         sd[f"downsample_layers.{i}.1.bias"], stride=strides[i])
        for j in range(n):
            p = lambda k: sd[f"stages.{i}.{j}.{k}"]
            y = F.conv3d(x, p("dwconv.weight"), p("dwconv.bias"), padding=3, groups=x.shape[1]).permute(0, 2, 3, 4, 1)
            y = F.layer_norm(y, (y.shape[-1],), p("norm.weight"), p("norm.bias"), eps)
            y = F.gelu(F.linear(y, p("pwconv1.weight"), p("pwconv1.bias")))
            gx = torch.norm(y, p=2, dim=(1, 2, 3), keepdim=True)
            y = p("grn.gamma") * (y * gx / (gx.mean(-1, keepdim=True) + 1e-6)) + p("grn.beta") + y
            x = x + F.linear(y, p("pwconv2.weight"), p("pwconv2.bias")).permute(0, 4, 1, 2, 3)
        stages.append(x)
    return F.layer_norm(x.mean((2, 3, 4)), (x.shape[1],), sd["norm.weight"], sd["norm.bias"], eps), stages


def test_dense_finetuned_checkpoint_matches_reference(tmp_path):
    g = torch.Generator().manual_seed(3)
    src = build_encoder("convnext3d", size="micro", img_size=(16, 32, 32), depths=(1, 2, 1, 1), dims=(8, 16, 24, 32))
    sd = {k: torch.randn(v.shape, generator=g) * 0.2 + (1 if k.endswith("norm.weight") else 0) for k, v in src.state_dict().items()}
    model = {**{f"encoder.{k}": v for k, v in sd.items()}, "head.0.weight": torch.zeros(256, 32), "head.1.running_mean": torch.zeros(256)}
    torch.save({"model": model, "epoch": 9, "args": argparse.Namespace(model="profound_conv")}, tmp_path / "best.pth")
    enc = build_encoder(**convnext_config_from_state_dict(safe_load(tmp_path / "best.pth")), img_size=(16, 32, 32)).eval()
    rep = load_pretrained(enc, tmp_path / "best.pth")
    assert rep["missing"] == rep["unexpected"] == rep["mismatched"] == rep["expected_missing"] == []
    x = torch.randn(2, 3, 16, 32, 32, generator=g)
    ref_pooled, ref_stages = _ref_forward(sd, x, (1, 2, 1, 1))
    with torch.no_grad():
        pooled, stages = enc(x)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-5, rtol=1e-4)
    for got, want in zip(stages, ref_stages, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# --- format detection

def _provicnet_like(backbone, seed=0, registers=True, width=None):
    "A ProViCNet-named state dict (DINOv2 hub `backbone.*`, axis_pos/axis_max, conv head) from a SliceViT's shapes."
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in backbone.vit.state_dict().items():
        shape = [width if s == backbone.embed_dim and width else s for s in v.shape]
        if k == "reg_token":
            if not registers: continue
            k = "register_tokens"
        if k == "pos_embed": shape[1] += 1  # the hub stores a CLS row
        sd[f"backbone.{k}"] = torch.randn(shape, generator=g) * 0.1
    d = width or backbone.embed_dim
    sd["backbone.mask_token"] = torch.zeros(1, d)
    for n in ("axis_pos", "axis_max"):
        sd[f"{n}.weight"], sd[f"{n}.bias"] = torch.randn(d, 1, generator=g), torch.randn(d, generator=g)
    sd["head.segmentation_conv.1.weight"] = torch.zeros(8, d, 3, 3)
    return sd


PV = dict(img_size=(4, 28, 28), patch_size=14, embed_dim=48, depth=2, num_heads=2)


def test_detect_format_every_layout(profound):
    vit = build_encoder("tiny", img_size=16, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2)
    pv = build_encoder("provicnet", **PV)
    dense = build_encoder("convnext3d", size="micro").state_dict()
    profound_vit = {"cls_token": torch.zeros(1, 1, 48), "pos_embed": torch.zeros(1, 9, 48),
                    "patch_embed.proj.weight": torch.zeros(48, 3, 8, 8, 8), "blocks.0.norm1.weight": torch.zeros(48)}
    dinov2 = {"cls_token": torch.zeros(1, 1, 48), "mask_token": torch.zeros(1, 48),
              "patch_embed.proj.weight": torch.zeros(48, 3, 14, 14), "blocks.0.ls1.gamma": torch.zeros(48)}
    assert detect_format(profound["checkpoint"]) == "profound_conv"
    assert detect_format({"model": {f"encoder.{k}": v for k, v in dense.items()}}) == "profound_conv"
    assert detect_format(dense) == "profound_conv"
    assert detect_format({"model": profound_vit}) == "profound_vit"
    assert detect_format(dinov2) == "dinov2"
    assert detect_format(_provicnet_like(pv.backbones["t2"])) == "provicnet"
    assert detect_format({"module." + k: v for k, v in vit.state_dict().items()}) == "native"


# --- short, diagnosing errors that name the file

def test_convnext_file_for_a_vit_says_so(tmp_path, profound):
    torch.save(profound["checkpoint"], tmp_path / "profound_alpha.pth")
    vit = build_encoder("tiny", img_size=16, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(vit, tmp_path / "profound_alpha.pth")
    lines = _lines(e)
    assert str(tmp_path / "profound_alpha.pth") in lines[0] and "format profound_conv" in lines[0]
    assert any("diagnosis: the checkpoint holds a ConvNeXt (depths 1-1-2-1, dims 4-8-16-32), the encoder is a ViT" in l
               and "convnext_config_from_state_dict" in l for l in lines)
    assert len(lines) <= 26 and sum(l.startswith("  missing:") for l in lines) == 10


def test_convnext_of_another_size_says_which(tmp_path, profound):
    torch.save(profound["checkpoint"], tmp_path / "c.pth")
    enc = build_encoder("convnext3d", size="micro", img_size=(16, 16, 32))
    with pytest.raises(CheckpointError, match=r"dims 4-8-16-32 found, 8-16-32-64 expected") as e:
        load_pretrained(enc, tmp_path / "c.pth")
    assert "depths 1-1-2-1 found, 1-1-1-1 expected" in str(e.value) and str(tmp_path / "c.pth") in str(e.value)


def test_bad_sparse_kernel_named(profound):
    sd = dict(profound["checkpoint"]["model"])
    sd["encoder.stages.0.0.dwconv.kernel"] = torch.zeros(50, 4)
    with pytest.raises(CheckpointError, match=r"stages\.0\.0\.dwconv\.weight: kernel volume 50 is not a cube"):
        filter_profound_conv(sd)


def test_provicnet_without_registers_refused_with_reason(tmp_path):
    pv = build_encoder("provicnet", **PV)
    torch.save(_provicnet_like(pv.backbones["t2"], registers=False), tmp_path / "T2_best.pth")
    with pytest.raises(CheckpointError) as e:
        load_pretrained(pv, tmp_path / "T2_best.pth")
    msg = str(e.value)
    assert str(tmp_path / "T2_best.pth") in msg and "no register tokens" in msg and "dinov2_s" in msg
    assert len(msg.splitlines()) == 1


def test_provicnet_wider_backbone_in_a_folder_names_the_file(tmp_path):
    pv = build_encoder("provicnet", **PV)
    paths = {s: tmp_path / f"{s.upper()}_best.pth" for s in ("t2", "dwi", "adc")}
    for i, (s, p) in enumerate(paths.items()):
        torch.save(_provicnet_like(pv.backbones[s], i, width=96 if s == "dwi" else None), p)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(pv, paths)
    lines = _lines(e)
    assert len(lines) <= 20, "\n".join(lines)
    bad = [l for l in lines if str(paths["dwi"]) in l and "mis-shaped" in l]
    assert bad and not any(str(paths["t2"]) in l and "mis-shaped" in l for l in lines)
    assert any("width 96 found, 48 expected" in l for l in lines)
    # a file that is not a checkpoint is named by its path
    paths["adc"].write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="ADC_best.pth"):
        load_pretrained(pv, paths)


# --- DINOv2 teachers from their files

def _hub_layout(vit, seed=0):
    "A timm DINOv2 ViT's weights in facebookresearch/dinov2's published layout; random values (meta: shapes only)."
    g, sd = torch.Generator().manual_seed(seed), {}
    for k, v in vit.state_dict().items():
        v = torch.empty(v.shape, device="meta") if v.is_meta else torch.randn(v.shape, generator=g) * 0.02
        if k == "reg_token": k = "register_tokens"
        if k == "pos_embed" and vit.no_embed_class:
            v = torch.cat([torch.zeros(1, 1, v.shape[2], device=v.device), v], 1)
        sd[k] = v
    sd["mask_token"] = torch.zeros(1, vit.embed_dim, device=sd["cls_token"].device)
    return sd


@pytest.mark.parametrize("name,regs", [("vit_small_patch14_dinov2", 0), ("vit_small_patch14_reg4_dinov2", 4),
                                       ("vit_base_patch14_reg4_dinov2", 4), ("vit_giant_patch14_dinov2", 0)])
def test_dinov2_published_sizes_configured(name, regs):
    import timm
    with torch.device("meta"):
        full = timm.create_model(name, pretrained=False)
    sd = _hub_layout(full)
    if "giant" in name:  # the hub's ViT-g names its SwiGLU w12 / w3
        sd = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in sd.items()}
    cfg = dinov2_config_from_state_dict(sd)
    assert cfg["name"] == name and cfg["registers"] == regs and cfg["layer_scale"] and cfg["patch_size"] == 14
    assert (cfg["width"], cfg["depth"], cfg["num_heads"]) == (full.embed_dim, len(full.blocks), full.blocks[0].attn.num_heads)
    with torch.device("meta"):
        rebuilt = build_teacher_2d(cfg["name"], img_size=518, **cfg["timm_kwargs"])
    assert teacher_conflict(rebuilt, cfg) is None
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize("registers", [False, True])
def test_dinov2_micro_file_builds_and_loads_its_teacher(tmp_path, registers):
    src = build_teacher_2d("vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2", img_size=28,
                           embed_dim=64, depth=2, num_heads=1)
    torch.save(_hub_layout(src.vit), tmp_path / "dinov2.pth")
    cfg = dinov2_config_from_state_dict(safe_load(tmp_path / "dinov2.pth"))
    assert (cfg["width"], cfg["depth"], cfg["registers"]) == (64, 2, 4 if registers else 0)
    teacher = build_teacher_2d(cfg["name"], img_size=28, **cfg["timm_kwargs"]).eval()
    rep = load_pretrained(teacher, tmp_path / "dinov2.pth", format="dinov2")
    assert rep["missing"] == rep["unexpected"] == rep["mismatched"] == []
    preset = build_teacher_2d("vit_tiny", img_size=28)
    line = teacher_conflict(preset, cfg, repr(str(tmp_path / "dinov2.pth")))
    assert line.count("\n") == 0 and "'vit_tiny'" in line and "dinov2.pth" in line and "width 192 vs 64" in line
