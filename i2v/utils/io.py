"""Atomic, non-clobbering writers for videos (mp4, gif), frames and JSON.

Everything is written to a temporary name beside the target and renamed into place, so an interrupted run never
leaves a half-written file under the final name; an existing target is an error unless ``overwrite=True``. The
final file gets the mode a plain ``open()`` would give it (0666 minus the umask), not the temp file's 0600.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)


def umask_mode() -> int:
    """0o666 minus the process umask: the mode ``open(path, "w")`` creates files with."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``. The temp file keeps the suffix (writers use it)."""
    path = Path(path)
    _check_target(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) float in [-1, 1] -> (F, H, W, 3) uint8."""
    x = ((frames.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def save_mp4(frames: torch.Tensor, path, fps: int = 8, overwrite: bool = False) -> Path:
    """H.264 mp4 (yuv420p; odd sizes are padded by one pixel by the encoder's macro-block rule)."""
    import imageio.v2 as imageio

    arr = to_uint8(frames)

    def write(tmp: Path) -> None:
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8,
                                macro_block_size=1, ffmpeg_log_level="error",
                                output_params=["-pix_fmt", "yuv420p"]) as w:
            for f in arr:
                w.append_data(f)

    return atomic_write(path, write, overwrite)


def save_gif(frames: torch.Tensor, path, fps: int = 8, overwrite: bool = False) -> Path:
    from PIL import Image

    imgs = [Image.fromarray(f) for f in to_uint8(frames)]

    def write(tmp: Path) -> None:
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)

    return atomic_write(path, write, overwrite)


def save_frames(frames: torch.Tensor, folder, overwrite: bool = False) -> Path:
    from PIL import Image

    folder = Path(folder)
    for i, f in enumerate(to_uint8(frames)):
        atomic_write(folder / f"{i:03d}.png", lambda tmp, f=f: Image.fromarray(f).save(tmp, format="PNG"), overwrite)
    return folder


def save_strip(frames: torch.Tensor, path, overwrite: bool = False) -> Path:
    """Lossless PNG of a clip's frames side by side: ``(F, 3, H, W)`` in [-1, 1] -> an ``H x F·W`` image."""
    from PIL import Image

    arr = np.concatenate(list(to_uint8(frames)), axis=1)
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"), overwrite)


def read_strip(path, num_frames: int) -> torch.Tensor:
    """Inverse of :func:`save_strip`: ``(F, 3, H, W)`` in [-1, 1] (exact for frames written by it)."""
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
    if arr.shape[1] % num_frames:
        raise ValueError(f"{path}: width {arr.shape[1]} is not a multiple of {num_frames} frames")
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0       # (3, H, F·W)
    return torch.stack(x.chunk(num_frames, dim=2))


def save_contact_sheet(rows: list[tuple[str, torch.Tensor]], path, scale: int = 4, label_width: int = 150,
                       overwrite: bool = False) -> Path:
    """One PNG, one clip per row: a text label, then its frames ``(F, 3, H, W)`` (frame 1 = the input image first),
    each upscaled ``scale``x nearest-neighbour so that small frames stay visible; a 2-px gap between frames."""
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("save_contact_sheet needs at least one row")
    num_frames = max(f.shape[0] for _, f in rows)
    h, w = rows[0][1].shape[-2:]
    gap, fh, fw = 2, h * scale, w * scale
    sheet = Image.new("RGB", (label_width + num_frames * (fw + gap), len(rows) * (fh + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames) in enumerate(rows):
        y = r * (fh + gap)
        for line, text in enumerate(str(label).split("\n")):
            draw.text((4, y + 4 + 12 * line), text, fill=(0, 0, 0))
        for i, f in enumerate(to_uint8(frames)):
            img = Image.fromarray(f).resize((fw, fh), Image.NEAREST)
            sheet.paste(img, (label_width + i * (fw + gap), y))
    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"), overwrite)


def save_json(obj: Any, path, overwrite: bool = False, allow_nan: bool = True) -> Path:
    """``allow_nan=False``: NaN/Infinity (not JSON) raise ValueError before anything is written."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str, allow_nan=allow_nan)
    return atomic_write(path, lambda tmp: tmp.write_text(text), overwrite)


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")   # what a folder of images is read for


def natural_key(path: Path) -> list:
    """Sort key by file name with digit runs as numbers: frame2.png before frame10.png."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", Path(path).name)]


