"""Merge LoRA files into a UNet with diffusers module names (reference/checkpoints.md §4.5, §6).

Formats: kohya ``lora_unet_<path>.lora_down/lora_up/alpha`` (SD1.x diffusers paths and SDXL SGM paths, looked
up by flattening our own module names the same way), PEFT/diffusers ``[unet.]<path>.lora_A/lora_B``
(``lora_alpha`` from ``.alpha`` keys or the ``lora_adapter_metadata`` safetensors header), old diffusers
``<path>.processor.to_q_lora.down/up`` and AnimateDiff MotionLoRA (same keys on original motion paths).
Merge, in fp32: ``W += scale * (alpha / r) * up @ down`` (Linear, 1x1 conv; k x k conv: sum over r of
``up[o, r] * down[r, i, kh, kw]``); old diffusers and MotionLoRA use factor 1 (no alpha, §4.5).
Text-encoder LoRA (kohya ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` on HF CLIP paths, PEFT ``text_encoder[_2].``,
old diffusers ``…lora_linear_layer.down/up``) is merged into the CLIP text model(s) by :func:`merge_text_lora` when
:func:`merge_lora` is given the text encoder, and otherwise skipped and counted.
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
KOHYA_SUFFIX = r"_(\w+)\.(lora_down\.weight|lora_up\.weight|alpha)$"
# text-encoder LoRA prefix -> role (SD1 ``lora_te_`` is the only CLIP-L; SDXL ``lora_te1_``/``lora_te2_``)
TEXT_ROLE_OF = {"lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2",
                "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}
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


def _peft_alpha(meta: Mapping[str, str], path: str, component: str = "unet") -> Optional[float]:
    """``lora_alpha`` for ``path`` from diffusers' ``lora_adapter_metadata`` (PEFT LoraConfig; keys prefixed by
    component, ``unet.`` / ``text_encoder.`` / ``text_encoder_2.``, or unprefixed for a UNet-only file),
    honouring ``alpha_pattern`` as PEFT matches it (``(.*\\.)?<pattern>$``)."""
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return None
    cfg = json.loads(raw)
    if any(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for k in cfg):
        cfg = {k[len(component) + 1:]: v for k, v in cfg.items() if k.startswith(component + ".")}
    elif component != "unet":
        return None
    for pattern, alpha in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return float(alpha)
    return float(cfg["lora_alpha"]) if "lora_alpha" in cfg else None


def parse_lora(sd: Mapping[str, torch.Tensor], fmt: str, metadata: Optional[Mapping[str, str]] = None,
               source: object = None, *, kohya_prefix: str = "lora_unet", component: str = "unet"
               ) -> dict[str, LoraLayer]:
    """LoRA tensors of one component -> ``{target: LoraLayer}``. Targets are kohya names without
    ``<kohya_prefix>_`` for ``lora_kohya``, else module paths (diffusers UNet / HF CLIP names)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    bad = []
    kohya = re.compile("^" + re.escape(kohya_prefix) + KOHYA_SUFFIX)
    for key, val in sd.items():
        if fmt == "lora_kohya" and (m := kohya.match(key)):
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
            alpha = float(p["alpha"]) if "alpha" in p else _peft_alpha(metadata or {}, target, component)
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


def _plan(layers: dict[str, LoraLayer], table: dict[str, tuple[str, nn.Module]], *, fmt: str, source: object,
          what: str) -> list[tuple[nn.Module, LoraLayer]]:
    """``[(module, layer)]`` after checking every name (``table``: name -> (path, module)) and every delta shape
    (on the meta device: no memory); raises :class:`KeyMapError` before anything is changed."""
    if unknown := sorted(t for t in layers if t not in table):
        raise KeyMapError(f"{len(unknown)} LoRA layer(s) match no module of the {what}", fmt=fmt, source=source,
                          unexpected=unknown)
    plan, wrong = [], []
    for target, layer in layers.items():
        path, mod = table[target]
        try:
            delta_weight(LoraLayer(layer.down.to("meta"), layer.up.to("meta")), mod.weight.shape)
            plan.append((mod, layer))
        except ValueError as e:
            wrong.append(f"{target} -> {path}: {e}")
    if wrong:
        raise KeyMapError(f"LoRA shapes do not fit the {what}'s modules (nothing merged)", fmt=fmt, source=source,
                          shapes=wrong)
    return plan


def _apply(plan: list[tuple[nn.Module, LoraLayer]], scale: float) -> None:
    """``W += scale * factor * delta`` in fp32, one layer at a time (one delta in memory)."""
    for mod, layer in plan:
        dw = delta_weight(layer, mod.weight.shape).to(mod.weight.device)
        mod.weight.copy_((mod.weight.float() + scale * layer.factor * dw).to(mod.weight.dtype))


def clip_text_models(text_encoder: Optional[nn.Module]) -> dict[str, nn.Module]:
    """``{"text_encoder": CLIP-L[, "text_encoder_2": bigG]}`` of an SD15/SDXL text encoder (``text_model`` /
    ``text_model_2`` attributes); ``{}`` for anything else (the toy encoder)."""
    out = {}
    for role, attr in (("text_encoder", "text_model"), ("text_encoder_2", "text_model_2")):
        model = getattr(text_encoder, attr, None)
        if model is not None and type(model).__name__.startswith("CLIPText"):
            out[role] = model
    return out


