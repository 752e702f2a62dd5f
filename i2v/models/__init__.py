"""Models: the self-written video UNet (spatial SD1.5/SDXL + AnimateDiff motion), adapters and encoders."""
from __future__ import annotations

from typing import Any

__all__ = ["VideoUNet", "build_video_unet"]   # loading released weights: i2v.checkpoints.loader.load_video_unet


def __getattr__(name: str) -> Any:  # lazy, so that importing one submodule does not import them all
    if name in ("VideoUNet", "build_video_unet"):
        from . import unet

        return getattr(unet, name)
    raise AttributeError(name)
