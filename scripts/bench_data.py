"""Data-loading throughput: clips/s for 16 frames × stride 4, decord vs PyAV, 1 and 2 dataloader workers.

Generates (in a temp dir) a WebVid-like 336×596 H.264 file and a 720×1280 one (stage 2 source), then reads random
clips through the real dataset code (FolderVideos + VideoDataModule's collate) to 256² and 512².
Target: ≥ 2 clips/s per worker at 256².

    PYTHONPATH=. python scripts/bench_data.py [--clips 24] [--seconds 10] [--fps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

from i2v.data import ClipSpec, FolderVideos, collate_videos

SETUPS = [("webvid 336x596 -> 256²", (336, 596), 256), ("720p 720x1280 -> 512²", (720, 1280), 512)]


def make_video(path: str, hw: tuple[int, int], num_frames: int, fps: int, gop: int) -> str:
    """Moving gradients + drifting texture + a moving box: H.264 yuv420p, keyframe every `gop` frames."""
    h, w = hw
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 60, size=(h * 2, w * 2, 1), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = gop
        s.options = {"preset": "veryfast", "crf": "23"}
        for i in range(num_frames):
            base = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], -1)
            oy, ox = (i * 3) % h, (i * 5) % w
            a = base + tex[oy : oy + h, ox : ox + w]
            by, bx = int((h - h // 4) * (0.5 + 0.5 * np.sin(i / 15))), int((w - w // 4) * (0.5 + 0.5 * np.cos(i / 20)))
            a[by : by + h // 4, bx : bx + w // 4] = (240, 60, 30)
            for p in s.encode(av.VideoFrame.from_ndarray(np.clip(a, 0, 255).astype(np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def bench(manifest: str, size: int, backend: str, workers: int, clips: int) -> float:
    """Clips per second through a DataLoader (timed from the first batch, so worker start-up is excluded)."""
    ds = FolderVideos(manifest=manifest, clip=ClipSpec(16, 4, size, hflip=True, backends=(backend,)))
    loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=workers, collate_fn=collate_videos,
                        prefetch_factor=2 if workers else None)
    it = iter(loader)
    for _ in range(workers or 1):  # warm-up: one clip per worker
        batch = next(it)
    assert batch["video"].shape == (1, 16, 3, size, size)
    assert all(m["backend"] == backend for m in batch["meta"])
    t = time.perf_counter()
    for _ in range(clips):
        next(it)
    return clips / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=24, help="timed clips per configuration")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the generated videos")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--gop", type=int, default=30, help="keyframe interval of the generated videos")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = int(args.seconds * args.fps)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, hw, size in SETUPS:
            t = time.perf_counter()
            path = make_video(os.path.join(d, f"{hw[0]}x{hw[1]}.mp4"), hw, n, args.fps, args.gop)
            print(f"# {name}: wrote {n} frames ({os.path.getsize(path) / 1e6:.1f} MB) in {time.perf_counter() - t:.1f}s")
            manifest = os.path.join(d, f"{hw[0]}.jsonl")
            with open(manifest, "w") as f:
                f.writelines(json.dumps({"path": path, "caption": "x"}) + "\n" for _ in range(4 * args.clips + 8))
            for backend in ("decord", "pyav"):
                for w in args.workers:
                    rate = bench(manifest, size, backend, w, args.clips)
                    rows.append((name, backend, w, rate))
                    print(f"{name:24s} {backend:7s} workers={w}  {rate:6.2f} clips/s  ({rate / w:.2f} per worker)",
                          flush=True)
    print(f"\nload average {os.getloadavg()}, {os.cpu_count()} CPUs visible, torch threads per worker 1")
    print(f"| {'setup':24s} | backend | workers | clips/s | per worker | decord/PyAV |")
    print(f"|{'-' * 26}|---------|---------|---------|------------|-------------|")
    by = {(r[0], r[1], r[2]): r[3] for r in rows}
    for name, backend, w, rate in rows:
        ratio = by[(name, "decord", w)] / by[(name, "pyav", w)] if backend == "decord" else float("nan")
        print(f"| {name:24s} | {backend:7s} | {w:7d} | {rate:7.2f} | {rate / w:10.2f} | "
              f"{'' if ratio != ratio else f'{ratio:.2f}x':>11s} |")
    for name, _, size in SETUPS:
        for backend in ("decord", "pyav"):
            if len(args.workers) > 1:
                a, b = args.workers[0], args.workers[-1]
                print(f"scaling {name} {backend}: {b} vs {a} workers = "
                      f"{by[(name, backend, b)] / by[(name, backend, a)]:.2f}x")


if __name__ == "__main__":
    main()
