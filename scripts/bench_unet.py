"""Benchmark: self-written VideoUNet vs diffusers (UNetMotionModel) on identical weights and inputs.

Both models are timed in the same run, interleaved (warm-up, then ``--repeats`` alternating calls, median),
and the ratios ours/diffusers are printed (< 1 means ours is faster / leaner).

    python scripts/bench_unet.py                       # CPU: medium SD1.5-like UNet + v2-style motion,
                                                       #      1 x 16 frames x 32^2 latents, fp32
    python scripts/bench_unet.py --device cuda         # full SD1.5 + v2 motion and SDXL + sdxl_beta, fp16,
                                                       #      2 x 16 frames x 64^2 [--compile] [--channels-last]

Peak memory: CUDA = ``torch.cuda.max_memory_allocated`` above the pre-forward allocation (same process).
CPU = peak resident set size above the pre-forward RSS, measured in a fresh subprocess per model (the kernel's
VmHWM is reset through ``/proc/self/clear_refs`` before the forward, read from ``/proc/self/status`` after).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from i2v.models.config import MotionConfig, UNetConfig  # noqa: E402
from i2v.models.unet import VideoUNet  # noqa: E402
from i2v.checkpoints.diffusers_config import motion_config_to_diffusers, unet_config_to_diffusers

# SD1.5 layout (3 levels, last plain, 2 resnets/level, 1x1-conv proj) at CPU-friendly widths, heads 32 wide
MEDIUM = UNetConfig(block_out_channels=(32, 64, 64), attention_levels=(True, True, False), layers_per_block=2,
                    transformer_layers_per_block=(1, 1, 1), num_attention_heads=(1, 2, 2), cross_attention_dim=128,
                    norm_num_groups=16, mid_transformer_layers=1, sample_size=32)
CASES = {  # name -> (unet config, motion version, batch, latent size)
    "medium": (MEDIUM, "v2", 1, 32),
    "sd15": (UNetConfig.sd15(), "v2", 2, 64),
    "sdxl": (UNetConfig.sdxl(), "sdxl_beta", 2, 64),
}


def build_pair(cfg: UNetConfig, version: str, device: str, dtype: torch.dtype, seed: int = 0):
    """diffusers UNetMotionModel (random weights) and VideoUNet with the same weights (diffusers norm modes)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    torch.manual_seed(seed)
    motion = MotionConfig.for_version(version, cfg).diffusers_norms()
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_config_to_diffusers(cfg))
        adapter = MotionAdapter(**motion_config_to_diffusers(motion))
        ref = UNetMotionModel.from_unet2d(unet, adapter)
        del unet, adapter
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        ours = VideoUNet(cfg, motion)
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.endswith("pos_embed.pe")})
    return ours.to(dtype=dtype).eval(), ref.to(dtype=dtype).eval()


def make_inputs(cfg: UNetConfig, batch: int, frames: int, size: int, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_channels, frames, size, size, generator=g).to(device, dtype)
    ctx = torch.randn(batch, 77, cfg.cross_attention_dim, generator=g).to(device, dtype)
    t = torch.tensor([500] * batch, device=device)
    cond = None
    if cfg.addition_embed_type == "text_time":
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        cond = {"text_embeds": torch.randn(batch, text_dim, generator=g).to(device, dtype),
                "time_ids": torch.tensor([[512.0, 512, 0, 0, 512, 512]] * batch, device=device, dtype=dtype)}
    return x, t, ctx, cond


def runners(ours, ref, inputs):
    x, t, ctx, cond = inputs
    frames = x.shape[2]
    ctx_rep = ctx.repeat_interleave(frames, dim=0)  # diffusers 0.42 expects (B·F, L, d)
    return (lambda: ours(x, t, ctx, added_cond=cond),
            lambda: ref(x, t, ctx_rep, added_cond_kwargs=cond).sample)


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def time_pair(run_ours, run_ref, device: str, warmup: int, repeats: int):
    with torch.no_grad():
        for _ in range(warmup):
            run_ours()
            run_ref()
        wall = {"ours": [], "ref": []}
        cpu = {"ours": [], "ref": []}
        for i in range(repeats):
            order = (("ours", run_ours), ("ref", run_ref)) if i % 2 == 0 else (("ref", run_ref), ("ours", run_ours))
            for name, fn in order:
                _sync(device)
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                _sync(device)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    med = statistics.median
    return (med(wall["ours"]), med(wall["ref"])), (med(cpu["ours"]), med(cpu["ref"]))


