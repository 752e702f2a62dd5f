"""The official I2V-Adapter merged base ``animatediff_v15_v1_ipplus.pth`` (KwaiVGI/I2V-Adapter, reference §7).

The file is one torch pickle: the state dict of the official ``UNet3DConditionModel`` (AnimateDiff's
``src/models/unet.py``, diffusers-0.11 names; loaded there by ``UNet3DConditionModel.from_pretrained_ip``)
built with ``use_motion_module`` and ``unet_use_ipadapter``. Keys, by part:

- spatial SD1.5 UNet in diffusers names (``conv_in``, ``down_blocks.i.resnets.j.*``, ``…attentions.j.*``,
  ``proj_in`` a 1x1 conv): 686 tensors, 859,520,964 parameters;
- AnimateDiff v1 motion modules in their original names with both ``pos_encoder.pe`` buffers
  (``down_blocks.i.motion_modules.j.temporal_transformer.*``; 560 tensors, pe length 24, no mid block);
- the IP-Adapter Plus layers ``<block>.attentions.j.transformer_blocks.k.attn2.{to_k_ip,to_v_ip}.weight``
  [C, 768] in every spatial attn2 (32 tensors, 19,169,280 parameters *derived*); the Resampler is *not* inside
  (the official code loads it from ``ip-adapter-plus_sd15.bin["image_proj"]``).

No I2V-Adapter tensors: the official loader copies ``to_q`` into ``to_q_ff`` and reads ``to_out_ff`` from
``i2v_module.pth``. :func:`split_unet3d` splits such a dict into the three parts; the loader maps each with its
own counted key map. Any AnimateDiff ``UNet3DConditionModel`` state dict (motion modules inside, no ip layers)
is split the same way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Union

import torch

from .common import PICKLE_SUFFIXES, CheckpointError, KeyMapError, detect_format

IP_LAYER = re.compile(r"^(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+\."
                      r"attn2\.to_[kv]_ip\.weight$")
OFFICIAL_IP_TOKENS = 16      # IP-Adapter Plus: 16 image tokens after the text tokens
# *derived* totals of the official file's parts at SD1.5 size (tensors, parameters): sum of attn2 widths over the
# 16 transformer blocks is 12,480, times 768 (context) times 2 (to_k_ip, to_v_ip)
RELEASE_IP = {"sd15": (32, 19_169_280)}


@dataclass
class Unet3DParts:
    """One ``UNet3DConditionModel`` state dict split by role; every key lands in exactly one part."""

    unet: dict[str, torch.Tensor]                                      # diffusers UNet2DConditionModel names
    motion: dict[str, torch.Tensor] = field(default_factory=dict)      # original AnimateDiff names (+ pe)
    ip_layers: dict[str, torch.Tensor] = field(default_factory=dict)   # ``<attn2>.to_k_ip.weight`` ...


def is_unet3d(keys) -> bool:
    """diffusers-named UNet keys *and* motion modules in one dict (the merged-base layout)."""
    keys = set(keys)
    return ("conv_in.weight" in keys and "down_blocks.0.resnets.0.conv1.weight" in keys
            and any(".motion_modules." in k for k in keys))


def split_unet3d(sd: Mapping[str, torch.Tensor], source: object = None) -> Unet3DParts:
    """Split a merged ``UNet3DConditionModel`` state dict into UNet, motion-module and IP-Adapter tensors.

    I2V-Adapter tensors (``attn1.to_q_ff`` / ``to_out_ff``) are refused with a pointer to ``ckpt=``: the official
    release keeps them in ``i2v_module.pth``, and loading them twice would hide which file was used."""
    if not is_unet3d(sd):
        raise CheckpointError(f"{source}: not a UNet3DConditionModel state dict (needs conv_in, down_blocks.* "
                              f"and motion_modules.* keys)")
    parts = Unet3DParts(unet={})
    adapter = []
    for key, val in sd.items():
        if ".motion_modules." in key:
            parts.motion[key] = val
        elif IP_LAYER.match(key):
            parts.ip_layers[key] = val
        elif ".attn1.to_q_ff." in key or ".attn1.to_out_ff." in key:
            adapter.append(key)
        else:
            parts.unet[key] = val
    if adapter:
        raise KeyMapError("I2V-Adapter tensors inside the base UNet file; give them as ckpt=<i2v_module.pth> "
                          "(export them with scripts/export_adapter.py)", fmt="unet3d", source=source,
                          unexpected=sorted(adapter))
    if len(parts.ip_layers) % 2:
        raise KeyMapError("to_k_ip / to_v_ip must come in pairs", fmt="unet3d", source=source,
                          unexpected=sorted(parts.ip_layers))
    return parts


def _peek_keys(path: Path) -> list[str]:
    """Tensor names of a file without reading its tensors (safetensors header; zip pickles memory-mapped)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    if path.suffix not in PICKLE_SUFFIXES:
        return []
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:             # legacy (non-zip) pickles cannot be memory-mapped: read them fully
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return [str(k) for k in obj] if isinstance(obj, Mapping) else []


def single_file_parts(path: Union[str, Path]) -> set[str]:
    """What a single UNet file carries besides the UNet: a subset of ``{"motion", "ip", "vae", "text"}``.

    Used before anything loads, to tell which other weight paths a run needs (a merged base needs no
    ``motion``, but a VAE and text encoder from elsewhere). Unreadable files give an empty set (the loader
    reports them)."""
    path = Path(path)
    try:
        keys = _peek_keys(path)
    except Exception:                # noqa: BLE001 - the loader reads the file again and names the problem
        return set()
    fmt = detect_format(dict.fromkeys(keys))
    parts = set()
    if fmt == "unet3d":
        parts.add("motion")
        if any(IP_LAYER.match(k) for k in keys):
            parts.add("ip")
    if fmt == "ldm":
        if any(k.startswith("first_stage_model.") for k in keys):
            parts.add("vae")
        if any(k.startswith(("cond_stage_model.", "conditioner.")) for k in keys):
            parts.add("text")
    return parts
