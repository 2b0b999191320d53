"""Encoders: every checkpoint format against a reference forward in the source's own naming, unsafe files,
load reports, feature extraction, and one parametrised check over every registered encoder."""
import argparse
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vfm_transfer.core import CheckpointError, ConfigError, DataError
from vfm_transfer.encoders import (ViTEncoder, build_encoder, build_teacher_2d, detect_format, extract_features, filter_mae,
                                   filter_profound, list_encoders, load_pretrained, profound_encoder_config, safe_load,
                                   slice_positions, slice_stacks)

torch.manual_seed(0)


def _rand(shape, g, scale=0.1):
    return torch.randn(shape, generator=g) * scale


# --- hand-written reference forwards in the sources' own naming (timm Attention: qkv -> (B, N, 3, heads, hd))

def _ref_block(x, p, pre, heads, eps, layer_scale=False):
    B, N, d = x.shape
    g = lambda n: p[f"{pre}{n}"]
    h = F.layer_norm(x, (d,), g("norm1.weight"), g("norm1.bias"), eps)
    q, k, v = F.linear(h, g("attn.qkv.weight"), g("attn.qkv.bias")).reshape(B, N, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1) @ v
    a = F.linear(a.transpose(1, 2).reshape(B, N, d), g("attn.proj.weight"), g("attn.proj.bias"))
    x = x + (a * g("ls1.gamma") if layer_scale else a)
    h = F.layer_norm(x, (d,), g("norm2.weight"), g("norm2.bias"), eps)
    h = F.linear(F.gelu(F.linear(h, g("mlp.fc1.weight"), g("mlp.fc1.bias"))), g("mlp.fc2.weight"), g("mlp.fc2.bias"))
    return x + (h * g("ls2.gamma") if layer_scale else h)


def _vit_block_params(g, pre, d, mlp, layer_scale=False):
    p = {}
    for n in ("norm1", "norm2"):
        p[f"{pre}{n}.weight"], p[f"{pre}{n}.bias"] = 1 + _rand(d, g), _rand(d, g)
    p[f"{pre}attn.qkv.weight"], p[f"{pre}attn.qkv.bias"] = _rand((3 * d, d), g, 0.2), _rand(3 * d, g)
    p[f"{pre}attn.proj.weight"], p[f"{pre}attn.proj.bias"] = _rand((d, d), g, 0.2), _rand(d, g)
    p[f"{pre}mlp.fc1.weight"], p[f"{pre}mlp.fc1.bias"] = _rand((mlp, d), g, 0.2), _rand(mlp, g)
    p[f"{pre}mlp.fc2.weight"], p[f"{pre}mlp.fc2.bias"] = _rand((d, mlp), g, 0.2), _rand(d, g)
    if layer_scale:
        p[f"{pre}ls1.gamma"], p[f"{pre}ls2.gamma"] = 1 + _rand(d, g), 1 + _rand(d, g)
    return p


# --- ProFound: 3-D MAE ViT in timm naming, {"model": ..., "args": Namespace}, decoder keys present

IMG, PATCH, D, HEADS, DEPTH = (8, 16, 16), (4, 8, 8), 48, 2, 2
N = 2 * 2 * 2


