"""Adapter-only checkpoints: exactly the I2V-Adapter tensors (official names ``<block>.attn1.to_q_ff.weight``,
``…attn1.to_out_ff.{weight,bias}``) in one ``.safetensors`` file, plus the resolved run config (JSON) and the
backbone name in the safetensors metadata. Written atomically (temp file + rename); never overwrites unless asked.

The official release (KwaiVGI/I2V-Adapter ``i2v_module.pth``, reference §7) holds the same tensors under the same
names in a torch pickle, possibly wrapped in ``["state_dict"]`` and with a DDP ``module.`` prefix, fp16 or fp32.
:func:`read_adapter` reads it (``torch.load(weights_only=True)``), and plain safetensors with those keys, inferring
the backbone from the layer names (:func:`infer_backbone`); :func:`save_official_adapter` writes it back for the
official ``load_weights(i2v_module_path=...)``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from safetensors.torch import save_file
from torch import nn

from i2v.utils.io import atomic_write
from i2v.models.adapters import ADAPTER_SUFFIXES, attach_i2v_adapter, i2v_adapter_layers, i2v_adapter_parameters

from .common import PICKLE_SUFFIXES, KeyMapError, read_checkpoint

FORMAT = "i2v-adapter"
FORMAT_VERSION = "1"
OFFICIAL = "official"
# attn1 layer names (``<block>.attentions.j.transformer_blocks.k``) of each release backbone; 16 and 70 layers
_SD15_BLOCKS = ([f"down_blocks.{i}.attentions.{j}" for i in range(3) for j in range(2)] + ["mid_block.attentions.0"]
                + [f"up_blocks.{i}.attentions.{j}" for i in (1, 2, 3) for j in range(3)])
_SDXL_BLOCKS = ([(f"down_blocks.{i}.attentions.{j}", d) for i, d in ((1, 2), (2, 10)) for j in range(2)]
                + [("mid_block.attentions.0", 10)]
                + [(f"up_blocks.{i}.attentions.{j}", d) for i, d in ((0, 10), (1, 2)) for j in range(3)])
RELEASE_LAYERS = {"sd15": frozenset(f"{b}.transformer_blocks.0" for b in _SD15_BLOCKS),
                  "sdxl": frozenset(f"{b}.transformer_blocks.{k}" for b, d in _SDXL_BLOCKS for k in range(d))}


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
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), overwrite=True)


def infer_backbone(tensors: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``"sd15"`` / ``"sdxl"`` when the attn1 layer names are exactly that backbone's 16 / 70 transformer blocks
    (widths are checked against the model on load), else ``None``."""
    layers = {k.rsplit(".attn1.", 1)[0] for k in tensors}
    return next((name for name, want in RELEASE_LAYERS.items() if layers == want), None)


def _official_tensors(tensors: dict[str, torch.Tensor], source: object) -> dict[str, torch.Tensor]:
    """Strip a DDP ``module.`` prefix, then require exactly the three adapter tensors per attn1 layer."""
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    unexpected = sorted(k for k in tensors if not _is_adapter_key(k))
    layers = {k.rsplit(".attn1.", 1)[0] for k in tensors if k not in unexpected}
    missing = sorted(f"{layer}.attn1.{s}" for layer in layers for s in ADAPTER_SUFFIXES
                     if f"{layer}.attn1.{s}" not in tensors)
    if unexpected or missing or not tensors:
        raise KeyMapError(f"not an I2V-Adapter checkpoint in the official layout ({len(tensors)} tensors; "
                          f"expected <block>.attn1.{{{', '.join(ADAPTER_SUFFIXES)}}} per layer)",
                          fmt="i2v_adapter official", source=source, missing=missing, unexpected=unexpected)
    return tensors


def check_adapter_backbone(path: Union[str, Path], info: dict[str, Any], backbone: str) -> None:
    """ValueError naming both backbones, and the override that fixes it, when the file (``info`` from
    :func:`read_adapter`) was trained on another backbone than ``backbone``."""
    trained = info.get("backbone")
    if trained is not None and trained != backbone:
        fix = "experiment=toy" if trained == "toy" else f"backbone={trained}"
        raise ValueError(f"{path} holds an I2V-Adapter for backbone {trained!r}, but the model is backbone "
                         f"{backbone!r} (add {fix} to sample with it)")


