"""Merge LoRA files into a UNet with diffusers module names (reference/checkpoints.md §4.5, §6).

Formats: kohya ``lora_unet_<path>.lora_down/lora_up/alpha`` (SD1.x diffusers paths and SDXL SGM paths, looked
up by flattening our own module names the same way), PEFT/diffusers ``[unet.]<path>.lora_A/lora_B``
(``lora_alpha`` from ``.alpha`` keys or the ``lora_adapter_metadata`` safetensors header), old diffusers
``<path>.processor.to_q_lora.down/up`` and AnimateDiff MotionLoRA (same keys on original motion paths).
Merge, in fp32: ``W += scale * (alpha / r) * up @ down`` (Linear, 1x1 conv; k x k conv: sum over r of
``up[o, r] * down[r, i, kh, kw]``); old diffusers and MotionLoRA use factor 1 (no alpha, §4.5).
Text-encoder LoRA (``lora_te*``, ``text_encoder*.``) is not for the UNet: :func:`merge_lora` counts and skips it,
:func:`split_text_encoder_lora` hands it out.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from .animatediff import motion_lora_target
from .common import KeyMapError, read_checkpoint, require_format
from .ldm import diffusers_to_ldm_names, layout_from_diffusers

LORA_FORMATS = ("lora_kohya", "lora_peft", "lora_diffusers_old", "motion_lora")
TEXT_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "text_encoder.", "text_encoder_2.")
KOHYA = re.compile(r"^lora_unet_(\w+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
PEFT = re.compile(r"^(?:unet\.|base_model\.model\.)?(.+)\.(lora_A\.weight|lora_B\.weight|alpha)$")
OLD = re.compile(r"^(?:unet\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_MOTION_INV = (("norm1.", "norms.0."), ("norm2.", "norms.1."), ("norm3.", "ff_norm."),
               ("attn1.", "attention_blocks.0."), ("attn2.", "attention_blocks.1."))


@dataclass
class LoraLayer:
    down: torch.Tensor           # (r, in) | (r, in, kh, kw)
    up: torch.Tensor             # (out, r) | (out, r, 1, 1)
    factor: float = 1.0          # alpha / r, or 1 where the format has no alpha


def split_text_encoder_lora(sd: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """``(unet_part, text_part)``: text-encoder LoRA keys (``lora_te*``, ``text_encoder*.``) go to ``text_part``
    with their names unchanged."""
    text = {k: v for k, v in sd.items() if k.startswith(TEXT_PREFIXES)}
    return {k: v for k, v in sd.items() if k not in text}, text


def _peft_alpha(meta: Mapping[str, str], path: str) -> Optional[float]:
    """``lora_alpha`` for ``path`` from diffusers' ``lora_adapter_metadata`` (PEFT LoraConfig, keys optionally
    prefixed ``unet.``), honouring ``alpha_pattern`` as PEFT matches it (``(.*\\.)?<pattern>$``)."""
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return None
    cfg = json.loads(raw)
    cfg = {k.removeprefix("unet."): v for k, v in cfg.items() if not k.startswith("text_encoder")}
    for pattern, alpha in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return float(alpha)
    return float(cfg["lora_alpha"]) if "lora_alpha" in cfg else None


def parse_lora(sd: Mapping[str, torch.Tensor], fmt: str, metadata: Optional[Mapping[str, str]] = None,
               source: object = None) -> dict[str, LoraLayer]:
    """UNet LoRA tensors (text part already removed) -> ``{target: LoraLayer}``. Targets are kohya names
    without ``lora_unet_`` for ``lora_kohya``, else diffusers module paths."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    bad = []
    for key, val in sd.items():
        if fmt == "lora_kohya" and (m := KOHYA.match(key)):
            parts.setdefault(m.group(1), {})[{"lora_down.weight": "down", "lora_up.weight": "up"}.get(
                m.group(2), "alpha")] = val
        elif fmt == "lora_peft" and (m := PEFT.match(key)):
            parts.setdefault(m.group(1), {})[{"lora_A.weight": "down", "lora_B.weight": "up"}.get(
                m.group(2), "alpha")] = val
        elif fmt == "motion_lora" and (hit := motion_lora_target(key)):
            parts.setdefault(hit[0], {})[hit[1]] = val
        elif fmt == "lora_diffusers_old" and (m := OLD.match(key)):
            proj = "to_out.0" if m.group(2) == "to_out" else m.group(2)
            parts.setdefault(f"{m.group(1)}.{proj}", {})[m.group(3)] = val
        else:
            bad.append(key)
    if bad:
        raise KeyMapError("LoRA keys of an unknown kind (hada_/lokr_/dora_scale and mixed formats are not "
                          "covered)", fmt=fmt, source=source, unexpected=sorted(bad))
    if half := sorted(t for t, p in parts.items() if "down" not in p or "up" not in p):
        raise KeyMapError("LoRA layers without both down/A and up/B", fmt=fmt, source=source, missing=half)
    layers = {}
    for target, p in parts.items():
        rank = p["down"].shape[0]
        if fmt == "lora_kohya":
            alpha = float(p["alpha"]) if "alpha" in p else rank
        elif fmt == "lora_peft":
            alpha = float(p["alpha"]) if "alpha" in p else _peft_alpha(metadata or {}, target)
            alpha = rank if alpha is None else alpha      # no alpha information: diffusers uses scale 1
        else:
            alpha = rank
        layers[target] = LoraLayer(p["down"], p["up"], alpha / rank)
    return layers


