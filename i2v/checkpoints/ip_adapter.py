"""Official IP-Adapter files (h94/IP-Adapter, tencent-ailab/IP-Adapter), reference §5.

Layout: ``.bin`` = ``{"image_proj": sd, "ip_adapter": sd}`` (read with ``torch.load(weights_only=True)``), or a flat
``.safetensors`` with ``image_proj.*`` / ``ip_adapter.*``. ``ip_adapter`` holds ``"{i}.to_k_ip.weight"`` /
``"{i}.to_v_ip.weight"`` with ``i = 2g + 1``, g = index of the transformer block in diffusers' ``attn_processors``
order (down_blocks, up_blocks, mid_block). The mapping is computed from the layer names, so it does not depend
on the order in which our UNet registers its blocks.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Union

import torch
from torch import nn

from i2v.models.attention import spatial_attention_layers
from i2v.models.content import (IPAdapterProcessor, ImageProj, ImageProjModel, MLPProjModel, Resampler,
                                attach_ip_adapter)

_HINT = ("an IP-Adapter file such as h94/IP-Adapter `models/ip-adapter-plus_sd15.bin` / `models/ip-adapter_sd15.bin` "
         "or `sdxl_models/ip-adapter_sdxl.bin` (also .safetensors)")
_GROUP_RANK = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}
_ATTN2 = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn2$"
                    r"|^(mid_block)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn2$")


def read_ip_adapter_file(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return ``(image_proj_sd, ip_adapter_sd)`` from a ``.bin/.pt/.pth`` or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IP-Adapter weights not found at {path}; expected {_HINT}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
        sd = {"image_proj": {}, "ip_adapter": {}}
        for k, v in flat.items():
            head, _, rest = k.partition(".")
            if head not in sd:
                raise KeyError(f"{path}: unexpected key {k!r} (IP-Adapter safetensors keys start image_proj./ip_adapter.)")
            sd[head][rest] = v
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(sd, dict) or set(sd) != {"image_proj", "ip_adapter"}:
            keys = sorted(sd)[:5] if isinstance(sd, dict) else type(sd).__name__
            raise KeyError(f"{path}: expected top-level keys {{'image_proj', 'ip_adapter'}}, got {keys}")
    if not sd["image_proj"] or not sd["ip_adapter"]:
        raise KeyError(f"{path}: empty image_proj or ip_adapter section")
    return sd["image_proj"], sd["ip_adapter"]


def build_image_proj(sd: dict[str, torch.Tensor], source: str = "image_proj") -> ImageProj:
    """Detect the variant (base / Plus / full-face, reference §5.3) from the keys, build it and load it strictly."""
    if "proj.weight" in sd and "norm.weight" in sd:
        cross = sd["norm.weight"].shape[0]
        out, clip_dim = sd["proj.weight"].shape
        if out % cross:
            raise ValueError(f"{source}: proj.weight rows {out} not a multiple of norm size {cross}")
        model: ImageProj = ImageProjModel(clip_dim, cross, out // cross)
    elif "proj.3.weight" in sd:
        model = MLPProjModel(sd["proj.0.weight"].shape[1], sd["proj.3.weight"].shape[0])
    elif "latents" in sd:
        _, q, dim = sd["latents"].shape
        depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
        model = Resampler(dim=dim, depth=depth, dim_head=64, heads=sd["layers.0.0.to_q.weight"].shape[0] // 64,
                          num_queries=q, embedding_dim=sd["proj_in.weight"].shape[1],
                          output_dim=sd["proj_out.weight"].shape[0],
                          ff_mult=sd["layers.0.1.1.weight"].shape[0] // dim)
    else:
        raise ValueError(f"{source}: unknown image_proj layout (keys {sorted(sd)[:6]}); supported: base (proj, norm), "
                         "Plus (latents, layers.*), full-face (proj.0/2/3). FaceID variants are not supported.")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise KeyError(f"{source}: {type(model).__name__} missing keys {missing}, unexpected keys {unexpected}")
    return model.requires_grad_(False).eval()


def _sort_key(name: str) -> tuple[int, int, int, int]:
    m = _ATTN2.match(name)
    if m is None:
        raise ValueError(f"cannot place attn2 layer {name!r} in the IP-Adapter numbering "
                         "(expected {down_blocks.i|up_blocks.i|mid_block}.attentions.j.transformer_blocks.k.attn2)")
    if m.group(1):
        return _GROUP_RANK[m.group(1)], int(m.group(2)), int(m.group(3)), int(m.group(4))
    return _GROUP_RANK["mid_block"], 0, int(m.group(6)), int(m.group(7))


def ip_adapter_numbering(attn2_names: list[str]) -> dict[str, int]:
    """attn2 layer name -> IP-Adapter key index ``i = 2g + 1`` (diffusers ``attn_processors`` order:
    down_blocks, up_blocks, mid_block; within a block attentions.j, then transformer_blocks.k)."""
    ordered = sorted(attn2_names, key=_sort_key)
    return {name: 2 * g + 1 for g, name in enumerate(ordered)}


def ip_adapter_key_map(unet: nn.Module) -> dict[str, str]:
    """File key (``"{i}.to_k_ip.weight"``) -> our state-dict key (``"<attn2>.to_k_ip.weight"``), all layers."""
    numbering = ip_adapter_numbering([n for n, _ in spatial_attention_layers(unet, "attn2")])
    return {f"{i}.{w}.weight": f"{name}.{w}.weight" for name, i in numbering.items() for w in ("to_k_ip", "to_v_ip")}


def _attached_ip(unet: nn.Module) -> list[IPAdapterProcessor]:
    return [a.processor for _, a in spatial_attention_layers(unet, "attn2")
            if isinstance(a.processor, IPAdapterProcessor)]


def load_ip_adapter(unet: nn.Module, path: Union[str, Path], scale: float = 1.0) -> ImageProj:
    """Attach the IP-Adapter to every spatial attn2 of ``unet``, load ``to_k_ip``/``to_v_ip`` from ``path`` with the
    counted key map, and return the (frozen) image projection model. Shapes and key counts must match exactly.

    When ``unet`` already carries IP-Adapter layers (the official merged base holds them, see official_base.py)
    those are kept, as the official code does, and only ``image_proj`` is taken from ``path``."""
    image_proj_sd, ip_sd = read_ip_adapter_file(path)
    image_proj = build_image_proj(image_proj_sd, source=f"{path}[image_proj]")
    num_tokens = image_proj.num_tokens if isinstance(image_proj, ImageProjModel) else (
        image_proj.latents.shape[1] if isinstance(image_proj, Resampler) else 257)
    if procs := _attached_ip(unet):
        width = next(a.to_k_ip.weight.shape[1] for _, a in spatial_attention_layers(unet, "attn2"))
        out = next(image_proj_sd[k].shape[0] for k in ("norm.weight", "proj_out.weight", "proj.3.weight")
                   if k in image_proj_sd)
        if out != width:
            raise ValueError(f"{path}: image_proj gives {out}-wide tokens but the UNet's ip layers take {width}")
        for proc in procs:
            proc.num_tokens, proc.scale = num_tokens, scale
        print(f"[ip_adapter] loaded {type(image_proj).__name__} ({num_tokens} tokens) from {path}; kept the "
              f"{2 * len(procs)} ip tensors already in the UNet (merged base), not the file's {len(ip_sd)}")
        return image_proj
    attach_ip_adapter(unet, num_tokens, scale)
    key_map = ip_adapter_key_map(unet)
    missing = sorted(set(key_map) - set(ip_sd), key=lambda k: (int(k.split(".")[0]), k))
    unexpected = sorted(set(ip_sd) - set(key_map))
    if missing or unexpected:
        raise KeyError(f"{path}: ip_adapter keys do not fit this UNet ({len(key_map)} expected, {len(ip_sd)} in file); "
                       f"missing {missing[:6]}, unexpected {unexpected[:6]}")
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for fkey, ours in key_map.items():
            src, dst = ip_sd[fkey], params[ours]
            if src.shape != dst.shape:
                raise ValueError(f"{path}: {fkey} has shape {tuple(src.shape)}, {ours} needs {tuple(dst.shape)}")
            if dst.is_meta:
                continue
            dst.copy_(src.to(dst.dtype))
    print(f"[ip_adapter] loaded {type(image_proj).__name__} ({num_tokens} tokens) and {len(key_map)} ip tensors "
          f"into {len(key_map) // 2} attn2 layers from {path}")
    return image_proj