def read_adapter(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(tensors, info)`` with ``info = {"backbone", "num_layers", "config" (dict), "format_version",
    "format"}``. Our ``.safetensors`` (metadata ``format=i2v-adapter``) or the official layout: a
    ``.pth/.pt/.ckpt/.bin`` pickle or a plain ``.safetensors`` (``format="official"``, ``backbone`` inferred,
    ``None`` when the layer names are not a release backbone's). Tensors keep the file's dtype."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I2V-Adapter checkpoint not found: {path} (written by training as *.safetensors, "
                                f"or the official release's i2v_module.pth)")
    if path.suffix == ".safetensors" or path.suffix in PICKLE_SUFFIXES:
        raw = read_checkpoint(path)   # sniffs the content; errors name the file
        meta, tensors = dict(raw.metadata or {}), raw.tensors
    else:
        raise ValueError(f"{path}: an I2V-Adapter checkpoint is .safetensors or one of {PICKLE_SUFFIXES}")
    if meta.get("format") != FORMAT:
        tensors = _official_tensors(tensors, path)
        return tensors, {"backbone": infer_backbone(tensors), "num_layers": len(tensors) // 3,
                         "format_version": None, "config": {}, "format": OFFICIAL}
    bad = [k for k in tensors if not _is_adapter_key(k)]
    if bad:
        raise KeyError(f"{path}: non-adapter tensors {bad[:5]}")
    info = {"backbone": meta.get("backbone"), "num_layers": int(meta.get("num_layers", len(tensors) // 3)),
            "format_version": meta.get("format_version"), "config": json.loads(meta.get("config", "{}")),
            "format": FORMAT}
    return tensors, info


def save_official_adapter(path: Union[str, Path], tensors: Mapping[str, torch.Tensor], overwrite: bool = False,
                          dtype: Optional[torch.dtype] = None) -> Path:
    """Write adapter tensors as the official ``i2v_module.pth``: a plain ``torch.save`` dict of the official names
    (what ``load_weights(i2v_module_path=...)`` of KwaiVGI/I2V-Adapter loads non-strictly). Atomic; ``dtype``
    casts (e.g. ``torch.float16``), default keeps each tensor's dtype."""
    path = Path(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"the official adapter file is a torch pickle ({'/'.join(PICKLE_SUFFIXES)}), got {path}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    out = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in adapter_state_dict(tensors).items()}
    return atomic_write(path, lambda tmp: torch.save(out, tmp), overwrite=True)



def _trained_adapter_config(info: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``adapter`` section of the config an adapter file was written with (empty for files of other origins)."""
    adapter = (info.get("config") or {}).get("adapter") or {}
    return adapter if isinstance(adapter, Mapping) else {}


def trained_with_noised_kv(info: Mapping[str, Any]) -> bool:
    """Whether the run that wrote an adapter file (``info`` from :func:`read_adapter`) trained it with
    ``adapter.noised_kv=true`` (:mod:`i2v.models.noised_kv`); such an adapter is meant to be sampled that way too."""
    return bool(_trained_adapter_config(info).get("noised_kv", False))


def trained_i2v_min_t(info: Mapping[str, Any]) -> int:
    """``adapter.i2v_min_t`` of the run that wrote an adapter file (0 when it did not set one, or for files of other
    origins): that adapter's branch was trained at t >= it only and is meant to be sampled so."""
    return int(_trained_adapter_config(info).get("i2v_min_t") or 0)


def load_adapter(unet: nn.Module, path: Union[str, Path], backbone: str,
                 read: Optional[tuple[dict[str, torch.Tensor], dict[str, Any]]] = None) -> dict[str, Any]:
    """Load an adapter checkpoint into ``unet`` (attaching the adapter first if needed); returns the info dict.
    ``read``: what :func:`read_adapter` already returned for ``path`` (the file is then not read again).

    Raises ValueError naming both backbones if the file was trained on another backbone (an official-layout file
    whose layer names are no release backbone's is checked by keys and shapes only), KeyError listing
    missing/unexpected keys, ValueError on shape mismatch."""
    tensors, info = read if read is not None else read_adapter(path)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: {len(bad)} adapter tensor(s) hold NaN/Inf (a damaged file or a diverged run), "
                         f"e.g. {bad[:3]}; refusing to load it")
    check_adapter_backbone(path, info, backbone)
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


def export_adapter(ckpt: Union[str, Path], to: str, out: Union[str, Path], *, backbone: Optional[str] = None,
                   dtype: Optional[str] = None, overwrite: bool = False) -> tuple[Path, dict[str, Any]]:
    """Convert between layouts: ``to="official"`` writes ``i2v_module.pth`` for the official code, ``to="ours"``
    writes our ``.safetensors`` (``backbone`` = the file's, or inferred from an official file, or given).
    ``dtype``: ``None`` keeps the tensors' dtype, else ``"float16"`` / ``"float32"`` / ``"bfloat16"``."""
    tensors, info = read_adapter(ckpt)
    cast = getattr(torch, str(dtype), None) if dtype else None
    if cast is not None and not isinstance(cast, torch.dtype):
        raise ValueError(f"dtype must be float16, float32 or bfloat16, got {dtype!r}")
    if to == OFFICIAL and trained_with_noised_kv(info):
        raise ValueError(f"{ckpt} was trained with adapter.noised_kv=true, a forward the official code does not "
                         f"have: it would sample wrongly there (keep it in our .safetensors layout)")
    if to == OFFICIAL and trained_i2v_min_t(info):
        raise ValueError(f"{ckpt} was trained with adapter.i2v_min_t={trained_i2v_min_t(info)}: its branch never saw "
                         f"the timesteps below, where the official code would run it at every step (keep it in our "
                         f".safetensors layout)")
    if to == OFFICIAL:
        return save_official_adapter(out, tensors, overwrite=overwrite, dtype=cast), info
    if to != "ours":
        raise ValueError(f"to must be 'official' or 'ours', got {to!r}")
    name = backbone or info["backbone"]
    if name is None:
        raise ValueError(f"{ckpt}: the layer names are not those of sd15 or sdxl; give backbone=<name>")
    if backbone and info["backbone"] and backbone != info["backbone"]:
        raise ValueError(f"{ckpt} holds an adapter for {info['backbone']!r}, not {backbone!r}")
    if cast is not None:
        tensors = {k: v.to(cast) for k, v in tensors.items()}
    return save_adapter(out, tensors, backbone=name, config=info["config"], overwrite=overwrite), info
