"""Every head on every kind of encoder: output shapes, gradients reaching the encoder, and bad arguments."""
import pytest
import torch

from vfm_transfer.core import ConfigError
from vfm_transfer.data import TASK_SPECS, TASKS
from vfm_transfer.encoders import ViTEncoder, build_encoder
from vfm_transfer.heads import (RESIDUAL_FROM, ClassificationHead, RestorationHead, SegmentationHead, StageUNetDecoder,
                                UNETRDecoder, build_head, upsample_strides)

SMALL = dict(hidden_size=48, mlp_dim=96, num_heads=2)
ENCODERS = {
    "3d_tiny": lambda: build_encoder("tiny", img_size=16, patch_size=8, num_layers=2, **SMALL),
    "3d_aniso": lambda: build_encoder("tiny", img_size=(8, 16, 16), patch_size=(4, 8, 8), num_layers=3, **SMALL),
    "2d": lambda: ViTEncoder(2, 3, img_size=16, patch_size=4, num_layers=2, **SMALL),
    "2.5d_slices": lambda: build_encoder("provicnet", size="tiny", img_size=(4, 16, 16), patch_size=8, embed_dim=48,
                                         depth=2, num_heads=2),
    "convnext": lambda: build_encoder("convnext3d", size="micro", img_size=16, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32)),
    "convnext_aniso_3stage": lambda: build_encoder("convnext3d", size="micro", img_size=(4, 16, 16), depths=(1, 1, 1),
                                                   dims=(8, 16, 24), strides=((1, 4, 4), 2, 2)),
}
HEADS = {
    "classification": lambda e: ClassificationHead(e, 3),
    "classification_cls": lambda e: ClassificationHead(e, 2, pool="cls", hidden=16),
    "segmentation": lambda e: SegmentationHead(e, 3, feature_size=4),
    "restoration": lambda e: RestorationHead(e, 2, residual_from=(1, 2), feature_size=4),
    "restoration_zero_base": lambda e: RestorationHead(e, 1, residual_from=None, feature_size=4, residual_init_scale=1.0),
}


@pytest.mark.parametrize("enc_name", list(ENCODERS))
@pytest.mark.parametrize("head_name", list(HEADS))
def test_head_shapes_and_backward(head_name, enc_name):
    torch.manual_seed(0)
    enc = ENCODERS[enc_name]()
    if head_name == "classification_cls" and enc_name.startswith("convnext"):
        with pytest.raises(ConfigError, match="CLS token"):  # a ConvNeXt has none
            HEADS[head_name](enc)
        return
    head = HEADS[head_name](enc)
    x = torch.randn(2, enc.in_channels, *enc.img_size)
    out = head(x, *enc(x))
    if head_name.startswith("classification"):
        assert out.shape == (2, 3 if head_name == "classification" else 2)
    else:
        assert out.shape == (2, {"segmentation": 3, "restoration": 2}.get(head_name, 1), *enc.img_size)
    assert torch.isfinite(out).all()
    # the head does not own the encoder's parameters, yet gradients flow back into them
    head_params = {id(p) for p in head.parameters()}
    assert not head_params & {id(p) for p in enc.parameters()}
    (out - torch.randn_like(out)).pow(2).mean().backward()
    first_block = [p for n, p in enc.named_parameters() if ("blocks.0." in n or "stages.0.0." in n) and p.requires_grad]
    assert first_block and any(p.grad is not None and p.grad.abs().sum() > 0 for p in first_block), \
        f"no gradient reached the first encoder block of {enc_name}"
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


@pytest.mark.parametrize("enc_name", list(ENCODERS))
def test_build_head_every_task(enc_name):
    enc = ENCODERS[enc_name]()
    x = torch.randn(1, enc.in_channels, *enc.img_size)
    tok, hid = enc(x)
    for task in TASKS:
        head = build_head(task, enc, **({} if task == "classification" else {"feature_size": 4}))
        out = head(x, tok, hid)
        spec = TASK_SPECS[task]
        if spec["kind"] == "classification":
            assert out.shape == (1, spec["out_channels"])
        else:
            assert out.shape == (1, spec["out_channels"], *enc.img_size)
        if spec["kind"] == "restoration":
            assert head.residual_from == RESIDUAL_FROM[task]