def _profound_ckpt(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {"cls_token": _rand((1, 1, D), g), "pos_embed": _rand((1, N + 1, D), g),
          "patch_embed.proj.weight": _rand((D, 3, *PATCH), g), "patch_embed.proj.bias": _rand(D, g),
          "norm.weight": 1 + _rand(D, g), "norm.bias": _rand(D, g),
          "mask_token": _rand((1, 1, 24), g), "decoder_embed.weight": _rand((24, D), g),
          "decoder_pos_embed": _rand((1, N + 1, 24), g), "decoder_pred.weight": _rand((3 * 256, 24), g),
          "decoder_blocks.0.norm1.weight": _rand(24, g)}
    for i in range(DEPTH):
        sd.update(_vit_block_params(g, f"blocks.{i}.", D, 2 * D))
    return {"model": sd, "args": argparse.Namespace(model="mae_vit_base", mask_ratio=0.75), "epoch": 3}


def _profound_ref(sd, x):
    t = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    t = t + sd["pos_embed"][:, 1:]
    cls = (sd["cls_token"] + sd["pos_embed"][:, :1]).expand(x.shape[0], -1, -1)
    t = torch.cat([cls, t], 1)
    for i in range(DEPTH):
        t = _ref_block(t, sd, f"blocks.{i}.", HEADS, 1e-6)
    t = F.layer_norm(t, (D,), sd["norm.weight"], sd["norm.bias"], 1e-6)
    return t[:, 1:], t[:, 0]


@pytest.mark.parametrize("pos_embed_type", ["learnable", "sincos"])
def test_profound_matches_reference(tmp_path, pos_embed_type):
    ckpt = _profound_ckpt()
    torch.save(ckpt, tmp_path / "profound.pth")
    enc = build_encoder(**profound_encoder_config("tiny", img_size=IMG, patch_size=PATCH, hidden_size=D, mlp_dim=2 * D,
                                                  num_layers=DEPTH, num_heads=HEADS, pos_embed_type=pos_embed_type))
    rep = load_pretrained(enc, tmp_path / "profound.pth")  # auto-detected
    assert rep["format"] == "profound_vit" and rep["missing"] == rep["unexpected"] == rep["mismatched"] == []
    x = torch.randn(2, 3, *IMG)
    tokens, hidden = enc.eval()(x)
    ref_tokens, ref_cls = _profound_ref(ckpt["model"], x)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc.forward_head(tokens, "cls"), ref_cls, atol=1e-5, rtol=1e-4)
    assert len(hidden) == DEPTH


def test_profound_split_q_kv_variant_matches_reference():
    "ProFound's CrossMAE-style ViT stores attn.q (d, d) and attn.kv (2d, d) instead of attn.qkv."
    ckpt = _profound_ckpt(3)
    split = {}
    for k, v in ckpt["model"].items():
        if k.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            split[k.replace(".qkv.", ".q.")], split[k.replace(".qkv.", ".kv.")] = v[:D], v[D:]
        else:
            split[k] = v
    enc = build_encoder(**profound_encoder_config("tiny", img_size=IMG, patch_size=PATCH, hidden_size=D, mlp_dim=2 * D,
                                                  num_layers=DEPTH, num_heads=HEADS))
    rep = load_pretrained(enc, {"model": split}, format="profound_vit")
    assert rep["missing"] == rep["unexpected"] == rep["mismatched"] == []
    x = torch.randn(2, 3, *IMG)
    torch.testing.assert_close(enc.eval()(x)[0], _profound_ref(ckpt["model"], x)[0], atol=1e-5, rtol=1e-4)


def test_profound_wrong_size_lists_every_conflict():
    enc = ViTEncoder(3, 3, img_size=IMG, patch_size=PATCH, hidden_size=D, mlp_dim=2 * D, num_layers=1, num_heads=HEADS)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_pretrained(enc, _profound_ckpt(), format="profound_vit")
    msg = str(e.value)
    # counts, the first 10 keys of each kind, and what the file holds against what the encoder is
    assert "0 missing, 12 unexpected, 0 mis-shaped keys" in msg and "unexpected: blocks.1.norm1.weight" in msg
    assert "... and 2 more unexpected" in msg and msg.count("unexpected:") == 10
    assert "diagnosis: the checkpoint holds a ViT (width 48, depth 2, patch 4x8x8): depth 2 found, 1 expected" in msg
    for k, v in enc.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, before[k]), k


def test_profound_filter_is_pure():
    ckpt = _profound_ckpt()
    keys = set(ckpt["model"])
    out = filter_profound(ckpt)
    assert set(ckpt["model"]) == keys and "pos_embed" in ckpt["model"]  # input untouched
    assert not any(k.startswith(("decoder_", "mask_token")) for k in out)
    assert out["patch_embedding.position_embeddings"].shape == (1, N, D)


# --- MONAI MaskedAutoEncoderViT (what pretrain_mae trains)

