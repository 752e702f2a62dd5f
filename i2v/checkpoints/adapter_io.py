"""Adapter-only checkpoints: exactly the I2V-Adapter tensors (official names ``<block>.attn1.to_q_ff.weight``,
``…attn1.to_out_ff.{weight,bias}``) in one ``.safetensors`` file, plus the resolved run config (JSON) and the
backbone name in the safetensors metadata. Written atomically (temp file + rename); never overwrites unless asked.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from i2v.models.adapters import ADAPTER_SUFFIXES, attach_i2v_adapter, i2v_adapter_layers, i2v_adapter_parameters

FORMAT = "i2v-adapter"
FORMAT_VERSION = "1"


def _is_adapter_key(key: str) -> bool:
    return ".attn1." in key and key.endswith(ADAPTER_SUFFIXES) and "motion_modules" not in key


def adapter_state_dict(unet_or_tensors: Union[nn.Module, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The adapter tensors only (contiguous CPU copies), from a UNet with the adapter attached or a state dict."""
    if isinstance(unet_or_tensors, nn.Module):
        tensors = dict(i2v_adapter_parameters(unet_or_tensors))
    else:
        tensors = {k: v for k, v in unet_or_tensors.items() if _is_adapter_key(k)}
    if not tensors or len(tensors) % 3:
        raise ValueError(f"expected 3 I2V-Adapter tensors per attn1 layer, found {len(tensors)}")
    return {k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}


def save_adapter(path: Union[str, Path], unet_or_tensors: Union[nn.Module, Mapping[str, torch.Tensor]],
                 backbone: str, config: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> Path:
    """Write the adapter tensors of ``unet_or_tensors`` to ``path`` (``.safetensors``).

    Metadata: ``format``, ``format_version``, ``backbone``, ``num_layers`` and ``config`` (JSON of the resolved
    config, e.g. ``OmegaConf.to_container(cfg, resolve=True)``). Raises FileExistsError if ``path`` exists and
    ``overwrite`` is False."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"adapter checkpoints are .safetensors files, got {path}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    tensors = adapter_state_dict(unet_or_tensors)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": str(backbone),
            "num_layers": str(len(tensors) // 3), "config": json.dumps(dict(config or {}), sort_keys=True, default=str)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_adapter(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(tensors, info)`` with ``info = {"backbone", "num_layers", "config" (dict), "format_version"}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I2V-Adapter checkpoint not found: {path} (written by training as *.safetensors)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an I2V-Adapter checkpoint (metadata format={meta.get('format')!r})")
    bad = [k for k in tensors if not _is_adapter_key(k)]
    if bad:
        raise KeyError(f"{path}: non-adapter tensors {bad[:5]}")
    info = {"backbone": meta.get("backbone"), "num_layers": int(meta.get("num_layers", len(tensors) // 3)),
            "format_version": meta.get("format_version"), "config": json.loads(meta.get("config", "{}"))}
    return tensors, info


def load_adapter(unet: nn.Module, path: Union[str, Path], backbone: str) -> dict[str, Any]:
    """Load an adapter checkpoint into ``unet`` (attaching the adapter first if needed); returns the info dict.

    Raises ValueError naming both backbones if the file was trained on another backbone, KeyError listing
    missing/unexpected keys, ValueError on shape mismatch."""
    tensors, info = read_adapter(path)
    if info["backbone"] != backbone:
        raise ValueError(f"{path} holds an I2V-Adapter for backbone {info['backbone']!r}, "
                         f"but the model is backbone {backbone!r}")
    if not i2v_adapter_layers(unet):
        attach_i2v_adapter(unet)
    params = i2v_adapter_parameters(unet)
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise KeyError(f"{path}: {len(tensors)} tensors in file, model needs {len(params)}; "
                       f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    with torch.no_grad():
        for k, p in params.items():
            if tensors[k].shape != p.shape:
                raise ValueError(f"{path}: {k} has shape {tuple(tensors[k].shape)}, model needs {tuple(p.shape)}")
            p.copy_(tensors[k].to(device=p.device, dtype=p.dtype))
    return info
