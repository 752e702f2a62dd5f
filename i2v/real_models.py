"""Frozen SD1.5 / SDXL parts from local files (the ``backbone=sd15|sdxl`` half of :func:`i2v.bundle.build_bundle`).

UNet + motion module through :func:`i2v.checkpoints.loader.load_video_unet` (diffusers folder or single file; any
AnimateDiff release), the VAE from its diffusers folder or the single file's ``first_stage_model.*`` keys, the CLIP
text encoder(s) from diffusers ``text_encoder/`` + ``tokenizer/`` folders, and -- when ``adapter.content`` is on --
the IP-Adapter (Content-Adapter) with its CLIP image encoder.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig


def build_real_parts(backbone: DictConfig, adapter: DictConfig, *, device="cpu", dtype=torch.float32) -> dict:
    from i2v.checkpoints.loader import load_video_unet
    from i2v.models.text import SD15TextEncoder, SDXLTextEncoder
    from i2v.models.vae import VAECodec

    unet = load_video_unet(str(backbone.unet), str(backbone.motion) if backbone.get("motion") else None,
                           norm=backbone.get("norm"), device="cpu", dtype=torch.float32)
    upcast = backbone.name == "sdxl"
    if backbone.get("vae"):
        codec = VAECodec.from_folder(str(backbone.vae), scaling_factor=float(backbone.vae_scale), upcast_decode=upcast)
    else:
        if Path(str(backbone.unet)).is_dir():
            raise FileNotFoundError("backbone.vae is unset and backbone.unet is a diffusers folder (no VAE inside); "
                                    "set backbone.vae=<.../vae>")
        codec = VAECodec.from_single_file(str(backbone.unet), scaling_factor=float(backbone.vae_scale),
                                          upcast_decode=upcast)
    if backbone.name == "sd15":
        text = SD15TextEncoder.from_folders(str(backbone.text_encoder), str(backbone.tokenizer))
    else:
        text = SDXLTextEncoder.from_folders(str(backbone.text_encoder), str(backbone.tokenizer),
                                            str(backbone.text_encoder_2), str(backbone.tokenizer_2))
    parts = {"unet": unet, "codec": codec, "text": text}
    if adapter.content:
        from i2v.checkpoints.ip_adapter import load_ip_adapter
        from i2v.models.content import ClipImageEncoder

        proj = load_ip_adapter(unet, str(backbone.ip_adapter), scale=float(adapter.content_scale))
        arch = backbone.get("image_encoder_arch", "ViT-H-14")
        parts.update(image_encoder=ClipImageEncoder.from_local(str(backbone.image_encoder), arch=arch), image_proj=proj)
    return parts
