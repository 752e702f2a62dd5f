"""The LDM/SGM VAE key map (reference §1.6): ``first_stage_model.*`` (or ``vae.*``, or bare) keys of a single-file
checkpoint -> diffusers ``AutoencoderKL``, counted strictly, and :func:`vae_codec_from_single_file`."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Union

import torch
from torch import nn

from i2v.checkpoints.common import read_checkpoint
from i2v.models.vae import _HINT, VAECodec


def vae_codec_from_single_file(path: Union[str, Path], scaling_factor: float, norm_num_groups: int = 32,
                               dtype: torch.dtype = torch.float32, **kw) -> VAECodec:
    """LDM/SGM single file (``first_stage_model.*``, ``vae.*`` or bare VAE keys), ``.safetensors`` or a pickle
    read with ``torch.load(weights_only=True)``; ``kw`` go to :class:`VAECodec`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint not found: {path}; expected {_HINT}")
    # only the VAE tensors of a UNet+VAE+text single file; a bare VAE file has no prefix
    sd = read_checkpoint(path, ("first_stage_model.", "vae.")).tensors or read_checkpoint(path).tensors
    return VAECodec(build_vae_from_ldm(sd, norm_num_groups, str(path)).to(dtype), scaling_factor, **kw)


# ------------------------------------------------------------------------------------------ LDM -> diffusers keys
_RESNET = r"(norm1|conv1|norm2|conv2|nin_shortcut)\.(weight|bias)"
_RULES = [  # (ldm regex, diffusers template); {n} = number of levels, used to reverse the decoder
    (rf"^(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)$", "{0}.{1}.{2}"),
    (rf"^(encoder|decoder)\.norm_out\.(weight|bias)$", "{0}.conv_norm_out.{1}"),
    (rf"^encoder\.down\.(\d+)\.block\.(\d+)\.{_RESNET}$", "encoder.down_blocks.{0}.resnets.{1}.{2}.{3}"),
    (r"^encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)$", "encoder.down_blocks.{0}.downsamplers.0.conv.{1}"),
    (rf"^decoder\.up\.(\d+)\.block\.(\d+)\.{_RESNET}$", "decoder.up_blocks.{r0}.resnets.{1}.{2}.{3}"),
    (r"^decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)$", "decoder.up_blocks.{r0}.upsamplers.0.conv.{1}"),
    (rf"^(encoder|decoder)\.mid\.block_([12])\.{_RESNET}$", "{0}.mid_block.resnets.{m1}.{2}.{3}"),
    (r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", "{0}.mid_block.attentions.0.{a1}.{2}"),
    (r"^(quant_conv|post_quant_conv)\.(weight|bias)$", "{0}.{1}"),
]
_ATTN_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return {k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}


def convert_ldm_vae_state_dict(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """LDM VAE keys (prefix ``first_stage_model.``/``vae.``/none; ``loss.*`` dropped) -> diffusers AutoencoderKL
    keys. Every VAE key must match a rule (KeyError otherwise); mid-attention 1×1 convs become Linear weights."""
    vae = {k: v for k, v in _strip_prefix(sd).items() if not k.startswith("loss.")}
    if "encoder.conv_in.weight" not in vae:
        raise KeyError(f"{source}: no LDM VAE keys (encoder.conv_in.weight) found; expected {_HINT}")
    n_levels = len({int(m.group(1)) for k in vae if (m := re.match(r"^decoder\.up\.(\d+)\.", k))})
    out: dict[str, torch.Tensor] = {}
    for key, val in vae.items():
        for pattern, template in _RULES:
            m = re.match(pattern, key)
            if m is None:
                continue
            g = m.groups()
            new = template.format(*g, r0=(n_levels - 1 - int(g[0])) if "r0" in template else 0,
                                  m1=int(g[1]) - 1 if "m1" in template else 0,
                                  a1=_ATTN_NAMES.get(g[1], "") if "a1" in template else "")
            new = new.replace("nin_shortcut", "conv_shortcut")
            if ".mid_block.attentions.0.to_" in new and new.endswith("weight") and val.ndim > 2:
                val = val.reshape(val.shape[0], val.shape[1])
            out[new] = val
            break
        else:
            raise KeyError(f"{source}: unrecognised VAE key {key!r}")
    if len(out) != len(vae):
        raise ValueError(f"{source}: {len(vae)} VAE keys mapped onto {len(out)} names (collision)")
    return out


def vae_config_from_ldm(sd: dict[str, torch.Tensor], norm_num_groups: int = 32) -> dict:
    """AutoencoderKL config inferred from converted (diffusers-named) VAE weights."""
    levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down_blocks.")})
    per_block = len({k.split(".")[4] for k in sd if k.startswith("encoder.down_blocks.0.resnets.")})
    return dict(in_channels=sd["encoder.conv_in.weight"].shape[1], out_channels=sd["decoder.conv_out.weight"].shape[0],
                down_block_types=["DownEncoderBlock2D"] * len(levels), up_block_types=["UpDecoderBlock2D"] * len(levels),
                block_out_channels=[sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in levels],
                layers_per_block=per_block, latent_channels=sd["post_quant_conv.weight"].shape[0],
                norm_num_groups=norm_num_groups)


def build_vae_from_ldm(sd: dict[str, torch.Tensor], norm_num_groups: int = 32, source: str = "checkpoint") -> nn.Module:
    """AutoencoderKL loaded strictly from LDM-format weights (counted: every converted key used, none missing)."""
    from diffusers import AutoencoderKL

    conv = convert_ldm_vae_state_dict(sd, source)
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config_from_ldm(conv, norm_num_groups))
    expected = set(vae.state_dict())
    missing, unexpected = sorted(expected - set(conv)), sorted(set(conv) - expected)
    if missing or unexpected:
        raise KeyError(f"{source}: VAE key map mismatch, missing {missing[:5]} ({len(missing)}), "
                       f"unexpected {unexpected[:5]} ({len(unexpected)})")
    vae.load_state_dict(conv, strict=True, assign=True)
    return vae
