"""Checkpoint loaders, one file per public format (reference/checkpoints.md): ``ldm.py`` (SD1.5/SDXL single
files), ``diffusers.py`` (model folders), ``animatediff.py`` (motion modules), ``lora.py`` (LoRA merging),
``loader.py`` (:func:`load_video_unet`, the one entry point), ``common.py`` (safe reading, §0 detection, errors)."""
from __future__ import annotations

from typing import Any

__all__ = ["load_video_unet", "read_unet", "merge_lora", "split_text_encoder_lora", "read_checkpoint",
           "detect_format", "CheckpointError", "KeyMapError", "UnknownFormatError"]

_WHERE = {"load_video_unet": "loader", "read_unet": "loader", "merge_lora": "lora",
          "split_text_encoder_lora": "lora", "read_checkpoint": "common", "detect_format": "common",
          "CheckpointError": "common", "KeyMapError": "common", "UnknownFormatError": "common"}


def __getattr__(name: str) -> Any:  # lazy: importing one loader does not import the model code
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(name)
