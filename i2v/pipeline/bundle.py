"""The frozen text-to-video model with its adapters, built from the ``backbone`` and ``adapter`` config groups.

A :class:`Bundle` holds everything one training step or one sampled video needs -- the video UNet (spatial +
motion, with the I2V-Adapter and Content-Adapter attached), the latent codec (VAE), the text encoder, the image
encoder + IP-Adapter projection, and the noise schedule -- behind four calls: ``encode_video``, ``decode_video``,
``condition`` and ``trainable``. The same code serves ``sd15``, ``sdxl`` and the CPU ``toy`` backbone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from torch import nn

from i2v.checkpoints.official_base import single_file_parts
from i2v.config import missing_paths
from i2v.diffusion.schedule import NoiseSchedule

# Paths each backbone needs (the Content-Adapter ones only when adapter.content is on).
REQUIRED = {"sd15": ["unet", "motion", "text_encoder", "tokenizer"],
            "sdxl": ["unet", "motion", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"],
            "toy": ["unet", "text_encoder"]}
CONTENT_REQUIRED = ["ip_adapter", "image_encoder"]


def check_paths(backbone: DictConfig, adapter: DictConfig) -> None:
    """Raise one error naming every unset or non-existent weight path the run needs."""
    keys = list(REQUIRED[backbone.name])
    single = backbone.name != "toy" and backbone.get("unet") and Path(str(backbone.unet)).is_file()
    inside = single_file_parts(str(backbone.unet)) if single else set()
    if "text" in inside and backbone.get("text_from_single_file", True):
        keys = [k for k in keys if not k.startswith("text_encoder")]  # the single file carries them
    if "motion" in inside:
        keys.remove("motion")          # a merged UNet3D base (official I2V-Adapter release) carries its own
    if adapter.content:
        keys += CONTENT_REQUIRED
    if backbone.name != "toy" and backbone.get("vae") is None and backbone.get("unet") and \
            (Path(str(backbone.unet)).is_dir() or (single and "vae" not in inside)):
        keys.append("vae")  # a diffusers UNet folder or a merged base carries no VAE; an LDM single file does
    missing = missing_paths(backbone, keys, "backbone")
    if missing:
        lines = "\n  ".join(missing)
        raise FileNotFoundError(f"backbone={backbone.name} needs these weight paths (see README, 'Real weights'):\n"
                                f"  {lines}")


class Bundle(nn.Module):
    """See module docstring. ``trainable`` maps UNet state-dict names to the I2V-Adapter parameters."""

    def __init__(self, name: str, unet: nn.Module, codec: nn.Module, text: nn.Module, schedule: NoiseSchedule,
                 image_encoder: Optional[nn.Module] = None, image_proj: Optional[nn.Module] = None,
                 trainable: Optional[dict[str, nn.Parameter]] = None,
                 resolution: int = 512, config: Optional[dict] = None):
        super().__init__()
        self.name = name
        self.unet, self.codec, self.text = unet, codec, text
        self.image_encoder, self.image_proj = image_encoder, image_proj
        self.schedule = schedule
        self.trainable = dict(trainable or {})
        self.resolution = resolution
        self.config = config or {}

    @property
    def content_enabled(self) -> bool:
        return self.image_proj is not None

    @property
    def pixel_multiple(self) -> int:
        """Video height and width must be multiples of this: codec downsampling x 2^(UNet levels - 1)."""
        levels = len(self.unet.config.block_out_channels)
        return int(getattr(self.codec, "downsample", 1)) * 2 ** (levels - 1)

    @property
    def max_frames(self) -> Optional[int]:
        """The motion module's positional-encoding length (``None`` without a motion module)."""
        motion = getattr(self.unet, "motion_config", None)
        return None if motion is None else int(motion.max_seq_length)

    def check_video_shape(self, height: int, width: int, frames: int) -> None:
        """Raise a ``ValueError`` naming the limit when a video of this shape cannot be generated or trained."""
        m = self.pixel_multiple
        if height % m or width % m or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {m} for backbone {self.name} "
                             f"(VAE downsampling x 2^(UNet levels - 1)), got {height}x{width}; e.g. "
                             f"{max(m, round(height / m) * m)}x{max(m, round(width / m) * m)}")
        if self.max_frames is not None and frames > self.max_frames:
            raise ValueError(f"frames={frames} exceeds the motion module's positional-encoding length "
                             f"{self.max_frames}")

    # ------------------------------------------------------------------ latents
    def encode_video(self, video: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Pixels (B, F, 3, H, W) in [-1, 1] -> scaled latents (B, C, F, h, w)."""
        b = video.shape[0]
        z = self.codec.encode(rearrange(video, "b f c h w -> (b f) c h w"), generator=generator)
        return rearrange(z, "(b f) c h w -> b c f h w", b=b)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, F, h, w) -> pixels (B, F, 3, H, W), clamped to [-1, 1]."""
        b = latents.shape[0]
        x = self.codec.decode(rearrange(latents, "b c f h w -> (b f) c h w"))
        return rearrange(x, "(b f) c h w -> b f c h w", b=b).clamp(-1, 1)

    # ------------------------------------------------------------------ conditions
    def image_tokens(self, images: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """Content-Adapter tokens (B, N, d) for first frames (B, 3, H, W) in [-1, 1]; ``images=None`` gives the
        unconditional tokens (reference §5.4: base = proj(zeros), Plus = the encoder on an all-zero image)."""
        from i2v.models.content import image_tokens, uncond_image_tokens

        if images is None:
            return uncond_image_tokens(self.image_proj, self.image_encoder, batch)
        return image_tokens(self.image_proj, self.image_encoder(images))

    def added_cond(self, pooled: Optional[torch.Tensor], batch: int, hw: Optional[tuple[int, int]] = None):
        if self.name != "sdxl":
            return None
        h, w = hw or (self.resolution, self.resolution)
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=pooled.dtype, device=pooled.device).expand(batch, -1)
        return {"text_embeds": pooled, "time_ids": time_ids}

    def condition(self, texts: list[str], first_frames: Optional[torch.Tensor] = None,
                  drop_image: Optional[torch.Tensor] = None, hw: Optional[tuple[int, int]] = None) -> dict:
        """UNet conditions for a batch: ``{"context": (B, L[+N], d), "added_cond": dict | None}``.

        Args:
            texts: B prompts ("" = unconditional text).
            first_frames: (B, 3, H, W) in [-1, 1], the Content-Adapter input (ignored when it is off).
            drop_image: (B,) bool; True rows get the unconditional image tokens.
        """
        out = self.text(list(texts))
        ctx = out["context"]
        b = ctx.shape[0]
        if self.content_enabled:
            if first_frames is None:
                tok = self.image_tokens(None, b)
            else:
                tok = self.image_tokens(first_frames, b)
                if drop_image is not None and bool(drop_image.any()):
                    unc = self.image_tokens(None, b)
                    tok = torch.where(drop_image.view(-1, 1, 1), unc, tok)
            ctx = torch.cat([ctx, tok.to(ctx.dtype)], dim=1)
        return {"context": ctx, "added_cond": self.added_cond(out.get("pooled"), b, hw)}


def build_bundle(backbone: DictConfig, adapter: DictConfig, *, device="cpu", dtype=torch.float32,
                 for_training: bool = False) -> Bundle:
    """Build the frozen model + adapters. ``for_training`` makes the I2V-Adapter tensors trainable."""
    from i2v.models.adapters import attach_i2v_adapter

    check_paths(backbone, adapter)
    schedule = NoiseSchedule(**OmegaConf.to_container(backbone.schedule, resolve=True))
    if backbone.name == "toy":
        parts = _build_toy(backbone, adapter)
    else:
        from i2v.pipeline.sd import build_real_parts

        parts = build_real_parts(backbone, adapter, device=device, dtype=dtype)
    unet = parts["unet"]
    for m in parts.values():
        if isinstance(m, nn.Module):
            m.requires_grad_(False)
    trainable = {}
    if adapter.i2v:
        trainable = attach_i2v_adapter(unet)
        if not for_training:
            for p in trainable.values():
                p.requires_grad_(False)
    bundle = Bundle(backbone.name, unet, parts["codec"], parts["text"], schedule,
                    image_encoder=parts.get("image_encoder"), image_proj=parts.get("image_proj"),
                    trainable=trainable,
                    resolution=int(backbone.resolution),
                    config={"backbone": OmegaConf.to_container(backbone, resolve=True),
                            "adapter": OmegaConf.to_container(adapter, resolve=True)})
    return bundle.to(device=device, dtype=dtype).eval()


def _build_toy(backbone: DictConfig, adapter: DictConfig) -> dict:
    """The toy world: shipped tiny checkpoints (scripts/make_toy_checkpoint.py) in i2v/assets/toy."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from i2v.models import build_video_unet
    from i2v.models.toy import IdentityCodec, PatchCodec, ToyImageEncoder, ToyTextEncoder, load_toy_state_dict

    with safe_open(str(backbone.unet), "pt") as f:
        meta = f.metadata() or {}
    overrides = json.loads(meta.get("build_overrides", "{}"))
    unet = build_video_unet("toy", motion=backbone.motion_version, **overrides)
    unet.load_state_dict(load_file(str(backbone.unet)), strict=True)
    text = ToyTextEncoder()
    load_toy_state_dict(text, str(backbone.text_encoder))
    codecs = {"identity": IdentityCodec, "patch": PatchCodec}
    kind = backbone.get("codec", "patch")
    if kind not in codecs:
        raise ValueError(f"backbone.codec must be one of {sorted(codecs)}, got {kind!r}")
    parts = {"unet": unet, "codec": codecs[kind](float(backbone.vae_scale)), "text": text}
    if adapter.content:
        from i2v.checkpoints.ip_adapter import load_ip_adapter

        enc = ToyImageEncoder()
        load_toy_state_dict(enc, str(backbone.image_encoder))
        proj = load_ip_adapter(unet, str(backbone.ip_adapter), scale=float(adapter.content_scale))
        parts.update(image_encoder=enc, image_proj=proj)
    return parts


def random_toy_bundle(content: bool = True, i2v: bool = True, motion: str = "v2", seed: int = 0,
                      for_training: bool = True) -> Bundle:
    """A toy bundle with random weights and no files (tests, benchmarks): same classes as ``backbone=toy``."""
    from i2v.models import build_video_unet
    from i2v.models.adapters import attach_i2v_adapter
    from i2v.models.content import Resampler, attach_ip_adapter
    from i2v.models.toy import PatchCodec, ToyImageEncoder, ToyImageConfig, ToyTextConfig, ToyTextEncoder

    torch.manual_seed(seed)
    unet = build_video_unet("toy", motion=motion, in_channels=12, out_channels=12)
    with torch.no_grad():  # AnimateDiff zero-inits the temporal proj_out; give the random model real motion paths
        for name, p in unet.named_parameters():
            if "motion_modules" in name and "proj_out" in name:
                p.normal_(0, 0.02)
    text = ToyTextEncoder(ToyTextConfig(seed=seed))
    image_encoder = image_proj = None
    if content:
        image_encoder = ToyImageEncoder(ToyImageConfig(seed=seed))
        image_proj = Resampler(dim=64, depth=1, dim_head=16, heads=4, num_queries=4, embedding_dim=64,
                               output_dim=64, ff_mult=2)
        attach_ip_adapter(unet, num_tokens=4, scale=1.0)
    for m in (unet, text, image_encoder, image_proj):
        if m is not None:
            m.requires_grad_(False)
    trainable = attach_i2v_adapter(unet) if i2v else {}
    if not for_training:
        for p in trainable.values():
            p.requires_grad_(False)
    schedule = NoiseSchedule(1000, 0.00085, 0.012, "linear")
    return Bundle("toy", unet, PatchCodec(), text, schedule, image_encoder=image_encoder, image_proj=image_proj,
                  trainable=trainable, resolution=32)