def _targets(unet: nn.Module, fmt: str) -> dict[str, tuple[str, nn.Module]]:
    """Lookup name -> (module path, module) for every Linear/Conv2d of ``unet``."""
    mods = {n: m for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    if fmt != "lora_kohya":
        return {n: (n, m) for n, m in mods.items()}
    table: dict[str, tuple[str, nn.Module]] = {}
    sgm = diffusers_to_ldm_names(mods, layout_from_diffusers(unet.state_dict().keys()))
    for n, m in mods.items():
        names = {n, sgm.get(n, n)}
        if ".motion_modules." in n:               # original AnimateDiff path of a motion module
            head, _, rest = n.partition(".motion_modules.")
            idx, _, tail = rest.partition(".")
            for new, old in _MOTION_INV:
                tail = tail.replace(f"transformer_blocks.0.{new}", f"transformer_blocks.0.{old}")
            names.add(f"{head}.motion_modules.{idx}.temporal_transformer.{tail}")
        for name in names:
            flat = name.replace(".", "_")
            if table.get(flat, (n,))[0] != n:      # two modules flatten alike: refuse to guess
                raise KeyMapError(f"flattened name {flat!r} is ambiguous: {table[flat][0]} and {n}", fmt=fmt)
            table[flat] = (n, m)
    return table


def delta_weight(layer: LoraLayer, weight_shape: torch.Size) -> torch.Tensor:
    """fp32 ``up @ down`` shaped like the target weight (Linear ``(o, i)``, conv ``(o, i, kh, kw)``);
    ``ValueError`` when the factors cannot produce that shape."""
    up, down = layer.up.float(), layer.down.float()
    shape = tuple(weight_shape)
    if (up.ndim == 4 and up.shape[2:] != (1, 1)) or up.ndim not in (2, 4) or up.shape[1] != down.shape[0]:
        raise ValueError(f"up {tuple(up.shape)} does not fit down {tuple(down.shape)}")
    up = up.flatten(1)                                                 # (o, r)
    if len(shape) == 4 and shape[2:] != (1, 1):
        if down.ndim != 4:
            raise ValueError(f"down {tuple(down.shape)} is not a conv kernel for weight {shape}")
        dw = torch.einsum("or,rihw->oihw", up, down)
    else:
        if down.ndim == 4 and down.shape[2:] != (1, 1):
            raise ValueError(f"down kernel {tuple(down.shape)} on a 1x1/linear weight {shape}")
        dw = up @ down.flatten(1)                                      # (o, i)
        if dw.shape == (shape[0], int(torch.Size(shape[1:]).numel())):
            dw = dw.reshape(shape)
    if tuple(dw.shape) != shape:
        raise ValueError(f"delta {tuple(dw.shape)} vs weight {shape}")
    return dw


@torch.no_grad()
def merge_lora(unet: nn.Module, path_or_state_dict, scale: float = 1.0, *, verbose: bool = True) -> int:
    """Merge a LoRA file (path) or state dict into ``unet`` in place; return the number of merged layers.

    Raises :class:`KeyMapError` when a UNet LoRA layer matches no module or has the wrong shape.
    Text-encoder LoRA tensors are skipped and counted (see :func:`split_text_encoder_lora`).
    """
    if isinstance(path_or_state_dict, (str, Path)):
        raw = read_checkpoint(path_or_state_dict)
        sd, meta, source = raw.tensors, raw.metadata, raw.path
    else:
        sd, meta, source = dict(path_or_state_dict), {}, "<state dict>"
    unet_sd, text_sd = split_text_encoder_lora(sd)
    fmt = require_format(unet_sd or sd, LORA_FORMATS, source, "LoRA")   # the UNet part decides
    layers = parse_lora(unet_sd, fmt, meta, source)
    table = _targets(unet, fmt)
    if unknown := sorted(t for t in layers if t not in table):
        raise KeyMapError(f"{len(unknown)} LoRA layer(s) match no module of the UNet", fmt=fmt, source=source,
                          unexpected=unknown)
    deltas, wrong = {}, []
    for target, layer in layers.items():
        path, mod = table[target]
        try:
            deltas[target] = delta_weight(layer, mod.weight.shape)
        except ValueError as e:
            wrong.append(f"{target} -> {path}: {e}")
    if wrong:
        raise KeyMapError("LoRA shapes do not fit their modules (nothing merged)", fmt=fmt, source=source,
                          shapes=wrong)
    for target, dw in deltas.items():
        mod = table[target][1]
        mod.weight.copy_((mod.weight.float() + scale * layers[target].factor * dw).to(mod.weight.dtype))
    if verbose:
        print(f"[i2v.checkpoints] merged {len(layers)} LoRA layers ({fmt}, scale {scale}) from {source}"
              + (f"; skipped {len(text_sd)} text-encoder LoRA tensors (see split_text_encoder_lora)"
                 if text_sd else ""))
    return len(layers)

