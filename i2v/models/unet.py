"""The video UNet: SD1.5/SDXL spatial UNet (diffusers weight names) + optional AnimateDiff motion modules.

Down/mid/up blocks run spatial layers on ``(B·F, C, H, W)``; each level's layer is resnet -> transformer (if
the level has attention) -> motion module (if any); the mid block is resnet -> transformer -> motion -> resnet.
Without a motion module the model is the per-frame text-to-image UNet (same keys as diffusers
``UNet2DConditionModel``); with one, the keys equal diffusers ``UNetMotionModel``'s minus ``*.pos_embed.pe``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import MotionConfig, UNetConfig
from .embeddings import TimestepEmbedding, text_time_input, timestep_embedding
from .motion import MotionModule
from .resnet import Downsample2D, FrameGroupNorm, ResnetBlock2D, Upsample2D
from .transformer import Transformer2D


@dataclass
class LevelSpec:
    """Everything one down/mid/up block needs (derived from UNetConfig + MotionConfig)."""

    channels: int                # block output channels
    temb: int                    # time-embedding width
    layers: int                  # resnets in the block
    attention: bool              # has Transformer2D layers
    heads: int
    depth: int                   # BasicTransformerBlocks per Transformer2D
    context_dim: int
    linear_projection: bool
    groups: int
    eps: float
    spatial_across: bool         # ResNet GroupNorm statistics over all frames
    motion: Optional[MotionConfig]

    def resnet(self, cin: int) -> ResnetBlock2D:
        return ResnetBlock2D(cin, self.channels, self.temb, self.groups, self.eps, self.spatial_across)

    def transformer(self) -> Transformer2D:
        return Transformer2D(self.channels, self.heads, self.context_dim, self.depth, self.groups,
                             self.linear_projection)

    def motion_modules(self, n: int) -> Optional[nn.ModuleList]:
        if self.motion is None:
            return None
        return nn.ModuleList([MotionModule.from_config(self.channels, self.motion) for _ in range(n)])


def _layer(block: nn.Module, i: int, h: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor,
           num_frames: int) -> torch.Tensor:
    """resnet i -> attention i -> motion module i of a down/up block."""
    h = block.resnets[i](h, temb, num_frames)
    if block.attentions is not None:
        h = block.attentions[i](h, ctx, num_frames)
    if block.motion_modules is not None:
        h = block.motion_modules[i](h, num_frames)
    return h


class DownBlock(nn.Module):
    """``resnets`` (+ ``attentions``) (+ ``motion_modules``) (+ ``downsamplers.0``).

    forward: h ``(B·F, Cin, H, W)`` -> (h ``(B·F, C, H', W')``, skips: one per layer (+ downsampled)).
    """

    def __init__(self, spec: LevelSpec, in_channels: int, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([spec.resnet(in_channels if i == 0 else spec.channels)
                                      for i in range(spec.layers)])
        self.attentions = nn.ModuleList([spec.transformer() for _ in range(spec.layers)]) if spec.attention else None
        self.motion_modules = spec.motion_modules(spec.layers)
        self.downsamplers = nn.ModuleList([Downsample2D(spec.channels)]) if add_downsample else None

    def forward(self, h, temb, ctx, num_frames):
        skips = []
        for i in range(len(self.resnets)):
            h = _layer(self, i, h, temb, ctx, num_frames)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, tuple(skips)


class UpBlock(nn.Module):
    """Each layer concatenates one skip (channels last-in-first-out) before its resnet; ``upsamplers.0`` last.

    forward: h, skips (consumed from the end), ... -> h ``(B·F, C, H'', W'')``.
    """

    def __init__(self, spec: LevelSpec, prev_channels: int, skip_channels: Sequence[int], add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([spec.resnet((prev_channels if i == 0 else spec.channels) + skip_channels[i])
                                      for i in range(spec.layers)])
        self.attentions = nn.ModuleList([spec.transformer() for _ in range(spec.layers)]) if spec.attention else None
        self.motion_modules = spec.motion_modules(spec.layers)
        self.upsamplers = nn.ModuleList([Upsample2D(spec.channels)]) if add_upsample else None

    def forward(self, h, skips, temb, ctx, num_frames, upsample_size=None):
        for i in range(len(self.resnets)):
            h = torch.cat([h, skips[-1 - i]], dim=1)
            h = _layer(self, i, h, temb, ctx, num_frames)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, upsample_size)
        return h


class MidBlock(nn.Module):
    """``resnets.0 -> attentions.0 -> (motion_modules.0) -> resnets.1`` at constant width."""

    def __init__(self, spec: LevelSpec):
        super().__init__()
        self.attentions = nn.ModuleList([spec.transformer()])
        self.resnets = nn.ModuleList([spec.resnet(spec.channels), spec.resnet(spec.channels)])
        self.motion_modules = spec.motion_modules(1)

    def forward(self, h, temb, ctx, num_frames):
        h = self.resnets[0](h, temb, num_frames)
        h = self.attentions[0](h, ctx, num_frames)
        if self.motion_modules is not None:
            h = self.motion_modules[0](h, num_frames)
        return self.resnets[1](h, temb, num_frames)


class VideoUNet(nn.Module):
    """SD1.5/SDXL UNet over video latents, with optional AnimateDiff motion modules (see module docstring)."""

    def __init__(self, cfg: UNetConfig, motion: Optional[MotionConfig] = None):
        super().__init__()
        if motion is not None and (tuple(motion.block_out_channels) != cfg.block_out_channels
                                   or motion.layers_per_block != cfg.layers_per_block):
            raise ValueError(f"motion module layout (channels {motion.block_out_channels}, layers_per_block "
                             f"{motion.layers_per_block}) does not fit the UNet ({cfg.block_out_channels}, "
                             f"{cfg.layers_per_block})")
        self.config, self.motion_config = cfg, motion
        self.gradient_checkpointing = False
        chans, n, temb = cfg.block_out_channels, cfg.num_levels, cfg.time_embed_dim
        across = motion is not None and motion.spatial_norm == "across_frames"

        def spec(level: int, layers: int, motion_cfg: Optional[MotionConfig], attention: Optional[bool] = None,
                 depth: Optional[int] = None) -> LevelSpec:
            return LevelSpec(chans[level], temb, layers, cfg.attention_levels[level] if attention is None
                             else attention, cfg.num_attention_heads[level],
                             cfg.transformer_layers_per_block[level] if depth is None else depth,
                             cfg.cross_attention_dim, cfg.use_linear_projection, cfg.norm_num_groups, cfg.norm_eps,
                             across, motion_cfg)

        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb)
        self.add_embedding = (TimestepEmbedding(cfg.projection_class_embeddings_input_dim, temb)
                              if cfg.addition_embed_type == "text_time" else None)
        self.down_blocks = nn.ModuleList()  # registered before mid_block, as in diffusers (attention order)
        self.up_blocks = nn.ModuleList()
        skip_channels = [chans[0]]
        for i in range(n):
            self.down_blocks.append(DownBlock(spec(i, cfg.layers_per_block, motion), chans[max(i - 1, 0)],
                                              add_downsample=i < n - 1))
            skip_channels += [chans[i]] * (cfg.layers_per_block + (i < n - 1))
        mid_motion = motion if motion is not None and motion.use_mid_block else None
        self.mid_block = MidBlock(spec(n - 1, 1, mid_motion, attention=True, depth=cfg.mid_transformer_layers))
        prev = chans[-1]
        for j, i in enumerate(reversed(range(n))):
            layers = cfg.layers_per_block + 1
            mine, skip_channels = skip_channels[-layers:], skip_channels[:-layers]
            self.up_blocks.append(UpBlock(spec(i, layers, motion), prev, mine[::-1], add_upsample=i > 0))
            prev = chans[i]
        self.conv_norm_out = FrameGroupNorm(cfg.norm_num_groups, chans[0], cfg.norm_eps, across)
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)

    # ------------------------------------------------------------------------------------------------ helpers
    def _run(self, fn, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _timesteps(self, t: Union[torch.Tensor, int, float], batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0 or t.numel() == 1:
            return t.reshape(1).expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"timesteps must be a scalar or shaped (B,)=({batch},), got {tuple(t.shape)}")
        return t

    def forward(self, x: torch.Tensor, t: Union[torch.Tensor, int, float], context: torch.Tensor,
                added_cond: Optional[dict] = None, down_residuals: Optional[Sequence[torch.Tensor]] = None,
                mid_residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict ε for a video latent.

        x ``(B, C, F, H, W)``; t ``(B,)`` or scalar (shared by all frames); context ``(B, L, d)`` (shared by all
        frames); added_cond SDXL ``{"text_embeds": (B, 1280), "time_ids": (B, 6)}``; down_residuals /
        mid_residual: ControlNet residuals on ``(B·F, C, h, w)`` (diffusers ``down_block_res_samples`` order),
        added where diffusers ``UNet2DConditionModel`` adds them. Returns ``(B, out_channels, F, H, W)``.
        """
        if x.ndim != 5:
            raise ValueError(f"VideoUNet expects x shaped (B, C, F, H, W), got {tuple(x.shape)}")
        b, _, num_frames, _, _ = x.shape
        if self.motion_config is not None and num_frames > self.motion_config.max_seq_length:
            raise ValueError(f"{num_frames} frames exceed the motion module's positional-encoding length "
                             f"max_seq_length={self.motion_config.max_seq_length}")
        if context.ndim != 3 or context.shape[0] != b:
            raise ValueError(f"context must be (B, L, d) with B={b}, got {tuple(context.shape)}")
        t = self._timesteps(t, b, x.device)
        emb = self.time_embedding(timestep_embedding(t, self.config.block_out_channels[0])
                                  .to(self.time_embedding.linear_1.weight.dtype))
        if self.add_embedding is not None:
            add = text_time_input(added_cond, self.config.addition_time_embed_dim, b)
            emb = emb + self.add_embedding(add.to(emb.dtype))
        if num_frames > 1:  # one copy per forward, shared by every layer
            emb = emb.repeat_interleave(num_frames, dim=0)
            context = context.repeat_interleave(num_frames, dim=0)

        h = self.conv_in(rearrange(x, "b c f h w -> (b f) c h w"))
        skips = [h]
        for block in self.down_blocks:
            h, s = self._run(block, h, emb, context, num_frames)
            skips.extend(s)
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                raise ValueError(f"down_residuals has {len(down_residuals)} tensors, this UNet has {len(skips)} "
                                 "skip connections")
            skips = [s + r for s, r in zip(skips, down_residuals)]
        h = self._run(self.mid_block, h, emb, context, num_frames)
        if mid_residual is not None:
            h = h + mid_residual
        for block in self.up_blocks:
            k = len(block.resnets)
            mine, skips = skips[-k:], skips[:-k]
            size = skips[-1].shape[-2:] if (block.upsamplers is not None and skips) else None
            h = self._run(block, h, mine, emb, context, num_frames, size)
        h = self.conv_out(F.silu(self.conv_norm_out(h, num_frames)))
        return rearrange(h, "(b f) c h w -> b c f h w", f=num_frames)


