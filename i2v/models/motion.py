"""AnimateDiff motion module: a temporal transformer over the frames of every spatial position.

One module (diffusers ``AnimateDiffTransformer3D``; original ``VanillaTemporalModule.temporal_transformer``)::

    x (B·F, C, H, W) -> norm -> "(b f) c h w -> (b h w) f c" -> proj_in -> blocks -> proj_out -> back, + x

Each block: ``x += attn1(pe + norm1 x)``; ``x += attn2(pe + norm2 x)`` (both self-attention over frames);
``x += ff(norm3 x)``. Keys use diffusers names (``norm, proj_in, transformer_blocks.0.{norm1, attn1, norm2,
attn2, norm3, ff}, proj_out``); the PE table ``transformer_blocks.0.pos_embed.pe`` is a non-persistent buffer.
``motion_norm``: ``per_frame`` (original AnimateDiff SD1.5) or ``across_frames`` (diffusers, AnimateDiff SDXL).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .attention import Attention
from .config import MotionConfig
from .embeddings import SinusoidalPositionalEmbedding
from .resnet import FrameGroupNorm
from .transformer import FeedForward


class TemporalTransformerBlock(nn.Module):
    """Two frame self-attentions with the sinusoidal PE added after each pre-norm, then GEGLU FF.

    forward: x ``(N, F, C)`` with N = B·H·W -> ``(N, F, C)``.
    """

    def __init__(self, dim: int, heads: int, max_seq_length: int):
        super().__init__()
        dim_head = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, heads=heads, dim_head=dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, None, heads=heads, dim_head=dim_head)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.pos_embed = SinusoidalPositionalEmbedding(dim, max_seq_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.pos_embed(self.norm1(x))) + x
        x = self.attn2(self.pos_embed(self.norm2(x))) + x
        return self.ff(self.norm3(x)).add_(x)  # the FF output is a fresh Linear output


class MotionModule(nn.Module):
    """Temporal transformer with outer residual; ``proj_out`` zero-initialised (AnimateDiff), so a fresh
    module is the identity.

    forward: x ``(B·F, C, H, W)``, ``num_frames`` F -> ``(B·F, C, H, W)``.
    """

    def __init__(self, channels: int, heads: int = 8, groups: int = 32, max_seq_length: int = 32,
                 across_frames: bool = False, depth: int = 1):
        super().__init__()
        self.max_seq_length = max_seq_length
        self.norm = FrameGroupNorm(groups, channels, eps=1e-6, across_frames=across_frames)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, max_seq_length) for _ in range(depth)])
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    @classmethod
    def from_config(cls, channels: int, cfg: MotionConfig) -> "MotionModule":
        return cls(channels, heads=cfg.num_heads, groups=cfg.norm_num_groups, max_seq_length=cfg.max_seq_length,
                   across_frames=cfg.motion_norm == "across_frames")

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        n, c, h, w = x.shape
        if num_frames > self.max_seq_length:
            raise ValueError(f"{num_frames} frames exceed the motion module's positional-encoding length "
                             f"max_seq_length={self.max_seq_length}")
        tokens = rearrange(self.norm.video(x, num_frames), "b c f h w -> (b h w) f c")
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        tokens = self.proj_out(tokens)
        # add through a 5-D permuted view: no separate copy back to (b f) c h w layout
        out = x.view(n // num_frames, num_frames, c, h, w) + rearrange(
            tokens, "(b h w) f c -> b f c h w", h=h, w=w)
        return out.reshape(n, c, h, w)
