"""diffusers config dicts <-> our model configs: ``UNet2DConditionModel``/``UNetMotionModel`` configs and
``UNetConfig``, ``MotionAdapter`` configs and ``MotionConfig`` (unsupported non-default diffusers options raise)."""
from __future__ import annotations

from i2v.models.config import MotionConfig, UNetConfig, per_level

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


_DIFFUSERS_FIELDS = {
    "sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "transformer_layers_per_block", "attention_head_dim", "num_attention_heads",
    "cross_attention_dim", "use_linear_projection", "addition_embed_type", "addition_time_embed_dim",
    "projection_class_embeddings_input_dim", "norm_num_groups", "norm_eps",
}


def unet_config_from_diffusers(config: dict) -> UNetConfig:
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
    depth = per_level(cfg.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block")
    if any(isinstance(d, (list, tuple)) for d in depth):
        raise ValueError("diffusers UNet config: nested transformer_layers_per_block is not supported")
    mid_depth = cfg.get("transformer_layers_per_mid_block") or depth[-1]
    ca = cfg.get("cross_attention_dim", 1280)
    if isinstance(ca, (list, tuple)):
        if len(set(ca)) != 1:
            raise ValueError(f"diffusers UNet config: per-level cross_attention_dim {ca} is not supported")
        ca = ca[0]
    ss = cfg.get("sample_size", 64)
    return UNetConfig(in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4),
               block_out_channels=tuple(cfg.get("block_out_channels", (320, 640, 1280, 1280))),
               attention_levels=levels, layers_per_block=int(lpb), transformer_layers_per_block=depth,
               num_attention_heads=per_level(heads, n, "attention_head_dim"), cross_attention_dim=int(ca),
               use_linear_projection=bool(cfg.get("use_linear_projection", False)),
               addition_embed_type=cfg.get("addition_embed_type"),
               addition_time_embed_dim=cfg.get("addition_time_embed_dim"),
               projection_class_embeddings_input_dim=cfg.get("projection_class_embeddings_input_dim"),
               norm_num_groups=cfg.get("norm_num_groups", 32), norm_eps=cfg.get("norm_eps", 1e-5),
               mid_transformer_layers=int(mid_depth),
               sample_size=int(ss[0] if isinstance(ss, (list, tuple)) else (ss or 64)))

def unet_config_to_diffusers(cfg: UNetConfig) -> dict:
    """kwargs for diffusers ``UNet2DConditionModel(**kw)`` building the same architecture."""
    depth = list(cfg.transformer_layers_per_block)
    if cfg.attention_levels[-1]:
        if depth[-1] != cfg.mid_transformer_layers:
            raise ValueError("diffusers ties the mid-block depth to the last level's transformer depth: "
                             f"{cfg.mid_transformer_layers} != {depth[-1]}")
    else:
        depth[-1] = cfg.mid_transformer_layers  # unused by the plain last level
    out = dict(
        sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels)),
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        transformer_layers_per_block=tuple(depth), attention_head_dim=cfg.num_attention_heads,
        cross_attention_dim=cfg.cross_attention_dim, use_linear_projection=cfg.use_linear_projection,
        norm_num_groups=cfg.norm_num_groups, norm_eps=cfg.norm_eps,
    )
    if cfg.addition_embed_type is not None:
        out.update(addition_embed_type=cfg.addition_embed_type,
                   addition_time_embed_dim=cfg.addition_time_embed_dim,
                   projection_class_embeddings_input_dim=cfg.projection_class_embeddings_input_dim)
    return out


def motion_config_to_diffusers(cfg: MotionConfig) -> dict:
    """kwargs for diffusers ``MotionAdapter(**kw)`` holding the same motion modules."""
    return dict(block_out_channels=cfg.block_out_channels, motion_layers_per_block=cfg.layers_per_block,
                motion_mid_block_layers_per_block=1, motion_num_attention_heads=cfg.num_heads,
                motion_norm_num_groups=cfg.norm_num_groups, motion_max_seq_length=cfg.max_seq_length,
                use_motion_mid_block=cfg.use_mid_block)

def motion_config_from_diffusers(config: dict, version: str = "custom", *, spatial_norm: str = "per_frame",
                                 motion_norm: str = "across_frames") -> MotionConfig:
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
    return MotionConfig(version=version, max_seq_length=config.get("motion_max_seq_length", 32),
               use_mid_block=bool(config.get("use_motion_mid_block", True)), num_heads=int(first(heads)),
               norm_num_groups=config.get("motion_norm_num_groups", 32), layers_per_block=int(first(lpb)),
               spatial_norm=spatial_norm, motion_norm=motion_norm,
               block_out_channels=tuple(config.get("block_out_channels", (320, 640, 1280, 1280))))