def test_mae_matches_reference():
    from monai.networks.nets import MaskedAutoEncoderViT
    torch.manual_seed(1)
    mae = MaskedAutoEncoderViT(3, img_size=16, patch_size=8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2,
                               decoder_hidden_size=24, decoder_mlp_dim=48, decoder_num_layers=1, decoder_num_heads=2).eval()
    for p in mae.parameters():  # move off the init so norms and biases matter
        p.data += 0.05 * torch.randn_like(p)
    enc = build_encoder("tiny", img_size=16, patch_size=8, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2).eval()
    rep = load_pretrained(enc, mae.state_dict())
    assert rep["format"] == "mae" and rep["missing"] == rep["unexpected"] == rep["mismatched"] == []
    x = torch.randn(2, 3, 16, 16, 16)
    with torch.no_grad():
        t = mae.patch_embedding(x)
        t = mae.blocks(torch.cat([mae.cls_token.expand(2, -1, -1), t], 1))
        tokens, _ = enc(x)
    torch.testing.assert_close(tokens, t[:, 1:], atol=1e-5, rtol=1e-4)
    assert "norm.weight" in filter_mae(mae.state_dict()) and not any(k.startswith("decoder") for k in filter_mae(mae.state_dict()))


# --- DINOv2 / timm ViT teachers

