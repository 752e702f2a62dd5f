"""The small interfaces that let real (SD1.5/SDXL) and toy encoders plug into the same code path.

Every part the training module, sampler and notebooks touch is one of these; real models (``text.py``,
``content.py``, ``vae.py``) and the toy world (``toy.py``) implement them.
"""
from __future__ import annotations

from typing import Optional, Protocol, TypedDict

import torch


class TextOutput(TypedDict):
    context: torch.Tensor            # (B, L, d): the UNet's cross-attention context
    pooled: Optional[torch.Tensor]   # (B, P) pooled embedding (SDXL ``text_embeds``), else None


class TextEncoder(Protocol):
    def __call__(self, prompts: list[str]) -> TextOutput: ...


class ImageFeatures(TypedDict):
    image_embeds: torch.Tensor       # (B, E) projected embedding (IP-Adapter base)
    penultimate: torch.Tensor        # (B, T, W) hidden states of the second-to-last block (IP-Adapter Plus)


class ImageEncoder(Protocol):
    """Takes pixels ``(B, 3, H, W)`` in [-1, 1]; does its own resizing/normalisation."""

    def __call__(self, images: torch.Tensor) -> ImageFeatures: ...


class LatentCodec(Protocol):
    """VAE-like codec. ``encode``: pixels ``(B, 3, H, W)`` in [-1, 1] -> scaled latents ``(B, c, H/s, W/s)``;
    ``decode`` inverts it. ``latent_channels`` = c, ``downsample`` = s."""

    latent_channels: int
    downsample: int

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...
