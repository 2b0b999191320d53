"""Write tests/data/profound_conv_micro.pt: a micro ProFound-Conv (3-D ConvNeXt-V2) checkpoint in FCMAE's layout and
the outputs ProFound's own code gives for it. Run once, by hand, with ProFound's public model code on the path:

    git -C ProFound show demo:models/convnextv2.py > /tmp/profound/models/convnextv2.py   # and models/util.py,
    touch /tmp/profound/models/__init__.py                                                # an empty __init__.py
    PYTHONPATH=/tmp/profound python tests/data/make_profound_conv_reference.py

(pipiwang/ProFound, branch `demo`, commit 6c37140 era). MinkowskiEngine is not needed: ProFound's sparse encoder
(`models/convnextv2_sparse.py`, `models/fcmae.py`) is not built; its checkpoint layout is written from those files'
definitions (MinkowskiConvolution `kernel` (k^3, in, out), or (in, out) for kernel 1; MinkowskiChannelwiseConvolution
`kernel` (k^3, C); biases (1, C); MinkowskiLayerNorm `.ln.`; MinkowskiLinear `.linear.`; MinkowskiGRN gamma/beta (1, C);
everything under `encoder.`; FCMAE's `proj`, `mask_token`, `decoder.*`, `pred`; no final norm), as the inverse of
ProFound's `remap_checkpoint_keys`. The reference outputs come from ProFound's `remap_checkpoint_keys` +
`load_state_dict` + dense `ConvNeXtV2.forward_features`: the pooled-and-normed vector (final norm at its initial
values, as ProFound's loader leaves it) and the four stage maps.
"""
import argparse
from pathlib import Path

import torch
from models.convnextv2 import Block, ConvNeXtV2, load_state_dict, remap_checkpoint_keys

DEPTHS, DIMS, IMG, DEC = [1, 1, 2, 1], [4, 8, 16, 32], (16, 16, 32), 4


def to_fcmae(dense: dict) -> dict:
    out = {}
    for k, v in dense.items():
        if k.startswith("norm."): continue  # FCMAE's sparse encoder has no final norm
        parts = k.split(".")
        if k.startswith("downsample_layers.0."): out[f"encoder.{k}"] = v; continue  # dense stem (conv + LayerNorm)
        if k.endswith(".weight") and v.ndim == 5:  # a conv: Minkowski kernel
            base = ".".join(parts[:-1])
            out_c, in_c, *ks = v.shape
            kv = ks[0] * ks[1] * ks[2]
            if ".dwconv" in k: kern = v.permute(0, 1, 4, 3, 2).reshape(out_c, kv).permute(1, 0)  # (k^3, C)
            elif kv == 1: kern = v[:, :, 0, 0, 0].permute(1, 0)  # (in, out)
            else: kern = v.permute(0, 1, 4, 3, 2).reshape(out_c, in_c, kv).permute(2, 1, 0)  # (k^3, in, out)
            out[f"encoder.{base}.kernel"] = kern.contiguous()
            continue
        if k.endswith(".bias") and (".dwconv." in k or (k.startswith("downsample_layers.") and parts[2] == "1")):
            out[f"encoder.{k}"] = v.reshape(1, -1); continue
        if ".grn." in k: out[f"encoder.{k}"] = v.reshape(1, -1); continue
        if ".norm." in k or (k.startswith("downsample_layers.") and parts[2] == "0"):
            out[f"encoder.{'.'.join(parts[:-1])}.ln.{parts[-1]}"] = v; continue
        if ".pwconv" in k: out[f"encoder.{'.'.join(parts[:-1])}.linear.{parts[-1]}"] = v; continue
        raise KeyError(k)
    g = torch.Generator().manual_seed(1)
    out["proj.weight"], out["proj.bias"] = torch.randn(DEC, DIMS[-1], 1, 1, 1, generator=g), torch.zeros(DEC)
    out["mask_token"] = torch.randn(1, DEC, 1, 1, 1, generator=g)
    for kk, vv in Block(DEC).state_dict().items(): out[f"decoder.0.{kk}"] = vv
    out["pred.weight"], out["pred.bias"] = torch.randn(16 ** 3 * 3 // 64, DEC, 1, 1, 1, generator=g), torch.zeros(16 ** 3 * 3 // 64)
    return out


def main():
    torch.manual_seed(0)
    src = ConvNeXtV2(in_chans=3, depths=DEPTHS, dims=DIMS)
    with torch.no_grad():  # non-trivial values everywhere (GRN starts at zero, LayerNorms at 1/0)
        for n, p in src.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.1) + (1.0 if n.endswith("norm.weight") or ".0.1.weight" in n else 0.0))
    fcmae = to_fcmae(src.state_dict())
    ckpt = {"model": fcmae, "epoch": 799, "args": argparse.Namespace(model="convnext", mask_ratio=0.6, input_size=IMG)}
    ref = ConvNeXtV2(in_chans=3, depths=DEPTHS, dims=DIMS)
    load_state_dict(ref, remap_checkpoint_keys({"model": dict(fcmae)}))
    ref.eval()
    x = torch.randn(1, 3, *IMG, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pooled, stages = ref.forward_features(x)
        pooled_src, stages_src = src.forward_features(x)
    for a, b in zip(stages, stages_src): torch.testing.assert_close(a, b)  # the FCMAE round trip is exact
    torch.save(dict(checkpoint=ckpt, x=x, pooled=pooled, stages=list(stages), depths=DEPTHS, dims=DIMS, img_size=IMG),
               Path(__file__).with_name("profound_conv_micro.pt"))
    print({k: tuple(v.shape) for k, v in fcmae.items() if k.startswith("encoder.stages.0")}, pooled.shape, [s.shape for s in stages])


if __name__ == "__main__":
    main()