def test_dinov2_hub_naming_matches_reference():
    d, heads, depth, p, img = 48, 2, 2, 14, 28
    g = torch.Generator().manual_seed(2)
    n = (img // p) ** 2
    sd = {"cls_token": _rand((1, 1, d), g), "pos_embed": _rand((1, n + 1, d), g), "register_tokens": _rand((1, 4, d), g),
          "mask_token": torch.zeros(1, d), "patch_embed.proj.weight": _rand((d, 3, p, p), g), "patch_embed.proj.bias": _rand(d, g),
          "norm.weight": 1 + _rand(d, g), "norm.bias": _rand(d, g)}
    for i in range(depth):
        sd.update(_vit_block_params(g, f"blocks.{i}.", d, 4 * d, layer_scale=True))
    assert detect_format(sd) == "dinov2"
    t = build_teacher_2d("vit_small_patch14_reg4_dinov2", img_size=img, embed_dim=d, depth=depth, num_heads=heads)
    rep = load_pretrained(t, sd)
    assert rep["missing"] == rep["unexpected"] == rep["mismatched"] == []
    x = torch.randn(2, 3, img, img)
    # DINOv2's own order: pos added to [cls, patches], then registers inserted after cls
    z = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    z = torch.cat([sd["cls_token"].expand(2, -1, -1), z], 1) + sd["pos_embed"]
    z = torch.cat([z[:, :1], sd["register_tokens"].expand(2, -1, -1), z[:, 1:]], 1)
    for i in range(depth):
        z = _ref_block(z, sd, f"blocks.{i}.", heads, 1e-6, layer_scale=True)
    z = F.layer_norm(z, (d,), sd["norm.weight"], sd["norm.bias"], 1e-6)
    tokens, _ = t.eval()(x)
    torch.testing.assert_close(tokens, z[:, 5:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t.forward_head(tokens, "cls"), z[:, 0], atol=1e-5, rtol=1e-4)


def test_timm_naming_roundtrip_and_resampling():
    src = build_teacher_2d("vit_tiny", num_classes=3, img_size=16, depth=2).eval()
    dst = build_teacher_2d("vit_tiny", num_classes=3, img_size=16, depth=2).eval()
    rep = load_pretrained(dst, src.vit.state_dict(), format="dinov2")
    assert rep["missing"] == rep["unexpected"] == rep["mismatched"] == []
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(dst.logits(x), src.logits(x))
    # a checkpoint for a larger image: timm's filter resamples the position embedding, so it fits
    big = build_teacher_2d("vit_tiny", num_classes=3, img_size=32, depth=2)
    assert load_pretrained(dst, big.vit.state_dict(), format="dinov2")["mismatched"] == []


# --- ProViCNet: per-sequence DINOv2-reg ViT-S on 3-slice stacks with axis_pos / axis_max tokens

PV = dict(img_size=(4, 28, 28), patch_size=14, embed_dim=48, depth=2, num_heads=2)


def _provicnet_ckpt(seed, n_patches=4, d=48, depth=2, p=14):
    g = torch.Generator().manual_seed(seed)
    sd = {"backbone.cls_token": _rand((1, 1, d), g), "backbone.pos_embed": _rand((1, n_patches + 1, d), g),
          "backbone.register_tokens": _rand((1, 4, d), g), "backbone.mask_token": torch.zeros(1, d),
          "backbone.patch_embed.proj.weight": _rand((d, 3, p, p), g), "backbone.patch_embed.proj.bias": _rand(d, g),
          "backbone.norm.weight": 1 + _rand(d, g), "backbone.norm.bias": _rand(d, g),
          "axis_pos.weight": _rand((d, 1), g), "axis_pos.bias": _rand(d, g),
          "axis_max.weight": _rand((d, 1), g), "axis_max.bias": _rand(d, g),
          "head.segmentation_conv.1.weight": _rand((128, d, 3, 3), g)}
    for i in range(depth):
        sd.update(_vit_block_params(g, f"backbone.blocks.{i}.", d, 4 * d, layer_scale=True))
    return sd


def _provicnet_ref(sd, stacks, pos, heads=2, depth=2, p=14):
    "ProViCNet.forward_features_pos, written out (prepare_tokens_with_axispos + blocks + norm)."
    b = lambda k: sd[f"backbone.{k}"]
    n = stacks.shape[0]
    z = F.conv2d(stacks, b("patch_embed.proj.weight"), b("patch_embed.proj.bias"), stride=p).flatten(2).transpose(1, 2)
    z = torch.cat([b("cls_token").expand(n, -1, -1), z], 1) + b("pos_embed")
    ap = F.linear(pos[:, 0:1], sd["axis_pos.weight"], sd["axis_pos.bias"]).unsqueeze(1)
    am = F.linear(pos[:, 1:2], sd["axis_max.weight"], sd["axis_max.bias"]).unsqueeze(1)
    z = torch.cat([z[:, :1], b("register_tokens").expand(n, -1, -1), ap, am, z[:, 1:]], 1)
    for i in range(depth):
        z = _ref_block(z, sd, f"backbone.blocks.{i}.", heads, 1e-6, layer_scale=True)
    z = F.layer_norm(z, (z.shape[-1],), b("norm.weight"), b("norm.bias"), 1e-6)
    return z[:, 7:], z[:, 0]


def _getnchannel(volume):
    "ProViCNet's Prostate_DataGenerator.getNChannel (nChannel=3, no background filter) on a (D, H, W) array, written out."
    n = 3
    if volume.shape[0] < n * 2:
        volume = np.pad(volume, ((n // 2, n // 2), (0, 0), (0, 0)), mode="constant")
    stacks = []
    for idx in range(len(volume)):
        if idx - n // 2 < 0: idx += n // 2
        elif idx + n // 2 >= len(volume): idx -= n // 2
        stacks.append(volume[idx - n // 2: idx + n // 2 + 1])
    return np.stack(stacks), [(j, len(stacks)) for j in range(len(stacks))]  # collate_prostate_position's (j, len)


def _provicnet_stacks(x):
    "(B·D, 3, H, W) stacks and (B·D, 2) positions of the real slices, from getNChannel (its 2 edge copies dropped)."
    stacks, pos = [], []
    for b in range(x.shape[0]):
        s, p = _getnchannel(x[b].numpy())
        keep = slice(1, -1) if x.shape[1] < 6 else slice(None)  # under 6 slices: stacks 0 and D+1 copy 1 and D
        stacks.append(torch.from_numpy(s[keep])); pos += p[keep]
    return torch.cat(stacks), torch.tensor(pos, dtype=torch.float32)


@pytest.mark.parametrize("depth", [4, 7])
def test_slice_stacks_follow_getnchannel(depth):
    x = torch.randn(2, depth, 3, 3)
    stacks, pos = _provicnet_stacks(x)
    torch.testing.assert_close(slice_stacks(x), stacks, rtol=0, atol=0)
    torch.testing.assert_close(slice_positions(depth).repeat(2, 1), pos, rtol=0, atol=0)


def test_provicnet_matches_reference(tmp_path):
    ckpts = {s: _provicnet_ckpt(i) for i, s in enumerate(("t2", "dwi", "adc"))}
    for s, sd in ckpts.items():
        torch.save(sd, tmp_path / f"{s}.pt")
    enc = build_encoder("provicnet", **PV).eval()
    rep = load_pretrained(enc, {s: tmp_path / f"{s}.pt" for s in ckpts})
    assert rep["format"] == "provicnet" and rep["missing"] == rep["unexpected"] == rep["mismatched"] == []
    B, Dz = 2, PV["img_size"][0]
    x = torch.randn(B, 3, *PV["img_size"])
    refs = [_provicnet_ref(ckpts[s], *_provicnet_stacks(x[:, c])) for c, s in enumerate(("t2", "dwi", "adc"))]
    ref_tokens = torch.stack([r[0] for r in refs]).mean(0).reshape(B, Dz * 4, 48)
    ref_cls = torch.stack([r[1] for r in refs]).mean(0).reshape(B, Dz, 48).mean(1)
    tokens, hidden = enc(x)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(enc.forward_head(tokens, "cls"), ref_cls, atol=1e-5, rtol=1e-4)
    assert enc.grid_size == (4, 2, 2) and len(hidden) == 2
    # the slice grid is slice-major: tokens of slice z are rows z*4 .. z*4+3
    torch.testing.assert_close(tokens.reshape(B, Dz, 4, 48)[:, 1], ref_tokens[:, 4:8], atol=1e-5, rtol=1e-4)


def test_provicnet_448_checkpoint_resampled_into_small_slices():
    sd = _provicnet_ckpt(0, n_patches=32 * 32)  # the published 448x448 grid
    enc = build_encoder("provicnet", shared=True, **PV)
    rep = load_pretrained(enc, sd)
    assert rep["missing"] == rep["unexpected"] == rep["mismatched"] == []
    assert enc.backbones["shared"].vit.pos_embed.shape == (1, 4, 48)


def test_provicnet_without_backbone_refused():
    enc = build_encoder("provicnet", **PV)
    with pytest.raises(CheckpointError, match="no 'backbone"):
        load_pretrained(enc, {"axis_pos.weight": torch.zeros(48, 1)}, format="provicnet")


# --- native, unsafe files, reports

def test_native_roundtrip_with_ddp_prefix(tmp_path):
    src = build_encoder("tiny", img_size=16, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "n.pt")
    dst = build_encoder(**src.cfg)
    assert load_pretrained(dst, tmp_path / "n.pt")["format"] == "native"
    x = torch.randn(1, 3, 16, 16, 16)
    torch.testing.assert_close(dst.eval()(x)[0], src.eval()(x)[0])
    # the pretraining module's checkpoint layout: weights beside plain metadata
    torch.save(dict(state_dict=src.state_dict(), losses=[1.0, 0.5], encoder_cfg=src.cfg, objective="mae"), tmp_path / "p.pt")
    dst = build_encoder(**src.cfg)
    rep = load_pretrained(dst, tmp_path / "p.pt")
    assert rep["format"] == "native" and rep["missing"] == rep["unexpected"] == []
    torch.testing.assert_close(dst.eval()(x)[0], src(x)[0])


class _Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "raw_pickle_p2"])
def test_malicious_pickle_refused(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    obj = {"model": {"w": torch.zeros(1)}, "payload": _Evil(marker)}
    if writer == "torch_zip": torch.save(obj, path)
    elif writer == "torch_legacy": torch.save(obj, path, _use_new_zipfile_serialization=False)
    else: path.write_bytes(pickle.dumps(obj, protocol=2))
    enc = build_encoder("tiny", img_size=16)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_pretrained(enc, path)
    assert not marker.exists()


def test_truncated_and_foreign_files_refused(tmp_path):
    enc = build_encoder("tiny", img_size=16, hidden_size=48, mlp_dim=96, num_layers=1, num_heads=2)
    torch.save(enc.state_dict(), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.pt"):
        safe_load(tmp_path / "cut.pt")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(CheckpointError, match="image.png"):
        load_pretrained(enc, tmp_path / "image.png")
    with pytest.raises(CheckpointError, match="missing.pt"):
        safe_load(tmp_path / "missing.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_pretrained(enc, tmp_path / "list.pt")


def test_non_strict_report_contents():
    src = build_encoder("tiny", img_size=16, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2)
    dst = build_encoder("tiny", img_size=16, hidden_size=48, mlp_dim=64, num_layers=3, num_heads=2)
    sd = src.state_dict()
    sd["extra.weight"] = torch.zeros(3)
    rep = load_pretrained(dst, sd, format="native", strict=False)
    assert "extra.weight" in rep["unexpected"]
    assert {k for k in rep["missing"]} == {k for k in dst.state_dict() if k.startswith("blocks.2.") and "norm_cross_attn" not in k}
    assert ("blocks.0.mlp.linear1.weight", (64, 48), (96, 48)) in rep["mismatched"]
    assert rep["loaded"] == len(sd) - 1 - len(rep["mismatched"])
    torch.testing.assert_close(dst.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)  # what fits was loaded
    with pytest.raises(CheckpointError) as e:
        load_pretrained(dst, sd, format="native")
    msg = str(e.value)
    assert msg.count("missing:") == min(10, len(rep["missing"])) and msg.count("unexpected:") == 1
    assert msg.count("shape mismatch:") == min(10, len(rep["mismatched"]))
    assert f"{len(rep['missing'])} missing, 1 unexpected, {len(rep['mismatched'])} mis-shaped keys" in msg
    assert "depth 3 found, 2 expected" not in msg and "depth 2 found, 3 expected" in msg


# --- extract_features

def test_extract_features_shapes_order_and_mode():
    enc = build_encoder("tiny", img_size=16, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2).train()
    xs = [torch.randn(3, 16, 16, 16) for _ in range(5)]
    f1 = extract_features(enc, [{"input": x, "target": 0} for x in xs], batch_size=2)
    f2 = extract_features(enc, xs, batch_size=5)
    assert f1.shape == (5, 48) and f1.dtype == torch.float32 and f1.device.type == "cpu" and enc.training
    torch.testing.assert_close(f1, f2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f1[3], extract_features(enc, [xs[3]])[0], atol=1e-5, rtol=1e-5)  # order kept
    assert extract_features(enc, xs, pool="tokens").shape == (5, 8, 48)
    assert extract_features(enc, xs, pool="cls").shape == (5, 48)
    with pytest.raises(DataError, match="different shapes"):
        extract_features(enc, [xs[0], torch.randn(3, 8, 8, 8)])
    with pytest.raises(ConfigError, match="batch_size"):
        extract_features(enc, xs, batch_size=0)
    with pytest.raises(DataError, match="item 0"):
        extract_features(enc, [[1, 2]])


# --- every registered encoder: shapes, backward, bad arguments

SMALL = {"vit3d": dict(size="tiny", img_size=16, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=2),
         "provicnet": dict(img_size=(3, 16, 16), patch_size=8, embed_dim=48, depth=2, num_heads=2),
         "vit2d": dict(size="vit_tiny", img_size=16, depth=2),
         "convnext3d": dict(size="micro", img_size=16, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))}


@pytest.mark.parametrize("arch", list_encoders())
def test_every_registered_encoder(arch):
    enc = build_encoder(arch, **SMALL.get(arch, {}))
    x = torch.randn(2, enc.in_channels, *enc.img_size, requires_grad=False)
    tokens, hidden = enc(x)
    n = 1
    for s in enc.grid_size: n *= s
    if hasattr(enc, "stage_dims"):  # hierarchical: the pooled vector and one map per stage
        assert tokens.shape == (2, enc.embed_dim) and len(hidden) == len(enc.stage_dims)
        assert [tuple(h.shape) for h in hidden] == [(2, c, *(i // s for i, s in zip(enc.img_size, st)))
                                                    for c, st in zip(enc.stage_dims, enc.stage_strides)]
        assert tuple(hidden[-1].shape[2:]) == enc.grid_size
        with pytest.raises(ConfigError, match="one pooled vector"):
            enc.forward_head(tokens, "cls")
    else:
        assert tokens.shape == (2, n, enc.embed_dim)
        assert len(hidden) == enc.num_layers and all(h.shape[:2] == (2, n) for h in hidden)
        assert enc.forward_head(tokens, "cls").shape == (2, enc.embed_dim)
    assert enc.forward_head(tokens).shape == (2, enc.embed_dim)
    (tokens.square().mean() + hidden[0].mean()).backward()
    grads = [p.grad for name, p in enc.named_parameters() if p.requires_grad and "norm_cross_attn" not in name]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    rebuilt = build_encoder(**enc.cfg)
    assert rebuilt.cfg == enc.cfg and sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in enc.parameters())
    with pytest.raises(ConfigError, match="encoder expects input"):
        enc(torch.randn(2, enc.in_channels + 1, *enc.img_size))
    with pytest.raises(ConfigError, match="unknown pool"):
        enc.forward_head(tokens, "max")
    with pytest.raises(ConfigError):
        build_encoder(arch, size="enormous")
