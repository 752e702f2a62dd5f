"""Benchmark: one I2V-Adapter training step (forward + backward + AdamW on the adapter only).

Ours = VideoUNet + I2V-Adapter (``to_q_ff``/``to_out_ff`` on every spatial attn1, 2C²+C per layer).
Reference, measured in the same run on identical weights = diffusers ``UNetMotionModel`` with the same number of
trainable tensors of the same shapes (every spatial ``attn1.to_q`` + ``attn1.to_out.0``: also 2C²+C per layer), the
closest diffusers stand-in for an adapter step. Ratios < 1 mean ours is faster.

    python scripts/bench_train.py                 # CPU: toy-sized model, batch 1 x 8 frames x 16² latents, fp32
    python scripts/bench_train.py --device cuda   # full SD1.5 (16x256² pixels -> 32² latents, v1 motion) and
                                                  # SDXL (16x512² -> 64², sdxl_beta), bf16 autocast, grad checkpointing
Also prints toy steps/s through the real LightningModule path (CPU).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_unet import build_pair, make_inputs  # noqa: E402

from i2v.models.adapters import attach_i2v_adapter  # noqa: E402
from i2v.models.config import UNetConfig  # noqa: E402

CASES = {  # name -> (config, motion, batch, frames, latent size)
    "toy": (UNetConfig.toy().replace(in_channels=12, out_channels=12), "v2", 1, 8, 16),
    "sd15": (UNetConfig.sd15(), "v1", 1, 16, 32),
    "sdxl": (UNetConfig.sdxl(), "sdxl_beta", 1, 16, 64),
}


def step_fn(model, params, call, device, amp_dtype):
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = call()
        loss = out[:, :, 1:].float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_case(name: str, device: str, repeats: int, warmup: int) -> None:
    cfg, version, batch, frames, size = CASES[name]
    amp = torch.bfloat16 if device == "cuda" else None
    ours, ref = build_pair(cfg, version, device, torch.float32)
    ours.requires_grad_(False)
    ref.requires_grad_(False)
    ours_params = list(attach_i2v_adapter(ours).values())
    ours.to(device)
    ref_params = []
    for n, p in ref.named_parameters():
        if "motion_modules" not in n and ".attn1.to_q." in n or (".attn1.to_out.0." in n and "motion_modules" not in n):
            p.requires_grad_(True)
            ref_params.append(p)
    n_ours, n_ref = sum(p.numel() for p in ours_params), sum(p.numel() for p in ref_params)
    if device == "cuda":
        ours.gradient_checkpointing = True
        ref.enable_gradient_checkpointing()
    ours.train()
    ref.train()
    x, t, ctx, cond = make_inputs(cfg, batch, frames, size, device, torch.float32)
    ctx_rep = ctx.repeat_interleave(frames, dim=0)
    runs = {"ours": step_fn(ours, ours_params, lambda: ours(x, t, ctx, added_cond=cond), device, amp),
            "diffusers": step_fn(ref, ref_params, lambda: ref(x, t, ctx_rep, added_cond_kwargs=cond).sample,
                                 device, amp)}
    times = {k: [] for k in runs}
    peak = {}
    for k, fn in runs.items():
        for _ in range(warmup):
            fn()
    for i in range(repeats):
        for k in (("ours", "diffusers") if i % 2 == 0 else ("diffusers", "ours")):
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            runs[k]()
            if device == "cuda":
                torch.cuda.synchronize()
                peak[k] = torch.cuda.max_memory_allocated() / 2**30
            times[k].append(time.perf_counter() - t0)
    mo, mr = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    line = (f"{name}: trainable ours {n_ours:,} / diffusers {n_ref:,}; step ours {mo * 1000:.1f} ms, "
            f"diffusers {mr * 1000:.1f} ms, time ratio {mo / mr:.3f}")
    if peak:
        line += f"; peak GiB ours {peak['ours']:.2f} diffusers {peak['diffusers']:.2f} ratio {peak['ours'] / peak['diffusers']:.3f}"
    print(line, flush=True)


def bench_module_steps(steps: int) -> None:
    from i2v.toy.build import random_toy_bundle
    from i2v.data import SyntheticVideos
    from i2v.training.module import I2VAdapterModule

    mod = I2VAdapterModule(random_toy_bundle(), {"lr": 1e-3}, {"text_drop_prob": 0.1, "image_drop_prob": 0.1})
    opt = mod.configure_optimizers()
    data = SyntheticVideos(n_items=steps * 4, num_frames=8, size=32)
    batches = [{"video": torch.stack([data[4 * i + j]["video"] for j in range(4)]),
                "text": [data[4 * i + j]["text"] for j in range(4)]} for i in range(steps)]
    mod.compute_loss(batches[0])["loss"].backward()
    t0 = time.perf_counter()
    for b in batches:
        loss = mod.compute_loss(b, generator=torch.Generator().manual_seed(0))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    dt = time.perf_counter() - t0
    print(f"toy LightningModule path (batch 4 x 8 frames x 32² pixels, both adapters): {steps / dt:.2f} steps/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    if args.device == "cpu":
        bench_case("toy", "cpu", args.repeats, args.warmup)
        bench_module_steps(10)
    else:
        for name in ("sd15", "sdxl"):
            bench_case(name, args.device, args.repeats, args.warmup)


if __name__ == "__main__":
    main()
