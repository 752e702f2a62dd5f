"""Frozen SD1.5 / SDXL parts from local files: :class:`SD15Builder` / :class:`SDXLBuilder`, the ``_target_`` of
``configs/backbone/sd15.yaml`` / ``sdxl.yaml`` (see :func:`i2v.pipeline.bundle.build_bundle`).

UNet + motion module through :func:`i2v.checkpoints.loader.load_video_unet` (diffusers folder or single file; any
AnimateDiff layout; the official merged base brings its motion modules and IP-Adapter layers), the VAE from its
diffusers folder or the single file's ``first_stage_model.*`` keys, the CLIP
text encoder(s) from the single file's ``cond_stage_model.*`` / ``conditioner.*`` keys when it has them (a
DreamBooth-style checkpoint replaces the base text encoder too) or else from diffusers ``text_encoder*/`` folders,
and -- when ``adapter.content`` is on -- the IP-Adapter (Content-Adapter) with its CLIP image encoder.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from i2v.checkpoints.official_base import single_file_parts
from i2v.pipeline.bundle import BackboneBuilder

TEXT_ROLES = {"sd15": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2")}


def single_file_of(backbone: DictConfig):
    """``Path`` of ``backbone.unet`` when it is a single file, else ``None`` (a diffusers folder or unset)."""
    unet = backbone.get("unet")
    return Path(str(unet)) if unet and Path(str(unet)).is_file() else None


def build_text_encoder(backbone: DictConfig, *, verbose: bool = True) -> nn.Module:
    """SD15TextEncoder / SDXLTextEncoder for ``backbone``. Each CLIP model comes from the single-file ``unet``
    when it holds that model's weights and ``backbone.text_from_single_file`` is true (the config then comes from
    ``backbone.<role>/config.json`` when set, else from the tensor shapes), otherwise from ``backbone.<role>``.
    Tokenizers always come from ``backbone.tokenizer[_2]``."""
    from i2v.checkpoints.clip_text import (clip_text_model_from_state, read_single_file_text, read_text_config,
                                           single_file_text_to_hf)
    from i2v.models.text import SD15TextEncoder, SDXLTextEncoder, load_text_model, load_tokenizer

    roles = TEXT_ROLES[backbone.name]
    single = single_file_of(backbone)
    from_file = {}
    if single is not None and backbone.get("text_from_single_file", True):
        from_file = single_file_text_to_hf(read_single_file_text(single), single)
    models, unset = {}, []
    for role in roles:
        folder = backbone.get(role)
        if role in from_file:
            models[role] = clip_text_model_from_state(from_file[role], role, config=read_text_config(folder),
                                                      source=single)
            if verbose:
                print(f"[i2v] {role}: {len(from_file[role])} tensors from the single file {single} "
                      f"(config from {f'{folder}/config.json' if folder else 'the tensor shapes'})")
        elif folder:
            models[role] = load_text_model(str(folder), role == "text_encoder_2", torch.float32)
        else:
            unset.append(role)
    if unset:
        where = f"{single} holds no weights for them" if single is not None else "backbone.unet is not a single file"
        raise FileNotFoundError(f"backbone={backbone.name}: set {', '.join(f'backbone.{r}' for r in unset)} "
                                f"({where})")
    tokenizers = [load_tokenizer(str(backbone.get(f"tokenizer{r[len('text_encoder'):]}"))) for r in roles]
    if backbone.name == "sd15":
        return SD15TextEncoder(tokenizers[0], models["text_encoder"])
    return SDXLTextEncoder(tokenizers[0], models["text_encoder"], tokenizers[1], models["text_encoder_2"])


REQUIRED = {"sd15": ["unet", "motion", "text_encoder", "tokenizer"],
            "sdxl": ["unet", "motion", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]}
CONTENT_REQUIRED = ["ip_adapter", "image_encoder"]


def required_paths(backbone: DictConfig, adapter: DictConfig) -> list[str]:
    """The path keys of ``backbone`` a run needs (what a single file or a merged base carries is left out)."""
    keys = list(REQUIRED[backbone.name])
    single = single_file_of(backbone) is not None
    inside = single_file_parts(str(backbone.unet)) if single else set()
    if "text" in inside and backbone.get("text_from_single_file", True):
        keys = [k for k in keys if not k.startswith("text_encoder")]  # the single file carries them
    if "motion" in inside:
        keys.remove("motion")          # a merged UNet3D base (official I2V-Adapter release) carries its own
    if adapter.content:
        keys += CONTENT_REQUIRED
    if backbone.get("vae") is None and backbone.get("unet") and \
            (Path(str(backbone.unet)).is_dir() or (single and "vae" not in inside)):
        keys.append("vae")  # a diffusers UNet folder or a merged base carries no VAE; an LDM single file does
    return keys


class SD15Builder(BackboneBuilder):
    """``backbone=sd15``: Stable Diffusion 1.5 + AnimateDiff from local files."""

    def required_paths(self, adapter: DictConfig) -> list[str]:
        return required_paths(self.cfg, adapter)

    def build_parts(self, adapter: DictConfig, *, device="cpu", dtype=torch.float32) -> dict:
        return build_real_parts(self.cfg, adapter, device=device, dtype=dtype)


class SDXLBuilder(SD15Builder):
    """``backbone=sdxl``: SDXL + AnimateDiff (two text encoders, micro-conditioning ``time_ids``)."""

    micro_conditioning = True


def build_real_parts(backbone: DictConfig, adapter: DictConfig, *, device="cpu", dtype=torch.float32) -> dict:
    from i2v.checkpoints.loader import load_video_unet
    from i2v.checkpoints.vae import vae_codec_from_single_file
    from i2v.models.vae import VAECodec

    hints = backbone.get("unet_hints")
    unet = load_video_unet(str(backbone.unet), str(backbone.motion) if backbone.get("motion") else None,
                           norm=backbone.get("norm"), device="cpu", dtype=torch.float32,
                           unet_hints=OmegaConf.to_container(hints) if hints is not None else None)
    upcast = backbone.name == "sdxl"
    if backbone.get("vae"):
        codec = VAECodec.from_folder(str(backbone.vae), scaling_factor=float(backbone.vae_scale), upcast_decode=upcast)
    else:
        if single_file_of(backbone) is None:
            raise FileNotFoundError("backbone.vae is unset and backbone.unet is a diffusers folder (no VAE inside); "
                                    "set backbone.vae=<.../vae>")
        codec = vae_codec_from_single_file(str(backbone.unet), scaling_factor=float(backbone.vae_scale),
                                           upcast_decode=upcast)
    parts = {"unet": unet, "codec": codec, "text": build_text_encoder(backbone)}
    if not adapter.content and any(k.endswith("to_k_ip.weight") for k in unet.state_dict()):
        from i2v.models.content import detach_ip_adapter

        detach_ip_adapter(unet)      # a merged base brings IP-Adapter layers; this run has the Content-Adapter off
        print("[i2v] adapter.content=false: removed the IP-Adapter layers that came with backbone.unet")
    if adapter.content:
        from i2v.checkpoints.ip_adapter import load_ip_adapter
        from i2v.models.content import ClipImageEncoder

        proj = load_ip_adapter(unet, str(backbone.ip_adapter), scale=float(adapter.content_scale))
        arch = backbone.get("image_encoder_arch", "ViT-H-14")
        parts.update(image_encoder=ClipImageEncoder.from_local(str(backbone.image_encoder), arch=arch), image_proj=proj)
    return parts
