"""diffusers model folders (reference/checkpoints.md §3): ``config.json`` + weights, read without diffusers.

Accepted: a model folder (``unet/`` of a pipeline, a ``MotionAdapter`` folder), or a pipeline folder with a
``unet/`` subfolder. Weights: ``diffusion_pytorch_model[.fp16].safetensors`` / ``.bin`` or a sharded
``*.index.json``; full precision is preferred over ``fp16`` unless ``variant="fp16"`` is asked for.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .common import CheckpointError, read_checkpoint

WEIGHT_STEM = "diffusion_pytorch_model"
UNET_CLASSES = ("UNet2DConditionModel",)
MOTION_CLASSES = ("MotionAdapter",)


@dataclass
class DiffusersFolder:
    """Config and flat tensors of one diffusers model folder."""

    path: Path
    config: dict
    tensors: dict[str, torch.Tensor]
    weight_files: list[Path]

    @property
    def class_name(self) -> str:
        return self.config.get("_class_name", "?")


def is_diffusers_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "config.json").is_file() or (path / "unet" / "config.json").is_file())


def resolve_model_dir(path: str | Path, subfolder: Optional[str] = "unet") -> Path:
    """The folder holding ``config.json``: ``path`` itself, or ``path/subfolder`` for a pipeline folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder")
    if (path / "config.json").is_file():
        return path
    if subfolder and (path / subfolder / "config.json").is_file():
        return path / subfolder
    hint = f" nor {subfolder}/config.json" if subfolder else ""
    raise CheckpointError(f"{path}: not a diffusers model folder (no config.json{hint})")


def _weight_files(folder: Path, variant: Optional[str]) -> list[Path]:
    suffixes = [f".{variant}"] if variant else ["", ".fp16"]
    for infix in suffixes:
        for ext in (".safetensors", ".bin"):
            single = folder / f"{WEIGHT_STEM}{infix}{ext}"
            if single.is_file():
                return [single]
            index = folder / f"{WEIGHT_STEM}{infix}{ext}.index.json"
            if index.is_file():
                try:
                    shard_map = json.loads(index.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise CheckpointError(f"{index}: not a shard index with a weight_map ({e})") from e
                shards = [folder / name for name in sorted(set(shard_map.values()))]
                if absent := [s.name for s in shards if not s.is_file()]:
                    raise CheckpointError(f"{index}: shard files missing: {absent}")
                return shards
    present = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(f"{folder}: no weights named {WEIGHT_STEM}[{'|'.join(s or '' for s in suffixes)}]"
                          f".safetensors|.bin (or a sharded .index.json); the folder holds {present[:10]}")


def read_diffusers_folder(path: str | Path, *, classes: tuple[str, ...], subfolder: Optional[str] = "unet",
                          variant: Optional[str] = None) -> DiffusersFolder:
    """Read ``config.json`` and all weight tensors of a diffusers model folder whose class is in ``classes``."""
    folder = resolve_model_dir(path, subfolder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / 'config.json'}: invalid JSON ({e})") from e
    cls = config.get("_class_name")
    if cls not in classes:
        raise CheckpointError(f"{folder}: config.json describes {cls!r}, expected one of {list(classes)}")
    files = _weight_files(folder, variant)
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        raw = read_checkpoint(f)
        if dup := sorted(set(raw.tensors) & set(tensors)):
            raise CheckpointError(f"{f}: keys repeated across shards: {dup[:5]}")
        tensors.update(raw.tensors)
    return DiffusersFolder(folder, config, tensors, files)
