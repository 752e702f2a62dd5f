"""Configuration dataclasses for the video UNet (spatial SD1.5/SDXL part) and the AnimateDiff motion module.

``UNetConfig`` mirrors the subset of diffusers' ``UNet2DConditionModel`` config that SD1.5/SD2.x/SDXL use (the
conversion to and from diffusers config dicts is ``i2v.checkpoints.diffusers_config``).
``MotionConfig`` describes one AnimateDiff release (see reference/checkpoints.md §4.2-4.3 for the norm modes).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

NORM_MODES = ("per_frame", "across_frames")
MOTION_VERSIONS = ("v1", "v2", "v3", "sdxl_beta", "custom")

def per_level(value: Any, n: int, name: str) -> tuple:
    """``value`` repeated for ``n`` levels, or the per-level list/tuple checked for length ``n``."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"diffusers config '{name}' has {len(value)} entries, expected one per level ({n})")
        return tuple(value)
    return (value,) * n


@dataclass
class UNetConfig:
    """Spatial UNet layout. Per-level tuples are in down-block order (level 0 = highest resolution)."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # CrossAttn{Down,Up}Block2D per level
    layers_per_block: int = 2                                        # resnets per down level (up: +1)
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)     # transformer depth per level
    num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)              # heads per level (diffusers attention_head_dim)
    cross_attention_dim: int = 768
    use_linear_projection: bool = False                              # False: 1x1 conv proj_in/out (SD1.x)
    addition_embed_type: Optional[str] = None                        # None | "text_time" (SDXL)
    addition_time_embed_dim: Optional[int] = None                    # 256 for SDXL
    projection_class_embeddings_input_dim: Optional[int] = None      # 2816 for SDXL
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    mid_transformer_layers: int = 1                                  # transformer depth of the mid block
    sample_size: int = 64                                            # latent size (informational)

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        n = len(self.block_out_channels)
        self.attention_levels = tuple(bool(a) for a in per_level(self.attention_levels, n, "attention_levels"))
        self.transformer_layers_per_block = tuple(
            int(d) for d in per_level(self.transformer_layers_per_block, n, "transformer_layers_per_block"))
        self.num_attention_heads = tuple(
            int(h) for h in per_level(self.num_attention_heads, n, "num_attention_heads"))
        if self.addition_embed_type not in (None, "text_time"):
            raise ValueError(f"addition_embed_type must be None or 'text_time', got {self.addition_embed_type!r}")
        if self.addition_embed_type == "text_time" and (
                self.addition_time_embed_dim is None or self.projection_class_embeddings_input_dim is None):
            raise ValueError("addition_embed_type='text_time' needs addition_time_embed_dim and "
                             "projection_class_embeddings_input_dim")
        for c, h, a in zip(self.block_out_channels, self.num_attention_heads, self.attention_levels):
            if c % self.norm_num_groups:
                raise ValueError(f"channels {c} not divisible by norm_num_groups {self.norm_num_groups}")
            if a and c % h:
                raise ValueError(f"channels {c} not divisible by num_attention_heads {h}")

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    def replace(self, **changes) -> "UNetConfig":
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------------------- presets
    @classmethod
    def sd15(cls) -> "UNetConfig":
        return cls()

    @classmethod
    def sdxl(cls) -> "UNetConfig":
        return cls(block_out_channels=(320, 640, 1280), attention_levels=(False, True, True),
                   transformer_layers_per_block=(1, 2, 10), num_attention_heads=(5, 10, 20),
                   cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                   addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                   mid_transformer_layers=10, sample_size=128)

    @classmethod
    def toy(cls) -> "UNetConfig":
        """SD1.5-style layout at CPU size: levels (32 ch cross-attn, 64 ch plain), 1 resnet/level, heads of
        width 32 (1 at level 0, 2 in the mid block; one 32-wide head runs SDPA ~2.4x faster on a CPU core than
        two 16-wide ones), context 64, GroupNorm 8 groups."""
        return cls(block_out_channels=(32, 64), attention_levels=(True, False), layers_per_block=1,
                   transformer_layers_per_block=(1, 1), num_attention_heads=(1, 2), cross_attention_dim=64,
                   norm_num_groups=8, mid_transformer_layers=1, sample_size=32)


# per-release defaults: (max_seq_length, use_mid_block, spatial_norm, motion_norm)
_VERSIONS = {
    "v1": (24, False, "across_frames", "per_frame"),
    "v2": (32, True, "per_frame", "per_frame"),
    "v3": (32, False, "per_frame", "per_frame"),
    "sdxl_beta": (32, False, "per_frame", "across_frames"),
}


@dataclass
class MotionConfig:
    """AnimateDiff motion module layout and the GroupNorm statistics a release was trained with.

    ``spatial_norm``: statistics of the UNet ResNet GroupNorms and ``conv_norm_out`` — ``per_frame`` on
    ``(b f) c h w`` or ``across_frames`` on ``b c f h w``. ``motion_norm``: the same for
    ``temporal_transformer.norm`` (diffusers ``motion_modules.*.norm``).
    """

    version: str = "v3"
    max_seq_length: int = 32                 # length of the sinusoidal PE table = max frame count
    use_mid_block: bool = False
    num_heads: int = 8
    norm_num_groups: int = 32
    layers_per_block: int = 2                # motion modules per down level (up levels: +1)
    spatial_norm: str = "per_frame"
    motion_norm: str = "per_frame"
    block_out_channels: tuple[int, ...] = field(default=(320, 640, 1280, 1280))

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if self.version not in MOTION_VERSIONS:
            raise ValueError(f"motion version must be one of {MOTION_VERSIONS}, got {self.version!r}")
        for name in ("spatial_norm", "motion_norm"):
            if getattr(self, name) not in NORM_MODES:
                raise ValueError(f"{name} must be one of {NORM_MODES}, got {getattr(self, name)!r}")
        for c in self.block_out_channels:
            if c % self.num_heads or c % self.norm_num_groups:
                raise ValueError(f"motion channels {c} not divisible by num_heads {self.num_heads} "
                                 f"and norm_num_groups {self.norm_num_groups}")

    def replace(self, **changes) -> "MotionConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def for_version(cls, version: str, unet_cfg: Optional[UNetConfig] = None) -> "MotionConfig":
        """Per-release defaults (reference/checkpoints.md §4.2-4.3) sized to ``unet_cfg`` (default SD1.5,
        SDXL for ``sdxl_beta``). Heads: 8 (all releases); for UNets narrower than 128 channels at level 0
        (the toy) ``C0 // 16``, so that heads stay ≥ 16 channels wide."""
        if version not in _VERSIONS:
            raise ValueError(f"unknown AnimateDiff version {version!r}; known: {sorted(_VERSIONS)}")
        unet_cfg = unet_cfg or (UNetConfig.sdxl() if version == "sdxl_beta" else UNetConfig.sd15())
        pe, mid, spatial, motion = _VERSIONS[version]
        heads = max(1, min(8, unet_cfg.block_out_channels[0] // 16))
        return cls(version=version, max_seq_length=pe, use_mid_block=mid, num_heads=heads,
                   norm_num_groups=unet_cfg.norm_num_groups, layers_per_block=unet_cfg.layers_per_block,
                   spatial_norm=spatial, motion_norm=motion, block_out_channels=unet_cfg.block_out_channels)

    def diffusers_norms(self) -> "MotionConfig":
        """Copy with the norm statistics of diffusers ``UNetMotionModel`` (spatial per frame, motion across)."""
        return self.replace(spatial_norm="per_frame", motion_norm="across_frames")
