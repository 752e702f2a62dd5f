"""Configuration dataclasses for the video UNet (spatial SD1.5/SDXL part) and the AnimateDiff motion module.

``UNetConfig`` mirrors the subset of diffusers' ``UNet2DConditionModel`` config that SD1.5/SD2.x/SDXL use;
``from_diffusers``/``to_diffusers`` convert both ways (unsupported non-default diffusers options raise).
``MotionConfig`` describes one AnimateDiff release (see reference/checkpoints.md §4.2-4.3 for the norm modes).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

NORM_MODES = ("per_frame", "across_frames")
MOTION_VERSIONS = ("v1", "v2", "v3", "sdxl_beta", "custom")

# diffusers keys we accept only at these values (anything else changes the architecture or maths)
_FIXED_DIFFUSERS = {
    "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0, "only_cross_attention": False,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "dual_cross_attention": False,
    "class_embed_type": None, "num_class_embeds": None, "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default",
    "class_embeddings_concat": False, "mid_block_only_cross_attention": None, "cross_attention_norm": None,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "reverse_transformer_layers_per_block": None,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "mid_block_layers": 1,
}
# diffusers keys without effect on our fp32/SDPA maths, or handled by MotionConfig
_IGNORED_DIFFUSERS = {
    "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "dropout", "upcast_attention",
    "addition_embed_type_num_heads", "motion_max_seq_length", "motion_num_attention_heads",
    "reverse_motion_num_attention_heads", "use_motion_mid_block", "temporal_transformer_layers_per_block",
    "reverse_temporal_transformer_layers_per_block", "temporal_transformer_layers_per_mid_block",
    "transformer_layers_per_mid_block",
}
_ATTN_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlockMotion")
_PLAIN_DOWN = ("DownBlock2D", "DownBlockMotion")


def _per_level(value: Any, n: int, name: str) -> tuple:
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
        self.attention_levels = tuple(bool(a) for a in _per_level(self.attention_levels, n, "attention_levels"))
        self.transformer_layers_per_block = tuple(
            int(d) for d in _per_level(self.transformer_layers_per_block, n, "transformer_layers_per_block"))
        self.num_attention_heads = tuple(
            int(h) for h in _per_level(self.num_attention_heads, n, "num_attention_heads"))
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

    # ----------------------------------------------------------------------------------------- diffusers
    @classmethod
    def from_diffusers(cls, config: dict) -> "UNetConfig":
        """Build from a diffusers ``UNet2DConditionModel`` (or ``UNetMotionModel``) config dict."""
        cfg = dict(config)
        for key, value in cfg.items():
            if key in _FIXED_DIFFUSERS:
                if isinstance(value, (list, tuple)) and key == "only_cross_attention":
                    value = any(value)
                if value != _FIXED_DIFFUSERS[key]:
                    raise ValueError(f"diffusers UNet config: unsupported {key}={value!r} "
                                     f"(only {_FIXED_DIFFUSERS[key]!r} is implemented)")
            elif key not in _IGNORED_DIFFUSERS and key not in _DIFFUSERS_FIELDS:
                raise ValueError(f"diffusers UNet config: unknown key {key!r}")
        down = tuple(cfg.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
        for t in down:
            if t not in _ATTN_DOWN + _PLAIN_DOWN:
                raise ValueError(f"diffusers UNet config: unsupported down block type {t!r}")
        n = len(down)
        levels = tuple(t in _ATTN_DOWN for t in down)
        up = tuple(cfg.get("up_block_types", ()))
        expected_up = tuple(reversed(levels))
        if up and tuple("CrossAttn" in t for t in up) != expected_up:
            raise ValueError(f"diffusers UNet config: up_block_types {up} do not mirror down_block_types {down}")
        lpb = cfg.get("layers_per_block", 2)
        if isinstance(lpb, (list, tuple)):
            if len(set(lpb)) != 1:
                raise ValueError(f"diffusers UNet config: per-level layers_per_block {lpb} is not supported")
            lpb = lpb[0]
        heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
        depth = _per_level(cfg.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block")
        if any(isinstance(d, (list, tuple)) for d in depth):
            raise ValueError("diffusers UNet config: nested transformer_layers_per_block is not supported")
        mid_depth = cfg.get("transformer_layers_per_mid_block") or depth[-1]
        ca = cfg.get("cross_attention_dim", 1280)
        if isinstance(ca, (list, tuple)):
            if len(set(ca)) != 1:
                raise ValueError(f"diffusers UNet config: per-level cross_attention_dim {ca} is not supported")
            ca = ca[0]
        ss = cfg.get("sample_size", 64)
        return cls(in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4),
                   block_out_channels=tuple(cfg.get("block_out_channels", (320, 640, 1280, 1280))),
                   attention_levels=levels, layers_per_block=int(lpb), transformer_layers_per_block=depth,
                   num_attention_heads=_per_level(heads, n, "attention_head_dim"), cross_attention_dim=int(ca),
                   use_linear_projection=bool(cfg.get("use_linear_projection", False)),
                   addition_embed_type=cfg.get("addition_embed_type"),
                   addition_time_embed_dim=cfg.get("addition_time_embed_dim"),
                   projection_class_embeddings_input_dim=cfg.get("projection_class_embeddings_input_dim"),
                   norm_num_groups=cfg.get("norm_num_groups", 32), norm_eps=cfg.get("norm_eps", 1e-5),
                   mid_transformer_layers=int(mid_depth),
                   sample_size=int(ss[0] if isinstance(ss, (list, tuple)) else (ss or 64)))

    def to_diffusers(self) -> dict:
        """kwargs for diffusers ``UNet2DConditionModel(**kw)`` building the same architecture."""
        depth = list(self.transformer_layers_per_block)
        if self.attention_levels[-1]:
            if depth[-1] != self.mid_transformer_layers:
                raise ValueError("diffusers ties the mid-block depth to the last level's transformer depth: "
                                 f"{self.mid_transformer_layers} != {depth[-1]}")
        else:
            depth[-1] = self.mid_transformer_layers  # unused by the plain last level
        out = dict(
            sample_size=self.sample_size, in_channels=self.in_channels, out_channels=self.out_channels,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention_levels)),
            block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block,
            transformer_layers_per_block=tuple(depth), attention_head_dim=self.num_attention_heads,
            cross_attention_dim=self.cross_attention_dim, use_linear_projection=self.use_linear_projection,
            norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps,
        )
        if self.addition_embed_type is not None:
            out.update(addition_embed_type=self.addition_embed_type,
                       addition_time_embed_dim=self.addition_time_embed_dim,
                       projection_class_embeddings_input_dim=self.projection_class_embeddings_input_dim)
        return out


_DIFFUSERS_FIELDS = {
    "sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "transformer_layers_per_block", "attention_head_dim", "num_attention_heads",
    "cross_attention_dim", "use_linear_projection", "addition_embed_type", "addition_time_embed_dim",
    "projection_class_embeddings_input_dim", "norm_num_groups", "norm_eps",
}

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

    def to_diffusers_adapter(self) -> dict:
        """kwargs for diffusers ``MotionAdapter(**kw)`` holding the same motion modules."""
        return dict(block_out_channels=self.block_out_channels, motion_layers_per_block=self.layers_per_block,
                    motion_mid_block_layers_per_block=1, motion_num_attention_heads=self.num_heads,
                    motion_norm_num_groups=self.norm_num_groups, motion_max_seq_length=self.max_seq_length,
                    use_motion_mid_block=self.use_mid_block)

    @classmethod
    def from_diffusers_adapter(cls, config: dict, version: str = "custom", *, spatial_norm: str = "per_frame",
                               motion_norm: str = "across_frames") -> "MotionConfig":
        """Build from a diffusers ``MotionAdapter`` config dict (norms default to diffusers' behaviour)."""
        for key in ("motion_transformer_layers_per_block", "motion_transformer_layers_per_mid_block",
                    "motion_mid_block_layers_per_block"):
            if config.get(key, 1) not in (1, None) and not (
                    isinstance(config.get(key), (list, tuple)) and set(config[key]) == {1}):
                raise ValueError(f"diffusers MotionAdapter config: unsupported {key}={config[key]!r}")
        if config.get("conv_in_channels"):
            raise ValueError("diffusers MotionAdapter config: conv_in_channels (PIA) is not supported")
        heads = config.get("motion_num_attention_heads", 8)
        lpb = config.get("motion_layers_per_block", 2)
        for name, v in (("motion_num_attention_heads", heads), ("motion_layers_per_block", lpb)):
            if isinstance(v, (list, tuple)) and len(set(v)) != 1:
                raise ValueError(f"diffusers MotionAdapter config: per-level {name}={v!r} is not supported")
        first = lambda v: v[0] if isinstance(v, (list, tuple)) else v  # noqa: E731
        return cls(version=version, max_seq_length=config.get("motion_max_seq_length", 32),
                   use_mid_block=bool(config.get("use_motion_mid_block", True)), num_heads=int(first(heads)),
                   norm_num_groups=config.get("motion_norm_num_groups", 32), layers_per_block=int(first(lpb)),
                   spatial_norm=spatial_norm, motion_norm=motion_norm,
                   block_out_channels=tuple(config.get("block_out_channels", (320, 640, 1280, 1280))))
