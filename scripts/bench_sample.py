"""Benchmark: seconds per sampled video (first-frame-clamped sampler + Frame Similarity Prior).

    PYTHONPATH=. python scripts/bench_sample.py                                   # toy backbone, CPU, 16×32²
    PYTHONPATH=. python scripts/bench_sample.py --device cuda --backbone sd15     # random SD1.5+AnimateDiff v1, 16×512²
    PYTHONPATH=. python scripts/bench_sample.py --device cuda --backbone sdxl     # random SDXL+AnimateDiff beta, 16×512²

Weights are random (timing only). The full model is timed: VideoUNet + motion module + I2V-Adapter on every attn1
+ IP-Adapter (16 image tokens) on every attn2. Printed ratios are measured in the same run:
``sampler / (NFE × one guided UNet forward)`` (sampler overhead: scheduler steps, FSP, concatenations) and
``t0=x / t0=1.0`` (SDEdit truncation saving; expected ≈ round(S·t0)/S). ``--noised-kv`` also times each t0 with
``adapter.noised_kv`` (i2v.models.noised_kv: one extra one-frame forward per step) and prints its ratio to the
paper's sampler in the same run (expected ≈ 1 + 1/F of the UNet time).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from i2v.diffusion.fsp import initial_latents
from i2v.diffusion.sampler import Denoiser, sample_video
from i2v.diffusion.schedule import NoiseSchedule, make_scheduler
from i2v.models.adapters import attach_i2v_adapter
from i2v.models.content import attach_ip_adapter
from i2v.models.noised_kv import NoisedKVDenoiser
from i2v.models.unet import build_video_unet

# backbone -> (motion version, latent downscale, text tokens, schedule kwargs, SDXL added_cond)
BACKBONES = {
    "toy": ("v2", 1, 16, dict(beta_schedule="linear"), False),
    "sd15": ("v1", 8, 77, dict(beta_schedule="linear"), False),
    "sdxl": ("sdxl_beta", 8, 77, dict(beta_schedule="scaled_linear", beta_end=0.020), True),
}
IMAGE_TOKENS = 16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int, warmup: int):
    for _ in range(warmup):  # cuDNN autotune, allocator
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=sorted(BACKBONES), default="toy")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="default: float16 on cuda, float32 on cpu")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=None, help="pixels (default: 32 toy, 512 otherwise)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--t0", type=float, nargs="+", default=[1.0, 0.8])
    ap.add_argument("--p", type=float, default=0.5)
    ap.add_argument("--scheduler", default="ddim", choices=["ddim", "euler", "dpmpp", "ddpm"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 1 on cuda, 0 on cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--noised-kv", action="store_true", help="also time adapter.noised_kv (ratio to the paper's)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warmup = args.warmup if args.warmup is not None else int(device.type == "cuda")
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    motion, down, n_text, sched_kw, sdxl = BACKBONES[args.backbone]
    size = args.size or (32 if args.backbone == "toy" else 512)
    torch.manual_seed(0)
    unet = build_video_unet(args.backbone, motion=motion, device=device, dtype=dtype).eval().requires_grad_(False)
    attach_i2v_adapter(unet)
    attach_ip_adapter(unet, IMAGE_TOKENS)
    unet.requires_grad_(False)
    cfg = unet.config
    h = w = size // down
    first = torch.randn(1, cfg.in_channels, h, w, device=device, dtype=dtype)
    ctx_len = n_text + IMAGE_TOKENS
    cond = torch.randn(1, ctx_len, cfg.cross_attention_dim, device=device, dtype=dtype)
    uncond = torch.randn(1, ctx_len, cfg.cross_attention_dim, device=device, dtype=dtype)
    added = None
    if sdxl:
        added = {"text_embeds": torch.randn(1, 1280, device=device, dtype=dtype),
                 "time_ids": torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype)}
    schedule = NoiseSchedule(**sched_kw)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"backbone={args.backbone} motion={motion} params={n_params / 1e6:.1f}M device={device} dtype={dtype} "
          f"video={args.frames}x{size}x{size} latent={cfg.in_channels}x{args.frames}x{h}x{w} steps={args.steps} "
          f"cfg={args.cfg} scheduler={args.scheduler} context={ctx_len} tokens")

    # reference: one guided UNet forward (batch 2) on the same input
    x = torch.randn(2, cfg.in_channels, args.frames, h, w, device=device, dtype=dtype)
    t = torch.full((2,), 500, device=device, dtype=torch.long)
    ctx2 = torch.cat([uncond, cond])
    add2 = None if added is None else {k: torch.cat([v, v]) for k, v in added.items()}
    with torch.no_grad():
        fwd, _ = _timed(lambda: unet(x, t, ctx2, added_cond=add2), device, args.repeats, max(warmup, 1))
    print(f"one guided UNet forward (batch 2): {fwd:.4f} s")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    results = {}
    noise = torch.randn(1, cfg.in_channels, 1, h, w, device=device, dtype=dtype)
    for t0 in args.t0:
        def run(noised_kv: bool = False):  # the pipeline's parts (I2VPipeline without the encoders)
            scheduler = make_scheduler(args.scheduler, schedule)
            g = torch.Generator(device).manual_seed(42)
            x, timesteps, _ = initial_latents(first, args.frames, scheduler, args.steps, t0=t0, p=args.p, generator=g)
            denoise = Denoiser(unet, args.cfg)
            if noised_kv:
                denoise = NoisedKVDenoiser(denoise, schedule, unet, noise)
            return sample_video(denoise, x, {"context": cond, "added_cond": added},
                                {"context": uncond, "added_cond": None}, timesteps, scheduler=scheduler, generator=g)
        sec, out = _timed(run, device, args.repeats, warmup)
        results[t0] = sec
        print(f"t0={t0:.2f}: {sec:.3f} s/video  unet_calls={out['nfe']}  steps={out['steps']}  "
              f"sampler/(NFE×forward)={sec / (out['nfe'] * fwd):.3f}")
        if args.noised_kv:
            kv_sec, _ = _timed(lambda: run(True), device, args.repeats, warmup)
            print(f"t0={t0:.2f} adapter.noised_kv: {kv_sec:.3f} s/video  ratio to the paper's sampler: "
                  f"{kv_sec / sec:.3f} (1 + 1/F = {1 + 1 / args.frames:.3f})")
    if 1.0 in results:
        for t0, sec in results.items():
            if t0 != 1.0:
                print(f"ratio t0={t0:.2f} / t0=1.00: {sec / results[1.0]:.3f}")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
