"""Timestep / micro-conditioning embeddings of the SD UNet and the sinusoidal frame PE of the motion module.

Names follow diffusers: ``time_embedding.linear_{1,2}``, ``add_embedding.linear_{1,2}`` (SDXL ``text_time``);
the sinusoid modules hold no parameters. The motion PE table ``pos_embed.pe`` is a non-persistent buffer
(regenerated from ``max_seq_length``, so it never appears in a state dict).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """SD sinusoid ``[cos | sin]`` (``flip_sin_to_cos=True``, ``freq_shift=0``).

    t: ``(N,)`` int or float timesteps -> ``(N, dim)`` float32.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects a 1-D tensor, got shape {tuple(t.shape)}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_period) / half)
    args = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """``linear_1 -> SiLU -> linear_2``: ``(N, in_dim) -> (N, out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def text_time_input(added_cond: Optional[dict], time_dim: int, batch: int) -> torch.Tensor:
    """SDXL ``text_time`` input: ``[text_embeds (B, 1280) | sinusoid(time_ids (B, 6)) (B, 6·time_dim)]``.

    Returns ``(B, 1280 + 6·time_dim)`` (2816 for SDXL) in ``text_embeds``' dtype.
    """
    if added_cond is None or "text_embeds" not in added_cond or "time_ids" not in added_cond:
        raise ValueError("this UNet has addition_embed_type='text_time' (SDXL): pass "
                         "added_cond={'text_embeds': (B, 1280), 'time_ids': (B, 6)}")
    text, ids = added_cond["text_embeds"], added_cond["time_ids"]
    if text.shape[0] != batch or ids.shape[0] != batch:
        raise ValueError(f"added_cond batch sizes {text.shape[0]}/{ids.shape[0]} != video batch {batch}")
    time_emb = timestep_embedding(ids.flatten(), time_dim).reshape(batch, -1)
    return torch.cat([text, time_emb.to(text.dtype)], dim=-1)


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """AnimateDiff frame PE ``(1, length, dim)`` float32: sin on even, cos on odd channels, base 10000."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


class SinusoidalPositionalEmbedding(nn.Module):
    """Adds ``pe[:, :F]`` to ``(N, F, C)`` tokens. ``pe`` is a non-persistent buffer that is regenerated
    whenever the module is moved/cast/materialised (``.to``, ``.half``, ``to_empty``), so a model built on
    the meta device and loaded from a checkpoint (which has no ``pe``) still gets the exact table."""

    def __init__(self, dim: int, max_seq_length: int = 32):
        super().__init__()
        self.dim = dim
        self.max_seq_length = max_seq_length
        self.register_buffer("pe", sinusoid_table(max_seq_length, dim), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if not self.pe.is_meta:
            self.pe = sinusoid_table(self.max_seq_length, self.dim).to(device=self.pe.device, dtype=self.pe.dtype)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(N, F, C)`` -> ``(N, F, C)``; F must be ≤ ``max_seq_length``."""
        num_frames = x.shape[1]
        if num_frames > self.max_seq_length:
            raise ValueError(f"{num_frames} frames exceed the motion module's positional-encoding length "
                             f"max_seq_length={self.max_seq_length}")
        return x + self.pe[:, :num_frames].to(x.dtype)
