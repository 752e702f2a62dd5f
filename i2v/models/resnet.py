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
from einops import rearrange
from torch import nn


class FrameGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same ``weight``/``bias`` keys) with a ``per_frame`` / ``across_frames`` switch.

    ``across_frames`` runs the GroupNorm on the contiguous ``b c f h w`` layout: one layout copy in (GroupNorm
    on a permuted view is several times slower on CPU) and, in :meth:`forward`, one copy back.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, across_frames: bool = False):
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.across_frames = across_frames

    def _gn(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def video(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x ``(B·F, C, H, W)`` -> normalised ``(B, C, F, H, W)`` (a strided view for ``per_frame``)."""
        if self.across_frames and num_frames > 1:
            return self._gn(rearrange(x, "(b f) c h w -> b c f h w", f=num_frames).contiguous())
        return rearrange(self._gn(x), "(b f) c h w -> b c f h w", f=num_frames)

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """x ``(B·F, C, H, W)``, ``num_frames`` F -> same shape."""
        if self.across_frames and num_frames > 1:
            return rearrange(self.video(x, num_frames), "b c f h w -> (b f) c h w")
        return self._gn(x)


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