def _text_targets(model: nn.Module, fmt: str) -> dict[str, tuple[str, nn.Module]]:
    """Linear modules of a transformers CLIP text model by canonical HF path (``text_model.encoder...``, whichever
    way this transformers version names its own modules); kohya: flattened with ``_``."""
    wrapped = any(n == "text_model" for n, _ in model.named_children())
    table = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            canon = name if wrapped or name.startswith("text_projection") else f"text_model.{name}"
            table[canon.replace(".", "_") if fmt == "lora_kohya" else canon] = (name, mod)
    return table


def _text_groups(text_sd: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """Text LoRA keys grouped by ``(role, prefix)``; PEFT/old-diffusers keys lose their ``text_encoder[_2].``
    prefix and old ``lora_linear_layer.down/up`` become ``lora_A/lora_B``."""
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, val in text_sd.items():
        prefix = max((p for p in TEXT_ROLE_OF if key.startswith(p)), key=len)
        if prefix.endswith("."):
            key = key[len(prefix):].replace(".lora_linear_layer.down.weight", ".lora_A.weight").replace(
                ".lora_linear_layer.up.weight", ".lora_B.weight")
        groups.setdefault((TEXT_ROLE_OF[prefix], prefix), {})[key] = val
    return groups


def plan_text_lora(text_encoder: nn.Module, text_sd: Mapping[str, torch.Tensor],
                   metadata: Optional[Mapping[str, str]] = None, source: object = None) -> dict[str, list]:
    """Checked merge plans per role for text-encoder LoRA tensors (as split off by :func:`split_text_encoder_lora`).
    Raises :class:`KeyMapError` for a role the encoder lacks (SDXL ``lora_te2_`` on SD1.5), unknown targets or
    wrong shapes."""
    models = clip_text_models(text_encoder)
    plans: dict[str, list] = {}
    for (role, prefix), sd in _text_groups(text_sd).items():
        if role not in models:
            raise KeyMapError(f"text-encoder LoRA for {role} ({prefix}*) but the text encoder has "
                              f"{list(models) or 'no CLIP model'}", fmt="lora text", source=source,
                              unexpected=sorted(sd)[:5])
        fmt = require_format(sd, ("lora_kohya", "lora_peft"), source, f"{role} LoRA")
        layers = parse_lora(sd, fmt, metadata, source, kohya_prefix=prefix.rstrip("_"), component=role)
        plans.setdefault(role, []).extend(_plan(layers, _text_targets(models[role], fmt), fmt=fmt, source=source,
                                                what=role))
    return plans


@torch.no_grad()
def merge_text_lora(text_encoder: nn.Module, text_sd: Mapping[str, torch.Tensor], scale: float = 1.0,
                    metadata: Optional[Mapping[str, str]] = None, source: object = None) -> dict[str, int]:
    """Merge text-encoder LoRA tensors into the CLIP model(s) of an SD15/SDXL text encoder (all checked before
    any is merged); returns the merged layer count per role."""
    plans = plan_text_lora(text_encoder, text_sd, metadata, source)
    for plan in plans.values():
        _apply(plan, scale)
    return {role: len(plan) for role, plan in plans.items()}


@torch.no_grad()
def merge_lora(unet: nn.Module, path_or_state_dict, scale: float = 1.0, *, text_encoder: Optional[nn.Module] = None,
               verbose: bool = True) -> int:
    """Merge a LoRA file (path) or state dict into ``unet`` in place; return the number of merged UNet layers.

    Raises :class:`KeyMapError` (and merges nothing) when a LoRA layer matches no module or has the wrong shape.
    Text-encoder LoRA tensors are merged into ``text_encoder`` (an SD15/SDXL text encoder, see
    :func:`merge_text_lora`) when it holds CLIP models, else skipped and counted.
    """
    if isinstance(path_or_state_dict, (str, Path)):
        raw = read_checkpoint(path_or_state_dict)
        sd, meta, source = raw.tensors, raw.metadata, raw.path
    else:
        sd, meta, source = dict(path_or_state_dict), {}, "<state dict>"
    unet_sd, text_sd = split_text_encoder_lora(sd)
    unet_plan, fmt = [], "text only"
    if unet_sd or not text_sd:
        fmt = require_format(unet_sd or sd, LORA_FORMATS, source, "LoRA")
        layers = parse_lora(unet_sd, fmt, meta, source)
        unet_plan = _plan(layers, _targets(unet, fmt), fmt=fmt, source=source, what="UNet")
    text_plans = plan_text_lora(text_encoder, text_sd, meta, source) if text_sd and clip_text_models(
        text_encoder) else {}
    for plan in [unet_plan, *text_plans.values()]:
        _apply(plan, scale)
    if text_plans:
        text_note = "; " + ", ".join(f"{len(p)} {role} layers" for role, p in text_plans.items())
    else:
        text_note = (f"; skipped {len(text_sd)} text-encoder LoRA tensors (no CLIP text encoder given)"
                     if text_sd else "")
    if verbose:
        print(f"[i2v.checkpoints] merged {len(unet_plan)} LoRA layers ({fmt}, scale {scale}) from {source}{text_note}")
    return len(unet_plan)
