"""Seconds per video for each evaluation metric (default: one 16-frame 512² video, the paper's setting).

    python scripts/bench_metrics.py                       # CPU, random-weight RAFT and CLIP ViT-B/32 (same cost)
    python scripts/bench_metrics.py --device cuda --repeats 3
    python scripts/bench_metrics.py --raft-weights raft_large_C_T_V1-22a6c225.pth --clip-weights vit_b32.bin

Random weights have the real architectures, so the timings hold for real weights (values are meaningless).
Prints seconds per video for each metric and its share of the total measured in the same run.
"""
from __future__ import annotations

import argparse
import math
import time

import torch


def synthetic_video(frames: int, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A panning sinusoid texture ``(1, F, 3, S, S)`` in [-1, 1] and its first frame ``(1, 3, S, S)``."""
    ys, xs = torch.meshgrid(torch.arange(size * 2.0), torch.arange(size * 2.0), indexing="ij")
    canvas = torch.stack([torch.sin(xs / 7 + ys / 11), torch.cos(xs / 5 - ys / 13), torch.sin((xs + ys) / 9)])
    video = torch.stack([canvas[:, f: f + size, 2 * f: 2 * f + size] for f in range(frames)])[None] * 0.9
    return video.to(device), video[:, 0].clone().to(device)


def timed(fn, device: str, repeats: int) -> float:
    if device.startswith("cuda"):
        fn()                                                  # warm-up (cudnn autotune, allocator); CPU needs none
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main(argv=None) -> dict:
    from i2v.metrics.clip_temp import CLIPTemp, build_clip_encoder
    from i2v.metrics.dover import DoverVQA, build_dover_scorer
    from i2v.metrics.flow import FlowScore, RaftConfig, RaftFlow, WarpingError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--updates", type=int, default=20, help="RAFT flow updates (EvalCrafter: 20)")
    ap.add_argument("--raft-batch", type=int, default=8)
    ap.add_argument("--raft-weights", default=None)
    ap.add_argument("--clip-weights", default=None, help="open_clip ViT-B-32 file (default: random ViT-B-32)")
    ap.add_argument("--clip-arch", default="ViT-B-32")
    ap.add_argument("--dover-repo", default=None)
    ap.add_argument("--dover-weights", default=None)
    ap.add_argument("--only", default="clip_temp,flow_score,warping_error,dover_vqa")
    args = ap.parse_args(argv)
    dev = args.device
    torch.set_grad_enabled(False)
    video, image = synthetic_video(args.frames, args.size, dev)
    only = set(args.only.split(","))

    raft = RaftFlow(RaftConfig(weights=args.raft_weights, num_flow_updates=args.updates,
                               batch_size=args.raft_batch, allow_random=True)).to(dev)
    kind = "open_clip" if args.clip_weights else "random"
    enc = build_clip_encoder(kind, args.clip_weights, args.clip_arch, True, dev)
    metrics = {"clip_temp": CLIPTemp(enc), "flow_score": FlowScore(raft),
               "warping_error": WarpingError(raft, raft_input="evalcrafter")}
    scorer, reason = build_dover_scorer(args.dover_repo, args.dover_weights, dev)
    if scorer is not None:
        metrics["dover_vqa"] = DoverVQA(scorer)
    elif "dover_vqa" in only:
        print(f"(dover_vqa not timed: {reason})")
    print(f"device={dev} video=(1, {args.frames}, 3, {args.size}, {args.size}) raft: {raft.description}, "
          f"{args.updates} updates, batch {args.raft_batch}; clip: {enc.description}; threads={torch.get_num_threads()}")
    if dev.startswith("cuda"):
        print(f"gpu: {torch.cuda.get_device_name()}")
    secs = {}
    for name, m in metrics.items():
        if name not in only:
            continue
        m.to(dev)
        secs[name] = timed(lambda: m.score(video, image), dev, args.repeats)
    total = sum(secs.values())
    for name, s in secs.items():
        print(f"{name:14s} {s:8.2f} s/video  {100 * s / total:5.1f}% of total")
    print(f"{'total':14s} {total:8.2f} s/video  -> {math.ceil(total * 50 / 60)} min for the 50-video set")
    if dev.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB")
    return secs


if __name__ == "__main__":
    main()