def cuda_peak(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_child(args) -> None:
    """Subprocess entry: build one model, reset VmHWM, run one forward, print the peak RSS delta (bytes)."""
    cfg, version, batch, size = CASES[args.case]
    ours, ref = build_pair(cfg, version, "cpu", torch.float32)
    model = ours if args.mem_child == "ours" else ref
    del ours, ref
    inputs = make_inputs(cfg, batch if args.batch is None else args.batch, args.frames,
                         size if args.size is None else args.size, "cpu", torch.float32)
    run = runners(model, model, inputs)[0 if args.mem_child == "ours" else 1]
    with torch.no_grad():
        run()  # warm-up (allocator caches, lazy init)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kb("VmRSS")
        run()
        peak = _status_kb("VmHWM")
    print(json.dumps({"peak_bytes": (peak - base) * 1024}))


def cpu_peak(args, which: str) -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--mem-child", which, "--case", args.case,
           "--frames", str(args.frames), "--threads", str(args.threads)]
    if args.batch is not None:
        cmd += ["--batch", str(args.batch)]
    if args.size is not None:
        cmd += ["--size", str(args.size)]
    # every allocation >= 64 KiB gets its own mmap and is unmapped on free, so RSS follows live memory
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def bench_case(args, case: str) -> None:
    cfg, version, batch, size = CASES[case]
    batch = batch if args.batch is None else args.batch
    size = size if args.size is None else args.size
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if args.device == "cuda" else torch.float32)
    if args.device == "cuda" and dtype == torch.float32:   # a parity check: true fp32, no TF32 convs or matmuls
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    ours, ref = build_pair(cfg, version, args.device, dtype)
    if args.channels_last:
        ours, ref = ours.to(memory_format=torch.channels_last), ref.to(memory_format=torch.channels_last)
    inputs = make_inputs(cfg, batch, args.frames, size, args.device, dtype)
    run_ours, run_ref = runners(ours, ref, inputs)
    with torch.no_grad():
        a, b = run_ours(), run_ref()
        err = (a.float() - b.float()).abs().max().item() / max(1.0, b.float().abs().max().item())
    if args.compile:
        ours_c, ref_c = torch.compile(ours), torch.compile(ref)
        run_ours, run_ref = runners(ours_c, ref_c, inputs)
    (t_ours, t_ref), (c_ours, c_ref) = time_pair(run_ours, run_ref, args.device, args.warmup, args.repeats)
    if args.device == "cuda":
        m_ours, m_ref = cuda_peak(run_ours), cuda_peak(run_ref)
        mem_how = "torch.cuda.max_memory_allocated"
    else:
        del ours, ref, run_ours, run_ref
        m_ours, m_ref = cpu_peak(args, "ours"), cpu_peak(args, "ref")
        mem_how = "peak RSS (VmHWM) per subprocess"
    print(f"[{case}] {args.device} {str(dtype).replace('torch.', '')} x={batch}x{cfg.in_channels}x{args.frames}x"
          f"{size}x{size} motion={version} compile={args.compile} channels_last={args.channels_last} "
          f"threads={torch.get_num_threads()}")
    print(f"  output rel. max err ours vs diffusers: {err:.2e}")
    print(f"  time   ours {t_ours * 1e3:9.1f} ms   diffusers {t_ref * 1e3:9.1f} ms   ratio {t_ours / t_ref:.3f}"
          f"   (wall, median of {args.repeats}, interleaved)")
    if args.device == "cpu":  # process CPU time is less disturbed by other jobs on a shared machine
        print(f"  cpu    ours {c_ours * 1e3:9.1f} ms   diffusers {c_ref * 1e3:9.1f} ms   ratio {c_ours / c_ref:.3f}"
              f"   (process CPU time, all threads)")
    print(f"  memory ours {m_ours / 2**20:9.1f} MiB  diffusers {m_ref / 2**20:9.1f} MiB  ratio "
          f"{m_ours / max(m_ref, 1):.3f}   ({mem_how})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--case", choices=sorted(CASES), default=None,
                   help="default: medium on cpu; sd15 and sdxl on cuda")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="default: float16 on cuda (timing), float32 on cpu; float32 on cuda checks parity at full size")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="latent height = width")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--mem-child", choices=("ours", "ref"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.mem_child is not None:
        return cpu_peak_child(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    cases = [args.case] if args.case else (["medium"] if args.device == "cpu" else ["sd15", "sdxl"])
    for case in cases:
        args.case = case
        bench_case(args, case)
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
