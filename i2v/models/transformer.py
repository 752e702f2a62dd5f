"""Spatial transformer of the SD UNet: ``Transformer2D`` (GroupNorm, proj_in, blocks, proj_out, residual) and
``BasicTransformerBlock`` (self-attention ``attn1``, text cross-attention ``attn2``, GEGLU feed-forward).

Keys follow diffusers (``norm``, ``proj_in``, ``transformer_blocks.k.{norm1,attn1,norm2,attn2,norm3,ff}``,
``proj_out``). ``proj_in``/``proj_out`` are 1x1 convs (SD1.x) or Linear (SD2.x/SDXL, ``use_linear_projection``).
Attention layers receive ``num_frames`` so that adapters (I2V-Adapter) can regroup ``(b f) t c``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import Attention


class GEGLU(nn.Module):
    """``proj`` (C -> 2·inner); value half × gelu(gate half): ``(..., C) -> (..., inner)``."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        if torch.is_grad_enabled():
            return value * F.gelu(gate)
        return F.gelu(gate).mul_(value)  # inference: reuse the gelu buffer (same values, one tensor less)


class FeedForward(nn.Module):
    """``net.0`` GEGLU (C -> 4C), ``net.1`` dropout, ``net.2`` Linear (4C -> C): ``(..., C) -> (..., C)``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: ``x += attn1(norm1 x)``; ``x += attn2(norm2 x, context)``; ``x += ff(norm3 x)``.

    forward: x ``(B·F, T, C)`` tokens, context ``(B·F, L, d)``, ``num_frames`` F -> ``(B·F, T, C)``.
    """

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        dim_head = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, heads=heads, dim_head=dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads=heads, dim_head=dim_head)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        x = self.attn1(self.norm1(x), num_frames=num_frames) + x
        x = self.attn2(self.norm2(x), context=context, num_frames=num_frames) + x
        return self.ff(self.norm3(x)).add_(x)  # the FF output is a fresh Linear output


class Transformer2D(nn.Module):
    """Spatial transformer around ``depth`` :class:`BasicTransformerBlock` s with an outer residual.

    forward: x ``(B·F, C, H, W)``, context ``(B·F, L, d)``, ``num_frames`` -> ``(B·F, C, H, W)``.
    """

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int = 1, groups: int = 32,
                 linear_projection: bool = False):
        super().__init__()
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        if linear_projection:
            self.proj_in = nn.Linear(channels, channels)
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, 1)
            self.proj_out = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, context_dim) for _ in range(depth)])

    def _project(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # a 1x1 conv applied to channel-last tokens is a Linear with the squeezed weight
        if self.linear_projection:
            return layer(x)
        return F.linear(x, layer.weight.flatten(1), layer.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = rearrange(self.norm(x), "n c h w -> n (h w) c")
        tokens = self._project(self.proj_in, tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, num_frames)
        tokens = self._project(self.proj_out, tokens)
        return x + rearrange(tokens, "n (h w) c -> n c h w", h=h, w=w)
