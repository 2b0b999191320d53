"""Encoder throughput: forward+backward volumes/s on the CPU for the tiny 3-D ViT (and the tiny ProViCNet slice
encoder), and, when a CUDA GPU is present, the base size (ProFound's ViT-B, 64x256x256) under bf16 autocast with
its model-FLOP utilisation against a given bf16 peak. Prints and saves benchmarks/results/encoders.json.

    python benchmarks/encoders.py [--peak-tflops 989] [--iters 5]
"""
import argparse
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vfm_transfer.core import atomic_write_json, set_seed
from vfm_transfer.encoders import build_encoder

OUT = Path(__file__).resolve().parent / "results" / "encoders.json"


def step(enc, x):
    tokens, hidden = enc(x)
    (tokens.float().square().mean() + sum(h.float().mean() for h in hidden)).backward()


def train_flops(enc, x):
    "FLOPs of one forward+backward, counted by torch's FlopCounterMode (matmuls and convs)."
    with FlopCounterMode(display=False) as fc:
        step(enc, x)
    enc.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def throughput(enc, x, iters, warmup, amp=None, sync=lambda: None):
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else torch.enable_grad
    for _ in range(warmup):
        with ctx(): step(enc, x)
        enc.zero_grad(set_to_none=True)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        with ctx(): step(enc, x)
        enc.zero_grad(set_to_none=True)
    sync()
    dt = time.perf_counter() - t0
    return x.shape[0] * iters / dt, dt / iters


def cpu_case(arch, batch, iters, **kw):
    set_seed(0, deterministic=False)
    enc = build_encoder(arch, **kw).train()
    x = torch.randn(batch, enc.in_channels, *enc.img_size)
    flops = train_flops(enc, x)
    vps, sec = throughput(enc, x, iters, warmup=1)
    return dict(arch=arch, cfg={k: v for k, v in enc.cfg.items()}, batch=batch, iters=iters, volumes_per_s=round(vps, 3),
                seconds_per_step=round(sec, 4), train_gflops_per_step=round(flops / 1e9, 3),
                achieved_gflops_per_s=round(flops / sec / 1e9, 2))


def gpu_case(batch, iters, peak_tflops):
    set_seed(0, deterministic=False)
    dev = torch.device("cuda")
    enc = build_encoder("vit3d", size="base").to(dev).train()
    x = torch.randn(batch, 3, *enc.img_size, device=dev)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        flops = train_flops(enc, x)
    vps, sec = throughput(enc, x, iters, warmup=2, amp=True, sync=torch.cuda.synchronize)
    return dict(arch="vit3d", size="base", batch=batch, iters=iters, amp="bf16", volumes_per_s=round(vps, 3),
                seconds_per_step=round(sec, 4), train_tflops_per_step=round(flops / 1e12, 4),
                achieved_tflops_per_s=round(flops / sec / 1e12, 2), peak_bf16_tflops=peak_tflops,
                mfu=round(flops / sec / 1e12 / peak_tflops, 4), device=torch.cuda.get_device_name(0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--gpu-batch", type=int, default=4)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100 SXM: 989)")
    args = ap.parse_args()
    res = dict(torch=torch.__version__, machine=platform.machine(), cpu_threads=torch.get_num_threads(),
               note="forward+backward of tokens and every hidden state; FLOPs from torch.utils.flop_counter")
    res["cpu_tiny_vit3d"] = cpu_case("vit3d", args.batch, args.iters, size="tiny")
    res["cpu_tiny_provicnet"] = cpu_case("provicnet", args.batch, max(1, args.iters // 2), size="tiny")
    if torch.cuda.is_available():
        res["gpu_base_vit3d_bf16"] = gpu_case(args.gpu_batch, args.iters, args.peak_tflops)
    else:
        res["gpu_base_vit3d_bf16"] = dict(skipped=True, reason="no CUDA GPU on this machine (torch.cuda.is_available() is False)",
                                         peak_bf16_tflops=args.peak_tflops)
    atomic_write_json(OUT, res)
    print(res)


if __name__ == "__main__":
    main()
