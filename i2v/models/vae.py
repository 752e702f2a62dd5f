"""Frozen VAE (diffusers ``AutoencoderKL``) as a ``LatentCodec``, from a local diffusers folder (the LDM/SGM
single-file key map and loader are :mod:`i2v.checkpoints.vae`; reference §1.6 key map, §8 scaling).

``encode``: pixels ``(B, 3, H, W)`` in [-1, 1] -> ``scale · z`` ``(B, 4, H/8, W/8)`` (posterior sample with a
generator, or its mode); ``decode`` inverts it. Scale 0.18215 (SD1.5) / 0.13025 (SDXL). The SDXL VAE overflows
in fp16, so ``upcast_decode=True`` runs the decoder in fp32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

SCALING_FACTORS = {"sd15": 0.18215, "sdxl": 0.13025}
_HINT = ("a diffusers `vae/` folder (config.json + diffusion_pytorch_model.safetensors) or a single-file SD1.5/SDXL "
         "checkpoint with `first_stage_model.*` keys (e.g. v1-5-pruned-emaonly.safetensors, sd_xl_base_1.0.safetensors)")


class VAECodec(nn.Module):
    """LatentCodec around a frozen ``AutoencoderKL``."""

    def __init__(self, vae: nn.Module, scaling_factor: float, sample_posterior: bool = True,
                 upcast_decode: bool = False):
        super().__init__()
        self.vae, self.scaling_factor = vae, float(scaling_factor)
        self.sample_posterior, self.upcast_decode = sample_posterior, upcast_decode
        self.latent_channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.requires_grad_(False).eval()

    @classmethod
    def from_folder(cls, folder: Union[str, Path], scaling_factor: Optional[float] = None,
                    dtype: torch.dtype = torch.float32, **kw) -> "VAECodec":
        """diffusers ``vae/`` folder; ``scaling_factor`` defaults to the folder config's."""
        from diffusers import AutoencoderKL

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"VAE not found: {folder} has no config.json; expected {_HINT}")
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
        return cls(vae, vae.config.scaling_factor if scaling_factor is None else scaling_factor, **kw)

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> scaled latents ``(B, c, H/s, W/s)``."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if self.sample_posterior else dist.mode()
        return z * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, c, h, w)`` -> pixels ``(B, 3, h·s, w·s)`` (about [-1, 1], not clamped)."""
        z = latents / self.scaling_factor
        if self.upcast_decode and self.vae.decoder.conv_in.weight.dtype != torch.float32:
            self.vae.post_quant_conv.float()
            self.vae.decoder.float()
        z = z.to(self.vae.decoder.conv_in.weight.dtype)
        return self.vae.decode(z).sample.to(latents.dtype)
