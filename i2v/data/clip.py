"""Clip sampling (AnimateDiff-style num_frames × stride at a random start) and pixel transforms.

`read_clip` = decode only the planned frames (video.py) → resize the short side → center-crop → optional
whole-clip horizontal flip → float32 in [-1, 1], shape (F, 3, H, W).

Short videos: if `(num_frames - 1) * stride + 1` frames do not fit, the largest stride that fits (≥ 1) is used
(`meta["stride_used"]`); fewer than `num_frames` frames is `BadSample("too_short")`. (AnimateDiff's linspace
instead silently compresses the span and repeats frames of very short videos.)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from i2v.data.stats import BadSample
from i2v.data.video import BACKENDS, VideoInfo, VideoSource, read_frames

Size = Union[int, Sequence[int]]


def as_hw(size: Size) -> tuple[int, int]:
    """int s -> (s, s); (H, W) -> (H, W)."""
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


@dataclass
class ClipSpec:
    """How to cut a clip out of a video. `size` is an int (square) or (H, W)."""

    num_frames: int = 16
    stride: int = 4
    size: Size = 256
    hflip: bool = False  # flip the whole clip with probability 0.5
    antialias: bool = True  # AnimateDiff used none (tensor Resize, antialias=None); True avoids aliasing
    backends: Sequence[str] = BACKENDS
    threads: int = 1  # decoder threads per reader (1 inside dataloader workers)

    def __post_init__(self):
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(f"num_frames and stride must be >= 1, got {self.num_frames}, {self.stride}")
        self.size = as_hw(self.size)


def clip_spec(clip: Optional[Union[ClipSpec, Mapping]], **defaults) -> ClipSpec:
    """The ``clip=`` argument every dataset takes: a ClipSpec as is, or a mapping (a Hydra config; the datamodule
    passes ``{num_frames, stride, size}`` from the stage, plus ``hflip: false`` for validation) or None, whose
    missing fields are ``defaults`` and then ClipSpec's. The file datasets pass ``hflip=True`` (training flips)."""
    if isinstance(clip, ClipSpec):
        return clip
    return ClipSpec(**{**defaults, **dict(clip or {})})


def item_rng(seed: int, key: Union[int, str], deterministic: bool) -> np.random.Generator:
    """Deterministic: a pure function of (seed, key) (validation). Otherwise drawn from torch's RNG, which
    DataLoader seeds differently per worker and per epoch (and `seed_everything` seeds in the main process)."""
    if deterministic:
        k = key if isinstance(key, int) else zlib.crc32(str(key).encode())
        return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(k) & 0xFFFFFFFFFFFF])
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


def plan_clip(n_source: int, num_frames: int, stride: int, rng: np.random.Generator) -> tuple[list[int], int, int]:
    """Frame indices for one clip: `start + stride_used * k`, k = 0..num_frames-1.

    Returns (indices, stride_used, start); stride_used = the largest stride ≤ `stride` that fits.
    Raises BadSample("too_short") when n_source < num_frames.
    """
    if n_source < num_frames:
        raise BadSample("too_short", f"{n_source} frames < num_frames={num_frames}")
    if num_frames > 1:
        stride = min(stride, (n_source - 1) // (num_frames - 1))
    span = (num_frames - 1) * stride + 1
    start = int(rng.integers(0, n_source - span + 1))
    return [start + stride * k for k in range(num_frames)], stride, start


def resize_crop(frames: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Resize so the frame covers `size` (short side for squares), then center-crop.

    frames: (F, 3, h, w) float or uint8; returns (F, 3, H, W), same dtype, with (H, W) = size. uint8 runs
    torch's channels-last uint8 kernel (about 10x faster than float on CPU; rounds to integers).
    """
    _, _, h, w = frames.shape
    th, tw = size
    scale = max(th / h, tw / w)
    nh, nw = max(th, int(round(h * scale))), max(tw, int(round(w * scale)))
    if (nh, nw) != (h, w):
        if frames.dtype == torch.uint8:
            frames = frames.contiguous(memory_format=torch.channels_last)
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False, antialias=antialias)
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    return frames[:, :, top : top + th, left : left + tw]


def to_pixels(frames: np.ndarray, spec: ClipSpec, flip: bool) -> torch.Tensor:
    """uint8 (F, h, w, 3) -> float32 (F, 3, H, W) in [-1, 1], resized/cropped to spec.size, optionally flipped."""
    x = rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "f h w c -> f c h w")
    x = resize_crop(x, spec.size, spec.antialias)  # in uint8 (channels-last kernel), before the float conversion
    if flip:
        x = x.flip(-1)
    return (x.float() / 127.5 - 1.0).contiguous()


def read_clip(
    source: VideoSource, spec: ClipSpec, rng: np.random.Generator, name: str = "<bytes>"
) -> tuple[torch.Tensor, dict]:
    """Decode one clip. Returns (video (F, 3, H, W) float32 in [-1, 1], meta).

    meta: source, fps, n_frames_source, stride_used, start, indices, flipped, backend, source_hw.
    Raises BadSample (missing_file, empty_file, corrupt, too_short).
    """
    plan: dict = {}

    def choose(info: VideoInfo) -> list[int]:
        if "indices" not in plan:  # a fallback backend reuses the first plan (same random draw)
            plan["indices"], plan["stride"], plan["start"] = plan_clip(info.num_frames, spec.num_frames, spec.stride, rng)
            plan["n"] = info.num_frames
        elif info.num_frames != plan["n"] and plan["indices"][-1] >= info.num_frames:
            plan["indices"], plan["stride"], plan["start"] = plan_clip(info.num_frames, spec.num_frames, spec.stride, rng)
            plan["n"] = info.num_frames
        return plan["indices"]

    frames, info, indices, backend = read_frames(source, choose, name, spec.backends, spec.threads)
    flip = bool(spec.hflip and rng.random() < 0.5)
    video = to_pixels(frames, spec, flip)
    meta = {
        "source": name,
        "fps": info.fps,
        "n_frames_source": info.num_frames,
        "stride_used": plan["stride"],
        "start": plan["start"],
        "indices": list(indices),
        "flipped": flip,
        "backend": backend,
        "source_hw": [info.height, info.width],
    }
    return video, meta