_PRESETS = {"sd15": UNetConfig.sd15, "sdxl": UNetConfig.sdxl, "toy": UNetConfig.toy}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_video_unet(name: str, motion: Optional[str] = None, *, device: Union[str, torch.device] = "cpu",
                     dtype: torch.dtype = torch.float32, **overrides) -> VideoUNet:
    """Build a preset (``sd15`` | ``sdxl`` | ``toy``) with an optional motion module (``v1`` | ``v2`` | ``v3`` |
    ``sdxl_beta``), directly on ``device`` (``"meta"`` for counting) in ``dtype``.

    ``overrides`` replace UNetConfig fields (``in_channels=3``) or MotionConfig fields with a ``motion_``
    prefix (``motion_max_seq_length=16``).
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(_PRESETS)}")
    unet_fields = {f.name for f in dataclasses.fields(UNetConfig)}
    motion_fields = {f.name for f in dataclasses.fields(MotionConfig)}
    unet_over, motion_over = {}, {}
    for key, value in overrides.items():
        if key.startswith("motion_") and key[len("motion_"):] in motion_fields:
            motion_over[key[len("motion_"):]] = value
        elif key in unet_fields:
            unet_over[key] = value
        else:
            raise TypeError(f"build_video_unet: unknown override {key!r} (UNetConfig fields, or motion_<field> "
                            f"for MotionConfig fields {sorted(motion_fields)})")
    cfg = _PRESETS[name]().replace(**unet_over)
    motion_cfg = None
    if motion is not None:
        motion_cfg = MotionConfig.for_version(motion, cfg).replace(**motion_over)
    elif motion_over:
        raise ValueError(f"motion overrides {sorted(motion_over)} given without a motion version")
    with torch.device(device), _default_dtype(dtype):
        return VideoUNet(cfg, motion_cfg)
