"""ResNet block, down/upsampler and the frame-aware GroupNorm of the video UNet.

Spatial layers see frames stacked in the batch, ``(B·F, C, H, W)``. A :class:`FrameGroupNorm` normalises
either each frame on its own (``per_frame``: plain GroupNorm on ``(b f) c h w``) or with statistics over all
frames of a video (``across_frames``: GroupNorm on ``b c f h w``, as AnimateDiff v1 ran the UNet's norms and as
diffusers runs the motion module's norm). Keys follow diffusers: ``norm1, conv1, time_emb_proj, norm2, conv2,
conv_shortcut``; ``downsamplers.0.conv``; ``upsamplers.0.conv``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm_stats(x: torch.Tensor, num_frames: int, groups: int, eps: float,
                     across_frames: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm statistics of ``x (B·F, C, H, W)`` -> ``(mean, rstd)`` float32, each ``(B, F or 1, G)``.

    ``across_frames`` pools each group over all F frames of a video; otherwise each frame separately.
    Statistics are computed in float32 (a copy only for half/bfloat16 inputs).
    """
    bf = x.shape[0]
    if bf % num_frames:
        raise ValueError(f"batch·frames {bf} is not a multiple of num_frames {num_frames}")
    xv = x.reshape(bf // num_frames, num_frames, groups, -1)  # (b, f, g, c/g·h·w)
    if xv.dtype != torch.float32 and xv.dtype != torch.float64:
        xv = xv.float()
    dims = (1, 3) if across_frames else (3,)
    var, mean = torch.var_mean(xv, dim=dims, correction=0, keepdim=True)
    return mean.squeeze(-1), torch.rsqrt(var.squeeze(-1) + eps)


def frame_norm_affine(x: torch.Tensor, num_frames: int, norm: nn.GroupNorm,
                      across_frames: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` of shape ``(B, F or 1, C)`` (dtype of x) such that
    ``GroupNorm(x) = x · scale + shift`` with the chosen statistics (affine weight/bias folded in)."""
    c = x.shape[1]
    mean, rstd = group_norm_stats(x, num_frames, norm.num_groups, norm.eps, across_frames)
    rep = c // norm.num_groups
    mean, rstd = mean.repeat_interleave(rep, dim=-1), rstd.repeat_interleave(rep, dim=-1)  # (b, f|1, c)
    weight = norm.weight.float() if norm.weight is not None else torch.ones(c, device=x.device)
    bias = norm.bias.float() if norm.bias is not None else torch.zeros(c, device=x.device)
    scale = rstd * weight
    shift = bias - mean * scale
    return scale.to(x.dtype), shift.to(x.dtype)


def group_norm_across_frames(x: torch.Tensor, num_frames: int, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm of ``x (B·F, C, H, W)`` with statistics over each video's frames -> ``(B·F, C, H, W)``.

    Equals ``F.group_norm`` on ``rearrange(x, "(b f) c h w -> b c f h w")`` (rearranged back), without the
    two layout copies: one statistics pass and one fused multiply-add.
    """
    bf, c, h, w = x.shape
    scale, shift = frame_norm_affine(x, num_frames, norm, across_frames=True)  # (b, 1, c)
    b = bf // num_frames
    out = torch.addcmul(shift.view(b, 1, c, 1, 1), x.reshape(b, num_frames, c, h, w), scale.view(b, 1, c, 1, 1))
    return out.view(bf, c, h, w)


class FrameGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same ``weight``/``bias`` keys) with a ``per_frame`` / ``across_frames`` switch.

    forward: x ``(B·F, C, H, W)``, ``num_frames`` F -> same shape.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, across_frames: bool = False):
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.across_frames = across_frames

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        if self.across_frames and num_frames > 1:
            return group_norm_across_frames(x, num_frames, self)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def _silu(x: torch.Tensor) -> torch.Tensor:
    # in place when no graph is recorded (the norm output is a fresh tensor that nothing else reads)
    return F.silu(x, inplace=not torch.is_grad_enabled())


class ResnetBlock2D(nn.Module):
    """SD ResNet block: ``norm1 -> SiLU -> conv1 (+ time_emb_proj(SiLU(temb))) -> norm2 -> SiLU -> conv2``
    plus the (1x1 ``conv_shortcut`` if channels change) skip.

    forward: x ``(B·F, Cin, H, W)``, temb ``(B·F, T)``, ``num_frames`` -> ``(B·F, Cout, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float,
                 across_frames: bool = False):
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels, eps, across_frames)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = FrameGroupNorm(groups, out_channels, eps, across_frames)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        h = self.conv1(_silu(self.norm1(x, num_frames)))
        h.add_(self.time_emb_proj(F.silu(temb))[:, :, None, None])  # conv outputs: safe to update in place
        h = self.conv2(self.dropout(_silu(self.norm2(h, num_frames))))
        return h.add_(x if self.conv_shortcut is None else self.conv_shortcut(x))


class Downsample2D(nn.Module):
    """3x3 stride-2 conv (``conv``): ``(N, C, H, W) -> (N, C, ⌈H/2⌉, ⌈W/2⌉)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest x2 (or to ``size``) then 3x3 conv (``conv``): ``(N, C, H, W) -> (N, C, 2H, 2W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x)
