"""Original single-file SD1.5 / SDXL checkpoints (LDM / SGM layout, reference/checkpoints.md §1-§2).

One block table (:func:`block_table`) built from the index rules of §1.3 serves both directions: LDM keys ->
diffusers keys for loading, and diffusers module paths -> SGM names for kohya SDXL LoRA (lora.py). The UNet
config is inferred from tensor shapes; the attention head count is not visible in shapes, so it follows the
release rule (SD1.x: 8 heads; linear-projection models SD2/SDXL: head dim 64) unless a hint is given:
``num_heads`` (int or per-level list) or ``head_dim`` (int). Tiny test models need such a hint (and
``norm_num_groups``, ``addition_time_embed_dim`` when not the release values), see :data:`HINT_FIELDS`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from .common import CheckpointError, KeyMapError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.")
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights"})
RESNET_RENAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                  "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
RESNET_RENAMES_INV = {v: k for k, v in RESNET_RENAMES.items()}
HINT_FIELDS = ("num_heads", "head_dim", "norm_num_groups", "norm_eps", "addition_time_embed_dim",
               "sample_size", "upcast_attention")


@dataclass(frozen=True)
class Layout:
    """Block structure shared by LDM and diffusers naming: level count, resnets per level, attention per level."""

    levels: int
    layers_per_block: int
    down_attn: tuple[bool, ...]       # per down level
    text_time: bool = False           # SDXL ``label_emb`` / ``add_embedding``

    @property
    def up_attn(self) -> tuple[bool, ...]:
        return tuple(reversed(self.down_attn))


def _ints(keys, pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in keys if (m := rx.match(k))}


def layout_from_ldm(sd: Mapping[str, torch.Tensor]) -> Layout:
    """Infer the :class:`Layout` from prefix-stripped LDM UNet keys (``input_blocks.*`` ...)."""
    ins = _ints(sd, r"input_blocks\.(\d+)\.")
    ops = sorted(_ints(sd, r"input_blocks\.(\d+)\.0\.op\.weight$"))
    levels = len(ops) + 1
    if not ins or (max(ins) + 1) % levels:
        raise CheckpointError(f"LDM UNet: cannot infer the block layout from input_blocks {sorted(ins)[:20]} "
                              f"with downsamplers at {ops}")
    lpb = (max(ins) + 1) // levels - 1
    want_ops = [(lv + 1) * (lpb + 1) for lv in range(levels - 1)]
    if lpb < 1 or ops != want_ops:
        raise CheckpointError(f"LDM UNet: downsamplers at input_blocks {ops}, expected {want_ops} for "
                              f"{levels} levels x {lpb} res blocks")
    down = tuple(f"input_blocks.{1 + lv * (lpb + 1)}.1.norm.weight" in sd for lv in range(levels))
    up = tuple(f"output_blocks.{u * (lpb + 1)}.1.norm.weight" in sd for u in range(levels))
    if up != tuple(reversed(down)):
        raise CheckpointError(f"LDM UNet: attention at down levels {down} but at up levels {up}; not symmetric")
    return Layout(levels, lpb, down, text_time="label_emb.0.0.weight" in sd)


def layout_from_diffusers(keys) -> Layout:
    """Infer the :class:`Layout` from diffusers UNet key names (works for VideoUNet keys too)."""
    keys = list(keys)
    levels = len(_ints(keys, r"down_blocks\.(\d+)\."))
    lpb = len(_ints(keys, r"down_blocks\.0\.resnets\.(\d+)\."))
    down = tuple(any(k.startswith(f"down_blocks.{lv}.attentions.") for k in keys) for lv in range(levels))
    return Layout(levels, lpb, down, text_time=any(k.startswith("add_embedding.") for k in keys))


def block_table(lay: Layout) -> list[tuple[str, str, str]]:
    """``(ldm_prefix, diffusers_prefix, kind)`` for every block, kind in ``resnet|attn|plain`` (§1.3 index rules)."""
    n = lay.layers_per_block + 1
    t = [("time_embed.0.", "time_embedding.linear_1.", "plain"), ("time_embed.2.", "time_embedding.linear_2.", "plain"),
         ("input_blocks.0.0.", "conv_in.", "plain"), ("out.0.", "conv_norm_out.", "plain"),
         ("out.2.", "conv_out.", "plain"), ("middle_block.0.", "mid_block.resnets.0.", "resnet"),
         ("middle_block.1.", "mid_block.attentions.0.", "attn"), ("middle_block.2.", "mid_block.resnets.1.", "resnet")]
    if lay.text_time:
        t += [("label_emb.0.0.", "add_embedding.linear_1.", "plain"),
              ("label_emb.0.2.", "add_embedding.linear_2.", "plain")]
    for lv in range(lay.levels):
        for j in range(lay.layers_per_block):
            i = 1 + lv * n + j
            t.append((f"input_blocks.{i}.0.", f"down_blocks.{lv}.resnets.{j}.", "resnet"))
            if lay.down_attn[lv]:
                t.append((f"input_blocks.{i}.1.", f"down_blocks.{lv}.attentions.{j}.", "attn"))
        if lv < lay.levels - 1:
            t.append((f"input_blocks.{(lv + 1) * n}.0.op.", f"down_blocks.{lv}.downsamplers.0.conv.", "plain"))
    for u in range(lay.levels):
        attn = lay.up_attn[u]
        for j in range(n):
            i = u * n + j
            t.append((f"output_blocks.{i}.0.", f"up_blocks.{u}.resnets.{j}.", "resnet"))
            if attn:
                t.append((f"output_blocks.{i}.1.", f"up_blocks.{u}.attentions.{j}.", "attn"))
        if u < lay.levels - 1:
            t.append((f"output_blocks.{u * n + n - 1}.{1 + attn}.conv.", f"up_blocks.{u}.upsamplers.0.conv.", "plain"))
    return t


def _lookup(name: str, table: dict[str, tuple[str, str]]) -> Optional[tuple[str, str, str]]:
    parts = name.split(".")
    for depth in (5, 4, 3, 2, 1):
        prefix = ".".join(parts[:depth]) + "."
        if prefix in table:
            target, kind = table[prefix]
            return target, kind, name[len(prefix):]
    return None


def _rename_rest(rest: str, kind: str, renames: Mapping[str, str]) -> Optional[str]:
    if kind == "attn":
        return rest
    if kind == "plain":
        return rest if rest in ("weight", "bias") else None
    head, _, tail = rest.rpartition(".")
    return f"{renames[head]}.{tail}" if head in renames else None


def ldm_to_diffusers(sd: Mapping[str, torch.Tensor], lay: Layout, source: object = None) -> dict[str, torch.Tensor]:
    """Rename prefix-stripped LDM UNet keys to diffusers keys; every key must map (shapes unchanged)."""
    table = {ldm: (diff, kind) for ldm, diff, kind in block_table(lay)}
    out, bad = {}, []
    for key, val in sd.items():
        hit = _lookup(key, table)
        new = _rename_rest(hit[2], hit[1], RESNET_RENAMES) if hit else None
        if new is None:
            bad.append(key)
        else:
            out[hit[0] + new] = val
    if bad:
        raise KeyMapError("keys outside the SD UNet block layout", fmt="ldm", source=source, unexpected=sorted(bad))
    return out


def diffusers_to_ldm_names(names, lay: Layout) -> dict[str, str]:
    """Map diffusers module paths (``down_blocks.1.attentions.0.proj_in``, no ``.weight``) to LDM/SGM paths;
    names without an LDM counterpart (motion modules, unknown paths) are left out of the result."""
    table = {diff: (ldm, kind) for ldm, diff, kind in block_table(lay)}
    out = {}
    for name in names:
        hit = _lookup(name + ".weight", table)
        new = _rename_rest(hit[2], hit[1], RESNET_RENAMES_INV) if hit else None
        if new is not None:
            out[name] = (hit[0] + new)[: -len(".weight")]
    return out


@dataclass
class LdmParts:
    """A single file split by role. ``unet`` holds prefix-stripped LDM keys; nothing is dropped silently."""

    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor] = field(default_factory=dict)     # ``first_stage_model.`` stripped
    text: dict[str, torch.Tensor] = field(default_factory=dict)    # full ``cond_stage_model.*``/``conditioner.*``
    ignored: dict[str, list[str]] = field(default_factory=dict)    # reason -> keys


def split_ldm(sd: Mapping[str, torch.Tensor], *, use_ema: bool = False, source: object = None) -> LdmParts:
    """Split an LDM/SGM single file into UNet / VAE / text-encoder tensors (§1.1, §1.5, §2).

    ``use_ema=True`` takes the UNet from the ``model_ema.*`` copy (an error when there is none or it is
    incomplete); otherwise EMA keys are listed under ``ignored["ema"]``. Schedule buffers go to
    ``ignored["schedule"]``. Any other top-level key is an error.
    """
    parts = LdmParts(unet={})
    ema: dict[str, torch.Tensor] = {}
    bad = []
    for key, val in sd.items():
        if key.startswith(UNET_PREFIX):
            parts.unet[key[len(UNET_PREFIX):]] = val
        elif key.startswith(VAE_PREFIX):
            parts.vae[key[len(VAE_PREFIX):]] = val
        elif key.startswith(TEXT_PREFIXES):
            parts.text[key] = val
        elif key.startswith(EMA_PREFIX):
            if key in EMA_BOOKKEEPING:
                parts.ignored.setdefault("ema_bookkeeping", []).append(key)
            else:
                ema[key] = val
        elif key in SCHEDULE_BUFFERS:
            parts.ignored.setdefault("schedule", []).append(key)
        else:
            bad.append(key)
    if bad:
        raise KeyMapError("unknown top-level keys in an LDM single file", fmt="ldm", source=source,
                          unexpected=sorted(bad))
    if use_ema:
        names = {k: EMA_PREFIX + ("diffusion_model." + k).replace(".", "") for k in parts.unet}
        missing = sorted(v for v in names.values() if v not in ema)
        extra = sorted(set(ema) - set(names.values()))
        if missing or extra or not ema:
            raise KeyMapError("use_ema: the model_ema copy does not match the UNet", fmt="ldm", source=source,
                              missing=missing or ["model_ema.*"], unexpected=extra)
        parts.unet = {k: ema[n] for k, n in names.items()}
        parts.ignored["ema_replaced_unet"] = sorted(names)
    elif ema:
        parts.ignored["ema"] = sorted(ema)
    return parts


def infer_unet_config(sd: Mapping[str, torch.Tensor], hints: Optional[Mapping] = None,
                      source: object = None) -> dict:
    """diffusers ``UNet2DConditionModel`` config from **diffusers-named** UNet tensors plus optional hints."""
    hints = dict(hints or {})
    if bad := sorted(set(hints) - set(HINT_FIELDS)):
        raise CheckpointError(f"{source}: unknown config hints {bad}; allowed: {list(HINT_FIELDS)}")
    lay = layout_from_diffusers(sd)
    width = [sd[f"down_blocks.{lv}.resnets.0.conv1.weight"].shape[0] for lv in range(lay.levels)]
    depth = [len(_ints(sd, rf"down_blocks\.{lv}\.attentions\.0\.transformer_blocks\.(\d+)\.")) or 1
             for lv in range(lay.levels)]
    mid_depth = len(_ints(sd, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."))
    if mid_depth != depth[-1]:
        raise CheckpointError(f"{source}: mid-block depth {mid_depth} differs from the last level's {depth[-1]}")
    to_k = next(v for k, v in sd.items() if k.endswith("attn2.to_k.weight"))
    linear = next(v for k, v in sd.items() if k.endswith("attentions.0.proj_in.weight")).ndim == 2
    cfg = {
        "in_channels": sd["conv_in.weight"].shape[1], "out_channels": sd["conv_out.weight"].shape[0],
        "block_out_channels": width, "layers_per_block": lay.layers_per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in lay.down_attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in lay.up_attn],
        "mid_block_type": "UNetMidBlock2DCrossAttn", "cross_attention_dim": to_k.shape[1],
        "transformer_layers_per_block": depth if len(set(depth)) > 1 else depth[0],
        "use_linear_projection": linear, "flip_sin_to_cos": True, "freq_shift": 0,
        "norm_num_groups": hints.pop("norm_num_groups", 32), "norm_eps": hints.pop("norm_eps", 1e-5),
        "sample_size": hints.pop("sample_size", 128 if lay.text_time else 64),
    }
    if (temb := sd["time_embedding.linear_1.weight"].shape[0]) != 4 * width[0]:
        cfg["time_embedding_dim"] = temb
    if "upcast_attention" in hints:
        cfg["upcast_attention"] = bool(hints.pop("upcast_attention"))
    if lay.text_time:
        in_dim = sd["add_embedding.linear_1.weight"].shape[1]
        tdim = hints.pop("addition_time_embed_dim", 256 if in_dim == 2816 else None)
        if tdim is None:
            raise CheckpointError(f"{source}: text_time embedding input {in_dim} is not SDXL's 2816; pass the "
                                  f"hint addition_time_embed_dim=<per-id sinusoid size>")
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=tdim,
                   projection_class_embeddings_input_dim=in_dim)
    cfg["attention_head_dim"] = _heads(width, lay, linear, hints, source)
    return cfg


def _heads(width: list[int], lay: Layout, linear: bool, hints: dict, source: object):
    """diffusers ``attention_head_dim`` (which, in diffusers, counts heads): per level list or int."""
    if "num_heads" in hints:
        return hints["num_heads"]
    head_dim = hints.get("head_dim", 64 if linear else None)
    if head_dim is None:                               # SD1.x rule: 8 heads everywhere
        return 8
    bad = [c for c, a in zip(width, lay.down_attn) if a and c % head_dim]
    if bad:
        raise CheckpointError(f"{source}: widths {bad} are not multiples of head dim {head_dim}; pass the hint "
                              f"num_heads=<int or per-level list> or head_dim=<int>")
    return [max(1, c // head_dim) for c in width]
