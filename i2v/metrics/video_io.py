"""Read videos for evaluation: mp4/webm/mov/avi (decord, PyAV fallback), gif, and folders of frame images.

Every reader returns ``(F, 3, H, W)`` float in [-1, 1] decoded from uint8 RGB, like EvalCrafter's OpenCV decoding
(every frame, BGR->RGB, uint8). Writing lives in ``i2v/utils/io.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from i2v.utils.io import IMAGE_EXTS, image_files, load_image, natural_key

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v")
GIF_EXTS = (".gif",)


def _from_uint8(arr: np.ndarray, source: Path) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, H, W) float in [-1, 1]."""
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4) or arr.shape[0] == 0:
        raise ValueError(f"{source}: expected (frames, H, W, 3) RGB data, got shape {tuple(arr.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def _read_decord(path: Path) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def _read_pyav(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def _read_gif(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = [np.asarray(f.convert("RGB"), dtype=np.uint8) for f in ImageSequence.Iterator(im)]
    return np.stack(frames)


def read_video(path: str | Path, max_frames: int | None = None) -> torch.Tensor:
    """Decode a video file, gif or frame folder to ``(F, 3, H, W)`` float in [-1, 1] (all frames, or the first
    ``max_frames``). Raises FileNotFoundError / ValueError naming the file on missing or unreadable input."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video not found: {p}")
    if p.is_dir():
        files = image_files(p)
        if not files:
            raise ValueError(f"{p}: frame folder holds no images ({', '.join(IMAGE_EXTS)})")
        files = files[:max_frames] if max_frames else files
        frames = torch.stack([load_image(f) for f in files])
        shapes = {tuple(f.shape) for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"{p}: frames have different sizes {sorted(shapes)}")
        return frames
    suffix = p.suffix.lower()
    if suffix in GIF_EXTS:
        arr = _read_gif(p)
    elif suffix in VIDEO_EXTS:
        try:
            arr = _read_decord(p)
        except Exception as e_decord:  # decord fails on some containers; PyAV is slower but broader
            try:
                arr = _read_pyav(p)
            except Exception as e_av:
                raise ValueError(f"cannot decode {p}: decord: {e_decord}; PyAV: {e_av}") from e_av
    else:
        raise ValueError(f"{p}: unsupported video format '{suffix}' (use {VIDEO_EXTS + GIF_EXTS} or a frame folder)")
    if max_frames:
        arr = arr[:max_frames]
    return _from_uint8(arr, p)


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Image file -> ``(3, H, W)`` float in [-1, 1]; ``size=(H, W)`` resizes (bicubic, center crop) like sampling."""
    return load_image(path, size)


def is_video_path(p: Path) -> bool:
    """A video file, a gif, or a folder that directly holds frame images."""
    if p.is_file():
        return p.suffix.lower() in VIDEO_EXTS + GIF_EXTS
    return p.is_dir() and bool(image_files(p))


def find_videos(folder: str | Path) -> dict[str, Path]:
    """``{stem: path}`` for the videos directly inside ``folder`` (files and frame folders), or for ``folder`` itself
    when it is one video file. When several files share a stem (``a.mp4`` and ``a.gif`` from the sampler), the first
    of mp4 > other video > gif > frame folder wins."""
    root = Path(folder)
    if root.is_file() and is_video_path(root):
        return {root.stem: root}
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {root}" if not root.exists() else
                                f"{root} is neither a video ({', '.join(VIDEO_EXTS + GIF_EXTS)}) nor a folder of them")
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTS + GIF_EXTS)}
    found: dict[str, Path] = {}
    for p in sorted(root.iterdir(), key=natural_key):
        if not is_video_path(p):
            continue
        key = p.stem if p.is_file() else p.name
        old = found.get(key)
        r_new = rank.get(p.suffix.lower(), len(rank)) if p.is_file() else len(rank) + 1
        r_old = None if old is None else (rank.get(old.suffix.lower(), len(rank)) if old.is_file() else len(rank) + 1)
        if old is None or r_new < r_old:
            found[key] = p
    return found


def find_image(folder: str | Path, stem: str) -> Path | None:
    """The image ``<folder>/<stem>.<ext>`` for any of IMAGE_EXTS, or None."""
    for ext in IMAGE_EXTS:
        for cand in (Path(folder) / f"{stem}{ext}", Path(folder) / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None