def image_files(folder) -> list[Path]:
    """The image files (:data:`IMAGE_EXTS`) of ``folder``, in natural name order: a folder of frames, of ControlNet
    control images, or of input images for ``sample.py image=<folder>``."""
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()),
                  key=natural_key)


RESIZE_MODES = ("crop", "fit")


def image_size(path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, after PIL's integrity check (no pixels decoded).
    Raises FileNotFoundError, or ValueError ``cannot read image <path>: ...`` for a file PIL cannot read."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        with Image.open(p) as img:
            img.verify()
        with Image.open(p) as img:     # verify() leaves the image unusable: reopen for the size
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {p}: {e}") from e


def load_image(path, size: tuple[int, int] | None = None, resize: str = "crop",
               multiple: int = 64) -> torch.Tensor:
    """Read an image file as (3, H, W) float in [-1, 1]; non-RGB modes are converted (with a note).

    ``size = (height, width)`` and ``resize``:

    - ``"crop"`` (default): bicubic resize to cover ``size``, then centre crop to exactly ``size`` (a non-square
      image loses its edges);
    - ``"fit"``: the official I2V-Adapter pre-processing (``imread_resize``/``resize_image``): scale the short
      side to ``min(size)``, round each side to the nearest multiple of ``multiple`` (64 there), no crop; the
      whole image is kept and the output size follows its aspect ratio (a 3:2 image at 512 becomes 512x768).
      Resampling is bicubic here (the official code uses OpenCV's bilinear ``cv2.resize``).
    """
    from PIL import Image, UnidentifiedImageError

    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {p}: {e}") from e
    orientation = img.getexif().get(0x0112, 1)   # EXIF Orientation: phones store the sensor's pixels plus this tag
    if orientation not in (1, None):
        from PIL import ImageOps

        print(f"note: {p.name} has EXIF orientation {orientation}; turned upright as image viewers show it")
        img = ImageOps.exif_transpose(img)
    if img.mode != "RGB" or has_alpha(img):
        white = "; its transparent pixels laid on white" if has_alpha(img) else ""
        print(f"note: {p.name} has mode {img.mode}; converting to RGB{white}")
        img = to_rgb8(img)
    if size is not None and resize == "fit":
        h, w = fit_size(img.height, img.width, min(size), multiple)
        img = img if img.size == (w, h) else img.resize((w, h), Image.BICUBIC)
    elif size is not None and img.size != (size[1], size[0]):
        img = _resize_center_crop(img, size)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return x / 127.5 - 1.0


def has_alpha(img) -> bool:
    """Whether a PIL image has transparency (an alpha band, or a palette/greyscale image's transparent colour)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_rgb8(img):
    """An RGB 8-bit PIL image. 16/32-bit integer and float greyscale (``I;16*``, ``I``, ``F``) are scaled to 8
    bits first (``convert("RGB")`` would clip them: a 16-bit PNG would come out nearly all white). Transparent
    pixels are laid on white (``convert("RGB")`` would keep whatever colour they store, often black)."""
    from PIL import Image

    if has_alpha(img):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0   # float images are [0, 1] or [0, 255]
        else:
            scale = 255.0 / 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        img = Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def fit_size(height: int, width: int, short_side: int, multiple: int = 64) -> tuple[int, int]:
    """``(H, W)`` of the official ``resize_image``: scale so the short side is ``short_side``, then round each side
    to the nearest multiple of ``multiple`` (NumPy rounding, halves to even; at least one ``multiple``)."""
    k = float(short_side) / min(height, width)
    return tuple(max(multiple, int(np.round(s * k / multiple)) * multiple) for s in (height, width))


def _resize_center_crop(img, size: tuple[int, int]):
    from PIL import Image

    h, w = size
    s = max(h / img.height, w / img.width)
    img = img.resize((max(w, round(img.width * s)), max(h, round(img.height * s))), Image.BICUBIC)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))