def test_upsample_strides_multiply_to_patch():
    for patch in [(16, 16, 16), (16, 32, 32), (4, 8, 8), (1, 14, 14), (2, 6), (1, 1, 1)]:
        strides = upsample_strides(patch)
        prod = [1] * len(patch)
        for s in strides:
            prod = [a * b for a, b in zip(prod, s)]
        assert tuple(prod) == tuple(patch)


def test_decoder_taps_are_evenly_spaced():
    enc = build_encoder("tiny", img_size=64, patch_size=16, num_layers=12, **SMALL)
    assert UNETRDecoder(enc, 2, feature_size=2).taps == [3, 6, 9]  # UNETR's choice for 12 layers, 16^3 patches


def test_bad_arguments():
    enc = ENCODERS["3d_tiny"]()
    x = torch.randn(1, 3, 16, 16, 16)
    tok, hid = enc(x)
    with pytest.raises(ConfigError, match="unknown task 'detection'.*classification"):
        build_head("detection", enc)
    with pytest.raises(ConfigError, match="lacks"):
        SegmentationHead(torch.nn.Linear(3, 3), 2)
    with pytest.raises(ConfigError, match="out_channels must be an int >= 1"):
        SegmentationHead(enc, 0)
    with pytest.raises(ConfigError, match="num_classes"):
        ClassificationHead(enc, -1)
    with pytest.raises(ConfigError, match="unknown pool 'max'"):
        ClassificationHead(enc, 2, pool="max")
    with pytest.raises(ConfigError, match=r"residual_from \(0, 1\) must give one input channel"):
        RestorationHead(enc, 3, residual_from=(0, 1))
    # a head built for one encoder refuses the tokens of an encoder of another width or grid
    other = build_encoder("tiny", img_size=16, patch_size=8, num_layers=2, hidden_size=96, mlp_dim=96, num_heads=2)
    t2, h2 = other(x)
    for head in (ClassificationHead(enc, 2), SegmentationHead(enc, 3, feature_size=4)):
        with pytest.raises(ConfigError, match=r"expects tokens \(B, 8, 48\)"):
            head(x, t2, h2)
    with pytest.raises(ConfigError, match="expects 2 hidden states"):
        SegmentationHead(enc, 3, feature_size=4)(x, tok, hid[:1])
    with pytest.raises(ConfigError, match=r"decoder expects input \(B, 3, 16, 16, 16\)"):
        SegmentationHead(enc, 3, feature_size=4)(x[:, :1], tok, hid)


def test_stage_decoder_is_profounds_convnext_unetr_at_profound_strides():
    # ProFound's ConvnextUNETR: skips from stages 1-3 up 2x (2f, 4f, 8f channels), four 2x up blocks (8f, 4f, 2f, f)
    enc = build_encoder("convnext3d", size="micro", img_size=32)
    dec = StageUNetDecoder(enc, 1, feature_size=4)
    assert [tuple(u.transp_conv_init.conv.stride) for u in dec.skips] == [(2, 2, 2)] * 3
    assert [u.transp_conv.conv.out_channels for u in dec.ups] == [32, 16, 8, 4]
    assert [u.transp_conv.conv.in_channels for u in dec.ups] == [64, 32, 16, 8]


def test_convnext_head_refuses_wrong_outputs():
    enc = ENCODERS["convnext"]()
    x = torch.randn(1, 3, 16, 16, 16)
    pooled, stages = enc(x)
    seg = SegmentationHead(enc, 3, feature_size=4)
    with pytest.raises(ConfigError, match="expects stage maps"):
        seg(x, pooled, stages[:-1])
    with pytest.raises(ConfigError, match=r"expects the pooled vector \(B, 32\)"):
        ClassificationHead(enc, 2)(x, stages[-1].flatten(2).transpose(1, 2), stages)
    vit_tokens, vit_hidden = ENCODERS["3d_tiny"]()(x)
    with pytest.raises(ConfigError, match="expects the pooled vector"):
        seg(x, vit_tokens, vit_hidden)
