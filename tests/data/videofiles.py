"""Test media built at test time: tiny H.264 clips whose frames encode their own index, and broken copies.

Frame i is a uniform colour with R = 20 + 10·(i mod 20), G = 20 + 40·(i div 20), B = 128, plus a black bar over
the left quarter (to see flips). Up to 120 frames. `frame_index(rgb)` inverts the code from a centre patch.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import av
import numpy as np
import torch


def frame_rgb(i: int, h: int, w: int) -> np.ndarray:
    a = np.empty((h, w, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 20 + 10 * (i % 20), 20 + 40 * (i // 20), 128
    a[:, : w // 4] = 0
    return a


def write_video(path, num_frames=40, h=48, w=64, fps=25, faststart=False, codec="libx264", fmt=None):
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=opts) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = w, h
        s.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "12"}
        for i in range(num_frames):
            for p in s.encode(av.VideoFrame.from_ndarray(frame_rgb(i, h, w), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def frame_index(rgb: np.ndarray | torch.Tensor) -> int:
    """Index coded in an (H, W, 3) uint8 frame or a (3, H, W) [-1, 1] frame (centre-right patch)."""
    if isinstance(rgb, torch.Tensor):
        rgb = ((rgb.permute(1, 2, 0) + 1) * 127.5).numpy()
    h, w = rgb.shape[:2]
    patch = rgb[h // 2 - 2 : h // 2 + 2, (5 * w) // 8 - 2 : (5 * w) // 8 + 2].reshape(-1, 3).mean(0)
    return int(round((patch[0] - 20) / 10)) + 20 * int(round((patch[1] - 20) / 40))


def make_broken(folder, good_path) -> dict:
    """Broken copies next to a good clip: {name: path}."""
    data = open(good_path, "rb").read()
    fs = write_video(os.path.join(folder, "_fs.mp4"), faststart=True)
    fs_data = open(fs, "rb").read()
    os.remove(fs)
    out = {}
    for name, content in {
        "truncated": data[: len(data) // 2],  # moov atom at the end is lost
        "truncated_faststart": fs_data[: int(len(fs_data) * 0.6)],  # header fine, frames cut off
        "zero": b"",
        "text": b"this is not a video\n" * 10,
    }.items():
        p = os.path.join(folder, f"{name}.mp4")
        open(p, "wb").write(content)
        out[name] = p
    return out


def write_shard(path, samples: list[dict]) -> str:
    """samples: {"key", optional "mp4" (bytes), "txt" (str), "json" (dict)} -> tar at path."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext in ("mp4", "txt", "json"):
                if ext not in s:
                    continue
                v = s[ext]
                data = v if isinstance(v, bytes) else (json.dumps(v) if ext == "json" else v).encode()
                info = tarfile.TarInfo(f"{s['key']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)
