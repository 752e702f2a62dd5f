"""The frozen text-to-video model with its adapters, built from the ``backbone`` and ``adapter`` config groups.

A :class:`Bundle` holds everything one training step or one sampled video needs -- the video UNet (spatial +
motion, with the I2V-Adapter and Content-Adapter attached), the latent codec (VAE), the text encoder, the image
encoder + IP-Adapter projection, and the noise schedule -- behind four calls: ``encode_video``, ``decode_video``,
``condition`` and ``trainable``. The same code serves ``sd15``, ``sdxl`` and the CPU ``toy`` backbone.

Each backbone config names its builder with ``_target_`` (a :class:`BackboneBuilder` subclass:
:class:`i2v.pipeline.sd.SD15Builder`, :class:`i2v.pipeline.sd.SDXLBuilder`, :class:`i2v.toy.build.ToyBuilder`);
:func:`build_bundle` asks it for the paths it needs and for the frozen parts, then attaches the I2V-Adapter.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import torch
from einops import rearrange
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from i2v.utils.paths import missing_paths
from i2v.diffusion.schedule import NoiseSchedule
from i2v.models.adapters import attach_i2v_adapter, check_i2v_min_t
from i2v.models.content import image_tokens, uncond_image_tokens
from i2v.models.text import sdxl_time_ids

log = logging.getLogger(__name__)


class BackboneBuilder(ABC):
    """The frozen parts of one backbone family, named by ``_target_`` in ``configs/backbone/<name>.yaml``.

    Subclasses give :meth:`required_paths` (the weight paths a run needs) and :meth:`build_parts` (a dict with
    ``unet``, ``codec``, ``text`` and, with the Content-Adapter on, ``image_encoder`` / ``image_proj``)."""

    micro_conditioning = False   # SDXL: the UNet takes added_cond {text_embeds, time_ids}

    def __init__(self, backbone: DictConfig):
        self.cfg = backbone

    @abstractmethod
    def required_paths(self, adapter: DictConfig) -> list[str]:
        """Names of the ``backbone.*`` path keys this run needs (they depend on the adapter's parts)."""

    @abstractmethod
    def build_parts(self, adapter: DictConfig, *, device="cpu", dtype=torch.float32) -> dict:
        """The frozen modules: ``unet``, ``codec``, ``text`` (+ ``image_encoder``/``image_proj``)."""

    def check_paths(self, adapter: DictConfig) -> None:
        """Raise one error naming every unset or non-existent weight path the run needs."""
        missing = missing_paths(self.cfg, self.required_paths(adapter), "backbone")
        if missing:
            lines = "\n  ".join(missing)
            raise FileNotFoundError(f"backbone={self.cfg.name} needs these weight paths (see README, 'Real weights'):"
                                    f"\n  {lines}")


def backbone_builder(backbone: DictConfig) -> BackboneBuilder:
    """The builder named by ``backbone._target_``."""
    target = backbone.get("_target_")
    if not target:
        raise ValueError(f"backbone={backbone.get('name')} has no _target_ (the builder class, e.g. "
                         "i2v.pipeline.sd.SD15Builder; see configs/backbone/*.yaml)")
    cls = get_class(str(target))
    if not (isinstance(cls, type) and issubclass(cls, BackboneBuilder)):
        raise ValueError(f"backbone._target_={target} is not a BackboneBuilder subclass")
    return cls(backbone)


def check_paths(backbone: DictConfig, adapter: DictConfig) -> None:
    """Raise one error naming every unset or non-existent weight path the run needs."""
    backbone_builder(backbone).check_paths(adapter)


def encode_video(codec: nn.Module, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                 chunk: int = 16) -> torch.Tensor:
    """Pixels ``(B, F, 3, H, W)`` in [-1, 1] -> scaled latents ``(B, c, F, h, w)``, ``chunk`` frames at a time."""
    flat = rearrange(video, "b f c h w -> (b f) c h w")
    z = torch.cat([codec.encode(part, generator=generator) for part in flat.split(chunk)], dim=0)
    return rearrange(z, "(b f) c h w -> b c f h w", b=video.shape[0])


def decode_video(codec: nn.Module, latents: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Scaled latents ``(B, c, F, h, w)`` -> pixels ``(B, F, 3, H, W)`` (not clamped), ``chunk`` frames at a time."""
    flat = rearrange(latents, "b c f h w -> (b f) c h w")
    x = torch.cat([codec.decode(part) for part in flat.split(chunk)], dim=0)
    return rearrange(x, "(b f) c h w -> b f c h w", b=latents.shape[0])


class Bundle(nn.Module):
    """See module docstring. ``trainable`` maps UNet state-dict names to the I2V-Adapter parameters."""

    def __init__(self, name: str, unet: nn.Module, codec: nn.Module, text: nn.Module, schedule: NoiseSchedule,
                 image_encoder: Optional[nn.Module] = None, image_proj: Optional[nn.Module] = None,
                 trainable: Optional[dict[str, nn.Parameter]] = None,
                 resolution: int = 512, config: Optional[dict] = None, micro_conditioning: bool = False,
                 noised_kv: bool = False, i2v_min_t: Optional[int] = None):
        super().__init__()
        self.name = name
        self.unet, self.codec, self.text = unet, codec, text
        self.image_encoder, self.image_proj = image_encoder, image_proj
        self.schedule = schedule
        self.trainable = dict(trainable or {})
        self.resolution = resolution
        self.config = config or {}
        self.micro_conditioning = micro_conditioning
        self.noised_kv = bool(noised_kv)     # adapter.noised_kv: see i2v.models.noised_kv (training and sampling)
        # adapter.i2v_min_t: the branch only at t >= it (training draws t there, sampling gates the steps below);
        # None = not given: 0, or what a loaded adapter file was trained with
        self.i2v_min_t_given = i2v_min_t is not None
        self.i2v_min_t = check_i2v_min_t(i2v_min_t or 0, schedule.num_train_timesteps)

    def load_i2v_adapter(self, path, read: Optional[tuple] = None) -> dict:
        """Load an I2V-Adapter file into the UNet (:func:`~i2v.checkpoints.adapter_io.load_adapter`, ``read`` passed
        on; returns its info). A file trained with ``adapter.noised_kv=true`` switches :attr:`noised_kv` on: it is
        meant to be sampled that way. A file trained with ``adapter.i2v_min_t`` > 0 sets :attr:`i2v_min_t` unless the
        config gave one."""
        from i2v.checkpoints.adapter_io import load_adapter, trained_i2v_min_t, trained_with_noised_kv

        info = load_adapter(self.unet, path, backbone=self.name, read=read)
        if trained_with_noised_kv(info) and not self.noised_kv:
            log.info("%s was trained with adapter.noised_kv=true: sampling uses it too", path)
            self.noised_kv = True
        trained = trained_i2v_min_t(info)
        if not self.i2v_min_t_given and trained:
            log.info("%s was trained with adapter.i2v_min_t=%d: its branch runs at t >= %d", path, trained, trained)
            self.i2v_min_t = check_i2v_min_t(trained, self.schedule.num_train_timesteps)
        elif self.i2v_min_t_given and trained != self.i2v_min_t:
            log.warning("%s was trained with adapter.i2v_min_t=%d; sampling with adapter.i2v_min_t=%d as asked", path,
                        trained, self.i2v_min_t)
        return info

    @property
    def active_i2v_min_t(self) -> int:
        """``adapter.i2v_min_t`` as it acts on sampling: 0 without an I2V-Adapter, whose rows it does not touch."""
        return self.i2v_min_t if self.trainable else 0

    @property
    def content_enabled(self) -> bool:
        return self.image_proj is not None

    @property
    def pixel_multiple(self) -> int:
        """Video height and width must be multiples of this: codec downsampling x 2^(UNet levels - 1)."""
        levels = len(self.unet.config.block_out_channels)
        return int(getattr(self.codec, "downsample", 1)) * 2 ** (levels - 1)

    @property
    def pe_length(self) -> Optional[int]:
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
        self.check_num_frames(frames)

    def check_num_frames(self, num_frames: int) -> None:
        """The one check of the frame count against the motion module's positional-encoding length."""
        if self.pe_length is not None and num_frames > self.pe_length:
            raise ValueError(f"frames={num_frames} exceeds the motion module's positional-encoding length "
                             f"{self.pe_length}")

    # ------------------------------------------------------------------ latents
    def encode_video(self, video: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Pixels (B, F, 3, H, W) in [-1, 1] -> scaled latents (B, C, F, h, w)."""
        return encode_video(self.codec, video, generator)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, F, h, w) -> pixels (B, F, 3, H, W), clamped to [-1, 1]."""
        return decode_video(self.codec, latents).clamp(-1, 1)

    # ------------------------------------------------------------------ conditions
    def image_tokens(self, images: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """Content-Adapter tokens (B, N, d) for first frames (B, 3, H, W) in [-1, 1]; ``images=None`` gives the
        unconditional tokens (reference §5.4: base = proj(zeros), Plus = the encoder on an all-zero image)."""
        if images is None:
            return uncond_image_tokens(self.image_proj, self.image_encoder, batch)
        return image_tokens(self.image_proj, self.image_encoder(images))

    def added_cond(self, pooled: Optional[torch.Tensor], batch: int, hw: Optional[tuple[int, int]] = None):
        """SDXL's ``{"text_embeds": (B, 1280), "time_ids": (B, 6)}`` (uncropped, original = target size), else
        ``None``."""
        if not self.micro_conditioning:
            return None
        h, w = hw or (self.resolution, self.resolution)
        time_ids = sdxl_time_ids((h, w), (0, 0), (h, w), batch=batch, device=pooled.device).to(pooled.dtype)
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


def freeze_and_attach(name: str, parts: dict, schedule: NoiseSchedule, *, i2v: bool, for_training: bool,
                      resolution: int, config: Optional[dict] = None, micro_conditioning: bool = False,
                      query_init: str = "to_q", query_init_scale: float = 1.0, noised_kv: bool = False,
                      i2v_min_t: Optional[int] = None) -> Bundle:
    """Freeze every part, attach the I2V-Adapter when ``i2v`` (trainable only ``for_training``; ``query_init`` /
    ``query_init_scale``: how its ``W'_Q`` starts, see :func:`~i2v.models.adapters.attach_i2v_adapter`;
    ``noised_kv``: the opt-in variant of :mod:`i2v.models.noised_kv`; ``i2v_min_t``: ``adapter.i2v_min_t``)
    -> Bundle."""
    unet = parts["unet"]
    for m in parts.values():
        if isinstance(m, nn.Module):
            m.requires_grad_(False)
    trainable = attach_i2v_adapter(unet, query_init=query_init, query_init_scale=query_init_scale) if i2v else {}
    if not for_training:
        for p in trainable.values():
            p.requires_grad_(False)
    return Bundle(name, unet, parts["codec"], parts["text"], schedule, image_encoder=parts.get("image_encoder"),
                  image_proj=parts.get("image_proj"), trainable=trainable, resolution=resolution, config=config,
                  micro_conditioning=micro_conditioning, noised_kv=noised_kv, i2v_min_t=i2v_min_t)


def build_bundle(backbone: DictConfig, adapter: DictConfig, *, device="cpu", dtype=torch.float32,
                 for_training: bool = False) -> Bundle:
    """Build the frozen model + adapters. ``for_training`` makes the I2V-Adapter tensors trainable."""
    builder = backbone_builder(backbone)
    builder.check_paths(adapter)
    schedule = NoiseSchedule(**OmegaConf.to_container(backbone.schedule, resolve=True))
    parts = builder.build_parts(adapter, device=device, dtype=dtype)
    bundle = freeze_and_attach(backbone.name, parts, schedule, i2v=bool(adapter.i2v), for_training=for_training,
                               resolution=int(backbone.resolution),
                               config={"backbone": OmegaConf.to_container(backbone, resolve=True),
                                       "adapter": OmegaConf.to_container(adapter, resolve=True)},
                               micro_conditioning=builder.micro_conditioning,
                               query_init=str(adapter.get("query_init", "to_q")),
                               query_init_scale=float(adapter.get("query_init_scale", 1.0)),
                               noised_kv=bool(adapter.get("noised_kv", False)),
                               i2v_min_t=adapter.get("i2v_min_t"))
    return bundle.to(device=device, dtype=dtype).eval()


def required_adapter_ckpt(ckpt, adapter_name: str) -> str:
    """``ckpt=`` as a path for an adapter config with an I2V-Adapter; a missing one, or ``none``/``null`` (what a
    user types for "no adapter"), is a one-line error that names the adapter configs without one."""
    if ckpt is None or str(ckpt).strip().lower() in ("", "none", "null"):
        raise ValueError(f"adapter={adapter_name} uses the I2V-Adapter: give ckpt=<adapter.safetensors>; without an "
                         f"I2V-Adapter, pass adapter=none (the base alone) or adapter=no_i2v (with the "
                         f"Content-Adapter) instead of ckpt={ckpt}")
    return str(ckpt)


def sampling_input_problems(cfg: DictConfig) -> list[str]:
    """What :func:`load_bundle_for_sampling` would refuse, found without loading anything: unset or missing weight
    paths of the backbone, a missing or absent ``ckpt=``, a missing LoRA file (one message each), so that an entry can
    say them together with its own checks (evaluate.py: the metrics' weights)."""
    problems = []
    try:
        check_paths(cfg.backbone, cfg.adapter)
    except FileNotFoundError as e:
        problems.append(str(e))
    if cfg.adapter.i2v:
        try:
            ckpt = required_adapter_ckpt(cfg.get("ckpt"), cfg.adapter.name)
            if not Path(ckpt).is_file():
                problems.append(f"I2V-Adapter checkpoint not found: {ckpt} (ckpt=; written by training as "
                                f"*.safetensors, or the official release's i2v_module.pth)")
        except ValueError as e:
            problems.append(str(e))
    problems += [f"LoRA file not found: {spec['path']} (lora=[{{path: ..., scale: ...}}])"
                 for spec in cfg.get("lora") or [] if not Path(str(spec["path"])).is_file()]
    return problems


def load_bundle_for_sampling(cfg: DictConfig, device, dtype) -> Bundle:
    """The frozen bundle of an entry's config (``backbone``, ``adapter``) with ``ckpt=`` (the I2V-Adapter) and
    ``lora=`` merged, built in fp32 on the CPU, then moved to ``device``/``dtype`` (sample.py, evaluate.py, the app)."""
    from i2v.checkpoints.adapter_io import check_adapter_backbone, read_adapter

    ckpt, adapter_file = cfg.get("ckpt"), None
    if cfg.adapter.i2v:   # the adapter file is read before the base loads: a wrong ckpt= fails in seconds
        ckpt = required_adapter_ckpt(ckpt, cfg.adapter.name)
        if Path(ckpt).is_file():
            adapter_file = read_adapter(ckpt)
            check_adapter_backbone(ckpt, adapter_file[1], str(cfg.backbone.name))   # before its weight paths
    problems = sampling_input_problems(cfg)   # every missing file at once: weight paths, ckpt=, lora=
    if problems:
        raise FileNotFoundError("\n".join(problems))
    bundle = build_bundle(cfg.backbone, cfg.adapter, device="cpu", dtype=torch.float32, for_training=False)
    if cfg.adapter.i2v:
        bundle.load_i2v_adapter(str(ckpt), read=adapter_file)      # the file is not read a second time
    for spec in cfg.get("lora") or []:
        from i2v.checkpoints.lora import merge_lora

        merge_lora(bundle.unet, str(spec["path"]), scale=float(spec.get("scale", 1.0)), text_encoder=bundle.text)
    return bundle.to(device=device, dtype=dtype)
