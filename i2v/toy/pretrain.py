"""Toy-world base pretraining (DESIGN.md "Toy world"; used by ``scripts/make_toy_checkpoint.py``).

The toy stand-ins for what the real system downloads:

* **Phase A** (SD + AnimateDiff stand-in): text-to-video pretraining of the whole toy ``VideoUNet`` (spatial + motion)
  and the :class:`ToyTextEncoder` on :class:`SyntheticVideos`; ε-prediction DDPM loss on *all* frames, one timestep
  per video, caption dropped to ``""`` with ``text_drop`` (classifier-free guidance).
* **Phase B** (IP-Adapter Plus stand-in): UNet and text encoder frozen; the :class:`ToyImageEncoder` (stand-in for
  CLIP pretraining), a :class:`Resampler` and the decoupled ``to_k_ip``/``to_v_ip`` layers train on "image prompt
  = a random frame of the clip"; the image is replaced by the unconditional tokens with ``image_drop`` and the
  caption by ``""`` with ``text_drop``; same ε loss on all frames.

The models are one toy :class:`~i2v.pipeline.bundle.Bundle` (its encode/decode and ``condition``), sampled by the
one sampler (:func:`i2v.diffusion.sampler.sample_video`). Latents are :class:`PatchCodec` (2x2 space-to-depth, 12
channels at 16² for 32² pixels). Everything random
(init, data order, t, ε, drops, frame choice) derives from ``seed``: equal arguments and thread count give
bit-identical weights. What each step sees (clips, noise, loss weights) lives in :mod:`i2v.toy.batches`, the resumable
optimisation loop of a phase in :mod:`i2v.toy.loop`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from i2v.data.synthetic import RADIUS_RANGE
from i2v.diffusion.sampler import Denoiser, sample_video
from i2v.diffusion.schedule import NoiseSchedule, make_scheduler
from i2v.models.content import Resampler, attach_ip_adapter
from i2v.models.toy import PatchCodec, ToyImageEncoder, ToyTextEncoder
from i2v.models.unet import build_video_unet
from i2v.pipeline.bundle import Bundle
from i2v.toy.batches import ClipStream, _drop_captions, _noised, _with_clean_distractor, masked_mse
from i2v.toy.loop import PhaseState, train_loop, upgrade_settings  # noqa: F401 (importable from here)

# build_video_unet("toy", motion=MOTION, **UNET_OVERRIDES) = the shipped base UNet (stored in the file's metadata)
MOTION = "v2"
UNET_OVERRIDES = {"in_channels": PatchCodec.image_channels, "out_channels": PatchCodec.image_channels}
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear")
# Latent scale of the toy codec (= backbone/toy.yaml vae_scale). SD scales its VAE latents to unit variance; the
# toy's unscaled PatchCodec latents have E[z^2] = 0.5. A 1.2M-parameter base reproduces its input noise only to an
# eps-MSE of a few 1e-3 after thousands of steps (measured), which at unit variance is larger than the whole signal
# left at t >= 800 ("signal is zero" = 0.0014 at t = 950): it then samples noise and nothing can carry frame 1.
# Scaling latents by 4 raises every timestep's SNR 16x (input scaling shifts the schedule), so the signal sits well
# above that floor while x_T stays mostly noise (per-element signal/noise ~0.15 at t = 950).
CODEC_SCALE = 4.0
# Toy IP-Adapter Plus resampler. dim_head stays 64 because the official-file loader
# (i2v.checkpoints.ip_adapter.build_image_proj) infers heads = to_q rows // 64, as for the real Plus files.
RESAMPLER = dict(dim=64, depth=2, dim_head=64, heads=2, num_queries=4, embedding_dim=64, output_dim=64, ff_mult=2)


@dataclass
class PretrainConfig:
    """Hyper-parameters of both phases (the CLI flags of ``scripts/make_toy_checkpoint.py``)."""

    seed: int = 0
    base_steps: int = 1800
    ip_steps: int = 300
    batch_size: int = 4
    lr: float = 3e-3              # peak AdamW lr of phase A
    ip_lr: float = 3e-3           # peak AdamW lr of phase B (1e-3 helped the image prompt more in a 300-step probe)
    warmup: int = 50              # linear warm-up steps, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    text_drop: float = 0.1
    image_drop: float = 0.1
    # Offset noise (Guttenberg 2023): per-video and per-frame channel offsets added to ε. Off by default, as for
    # SD1.5: the linear schedule keeps sqrt(alpha_bar_999) ~ 0.07 of the signal in x_T and a base trained with
    # offsets learns to ignore exactly that low-frequency signal, which is what the Frame Similarity Prior feeds it
    # (with 0.6 the prior's p had no measurable effect at t0 = 1).
    offset_noise: float = 0.0
    # Probability per video that its frame 1 is replaced by a *clean* frame 1 of another clip of the batch, with no
    # loss on it. The I2V-Adapter feeds the frozen base a clean frame among noisy ones; a base that never saw one is
    # misled by its features (the diagnostic's attention probes); an unrelated clean frame teaches it that clean
    # frames occur without teaching it to copy them (the base alone stays text-to-video). Measured (textured world,
    # 0.5, 1,200 steps): the probe is not cured (frame 1's K/V 1.4-2.1x the base) and the I2V-Adapter then gains
    # nothing (on/off 0.99): off by default, kept to reproduce that row of the README.
    clean_distractor: float = 0.0
    # Extra weight of the ε-loss where the moving object is: latent positions the object covers in a frame count
    # 1 + object_weight (a weighted mean over all elements). The object fills a few percent of a 32² frame, so
    # with a plain mean the base learns the background first and renders the object as a faded blob.
    object_weight: float = 0.0
    # EMA of the trained weights (what is exported); decay ramps as min(ema_decay, (1 + s) / (10 + s)).
    ema_decay: float = 0.999
    # Resumable state every this many steps (``state_dir``); a rerun of the same command continues from it.
    checkpoint_every: int = 250
    num_frames: int = 8
    size: int = 32
    # Static random background pattern of the clips (SyntheticVideos ``texture``/``texture_cells``): details the
    # caption does not give, so only frame 1 can carry them (what the I2V-Adapter is for).
    texture: float = 0.0
    texture_cells: int = 8
    texture_tiles: int = 1
    # Smooth colour field on the backgrounds (SyntheticVideos ``texture_smooth``/``texture_smooth_knots``): every
    # place gets its own colour, visible through heavy noise, so attention that matches content also matches place.
    texture_smooth: float = 0.0
    texture_smooth_knots: int = 3
    # Radius of the moving object, as fractions of the image side (SyntheticVideos ``radius_range``; at least
    # 2.5 px). On the 2x2 codec the smallest objects (radius < 4 px: 2-4 latent positions) are what the shipped base
    # renders worst (docs/toy_world.md, "What the frame-1 oracle's identity is made of").
    radius_range: tuple = RADIUS_RANGE
    # What the base UNet outputs: "v_prediction" (v = α_t ε − σ_t z, SD2-style) or "epsilon" (SD1.5/SDXL). A
    # 1.2M-parameter eps-predictor has to pass its input noise through the whole UNet at high t and does so only to
    # an eps-MSE of ~5e-3 (measured), a floor that at t = 950 is the *whole* error of the base: with frame 1 clean
    # there is nothing left for the I2V-Adapter to remove (adapter on/off 0.98-0.99). A v-predictor outputs
    # ~ -x0 at high t, so its eps error there is sqrt(alpha_bar) x its x0 error and what frame 1 tells it counts.
    prediction_type: str = "epsilon"
    codec_scale: float = CODEC_SCALE  # latent scale of the toy codec (= backbone.vae_scale of the configs using it)
    # Fixed sin/cos position codes appended to the latents (PatchCodec position_channels; 0 = none): see PatchCodec.
    position_channels: int = 0
    attn_init_scale: float = 1.0  # initial to_q/to_k of the spatial self-attentions x this (build_base)
    # sha256 of the files phase A starts from (make_toy_checkpoint.py --init-from; None = a fresh init): part of
    # the resume key, so a saved state is never continued from another source
    init_sha256: Optional[dict] = None
    # UNetConfig fields changed from the "toy" preset (e.g. {"transformer_layers_per_block": [2, 1]}); stored in
    # the base file's metadata, from which i2v.toy.build rebuilds the same UNet
    unet_overrides: dict = field(default_factory=dict)
    n_items: int = 20000          # raised to cover every step's clips, so no clip repeats
    log_every: int = 50
    progress: bool = True
    state_dir: Optional[str] = None


# The trained toy parts are a toy Bundle: ``image_encoder`` / ``image_proj`` (the Resampler) exist after phase B;
# the UNet then carries the ``to_k_ip``/``to_v_ip`` layers (its base weights are unchanged by phase B).
ToyModels = Bundle


def base_file_metadata(unet_overrides: Optional[dict] = None, prediction_type: str = "epsilon",
                       codec_scale: float = CODEC_SCALE, position_channels: int = 0) -> dict[str, str]:
    """The base UNet file's safetensors metadata: one key (safetensors writes several in hash order, which would
    make identical runs differ in bytes), ``toy_base`` = JSON ``{"build_overrides", "prediction_type",
    "codec_scale", "position_channels"}``: how to rebuild the UNet and codec, and what a config must agree with."""
    return {"toy_base": json.dumps({"build_overrides": unet_build_overrides(unet_overrides, position_channels),
                                    "prediction_type": prediction_type, "codec_scale": float(codec_scale),
                                    "position_channels": int(position_channels)}, sort_keys=True)}


def read_base_file_metadata(meta: Optional[dict]) -> dict:
    """``{"build_overrides", "prediction_type", "codec_scale" (None: not recorded), "position_channels"}`` from a base file's
    metadata (files written before ``toy_base`` existed carry only ``build_overrides``: ε-prediction bases whose
    codec scale is not recorded)."""
    meta = meta or {}
    if "toy_base" in meta:
        return {"codec_scale": None, "position_channels": 0, **json.loads(meta["toy_base"])}
    return {"build_overrides": json.loads(meta.get("build_overrides", "{}")), "prediction_type": "epsilon",
            "codec_scale": None, "position_channels": 0}


def unet_build_overrides(unet_overrides: Optional[dict] = None, position_channels: int = 0) -> dict:
    """``build_video_unet("toy", motion=MOTION, **this)`` is the base UNet: :data:`UNET_OVERRIDES` (with the
    codec's position channels added to in/out channels) plus a run's ``unet_overrides`` (what the base file's
    ``build_overrides`` metadata and MANIFEST record)."""
    width = PatchCodec.image_channels + int(position_channels)
    return {**UNET_OVERRIDES, "in_channels": width, "out_channels": width, **(unet_overrides or {})}


def build_base(seed: int, attn_init_scale: float = 1.0, unet_overrides: Optional[dict] = None,
               prediction_type: str = "epsilon", codec_scale: float = CODEC_SCALE,
               position_channels: int = 0) -> Bundle:
    """Fresh phase-A models: UNet initialised from ``torch.manual_seed(seed)``, encoders by their own seeded init.
    ``attn_init_scale`` multiplies the initial ``to_q``/``to_k`` of every spatial self-attention (attn1): larger
    query/key weights start the softmax sharper (lower temperature). ``unet_overrides``: see
    :attr:`PretrainConfig.unet_overrides`; ``prediction_type``, ``codec_scale``: see :class:`PretrainConfig`."""
    torch.manual_seed(seed)
    unet = build_video_unet("toy", motion=MOTION, **unet_build_overrides(unet_overrides, position_channels))
    if attn_init_scale != 1.0:
        from i2v.models.attention import spatial_attention_layers
        with torch.no_grad():
            for _, attn in spatial_attention_layers(unet, "attn1"):
                attn.to_q.weight.mul_(attn_init_scale)
                attn.to_k.weight.mul_(attn_init_scale)
    schedule = NoiseSchedule(**SCHEDULE, prediction_type=prediction_type)
    codec = PatchCodec(codec_scale, position_channels=position_channels)
    return Bundle("toy", unet, codec, ToyTextEncoder(), schedule, resolution=32)


def peek_base(cfg: PretrainConfig) -> tuple[ToyModels, int]:
    """The phase-A models of a run still in progress, from its saved state (``cfg`` = that run's settings):
    UNet and text encoder with the EMA weights it would export, and the step they are from. Lets a run of hours
    be checked (e.g. with the learning diagnostic) while it trains; the state is only read."""
    saved = PhaseState("base", cfg).load()
    if saved is None:
        raise FileNotFoundError(f"no saved base-phase state in {cfg.state_dir} (a run saves one every "
                                f"{cfg.checkpoint_every} steps; the state is removed once the files are written)")
    models = build_base(cfg.seed, cfg.attn_init_scale, cfg.unet_overrides, cfg.prediction_type, cfg.codec_scale,
                        cfg.position_channels)
    models.unet.load_state_dict(saved["models"]["unet"], strict=True)
    models.text.load_state_dict(saved["models"]["text"], strict=True)
    params = list(models.unet.parameters()) + list(models.text.parameters())
    if len(params) != len(saved["ema"]):
        raise ValueError(f"{cfg.state_dir}: the saved EMA holds {len(saved['ema'])} tensors, the base has {len(params)}")
    with torch.no_grad():
        for p, e in zip(params, saved["ema"]):
            p.copy_(e)
    return models, int(saved["step"])


def pretrain_base(models: ToyModels, stream: ClipStream, cfg: PretrainConfig, g: torch.Generator) -> dict:
    """Phase A: train UNet (spatial + motion) + text encoder with the ε-MSE on all frames."""
    params = list(models.unet.parameters()) + list(models.text.parameters())
    for p in params:
        p.requires_grad_(True)
    models.unet.train()
    models.text.train()

    def loss_fn() -> torch.Tensor:
        video, captions = stream.next()
        z, zt, t, target = _noised(models, video, cfg.offset_noise, g)
        ctx = models.condition(_drop_captions(captions, cfg.text_drop, g))["context"]
        if not (cfg.clean_distractor or cfg.object_weight):
            return F.mse_loss(models.unet(zt, t, ctx), target)
        zt, weight = _with_clean_distractor(z, zt, cfg.clean_distractor, g)
        if cfg.object_weight:
            weight = weight * (1 + cfg.object_weight * stream.object_masks(z.shape[-1]))
        return masked_mse(models.unet(zt, t, ctx), target, weight)

    return train_loop("base", models, params, cfg.base_steps, cfg.lr, cfg, stream, g, loss_fn)


def add_content_adapter(models: ToyModels, seed: int) -> list[nn.Parameter]:
    """Attach fresh image encoder + Resampler + ``to_k_ip``/``to_v_ip`` (copies of ``to_k``/``to_v``); return the
    phase-B trainable parameters (everything else frozen)."""
    models.unet.requires_grad_(False)
    models.text.requires_grad_(False)
    torch.manual_seed(seed + 1)
    dev = next(models.unet.parameters()).device   # built on the CPU (same init on every device), then moved
    models.image_encoder = ToyImageEncoder().to(dev)
    models.image_proj = Resampler(**RESAMPLER).to(dev)
    attach_ip_adapter(models.unet, num_tokens=RESAMPLER["num_queries"])
    ip = [p for n, p in models.unet.named_parameters() if n.endswith(("to_k_ip.weight", "to_v_ip.weight"))]
    params = list(models.image_encoder.parameters()) + list(models.image_proj.parameters()) + ip
    for p in params:
        p.requires_grad_(True)
    return params


def train_content_adapter(models: ToyModels, stream: ClipStream, cfg: PretrainConfig, g: torch.Generator) -> dict:
    """Phase B: image prompt = a random frame of each clip; ε-MSE on all frames."""
    params = add_content_adapter(models, cfg.seed)
    models.unet.eval()
    models.text.eval()
    models.image_encoder.train()
    models.image_proj.train()
    print(f"[toy_pretrain] phase B trainable {sum(p.numel() for p in params):,} / frozen "
          f"{sum(p.numel() for p in models.unet.parameters() if not p.requires_grad):,} UNet parameters")

    def loss_fn() -> torch.Tensor:
        video, captions = stream.next()
        b = video.shape[0]
        frame = torch.randint(0, video.shape[1], (b,), generator=g)
        drop_img = torch.rand(b, generator=g) < cfg.image_drop
        _, zt, t, target = _noised(models, video, cfg.offset_noise, g)
        # text encoder frozen (no graph); image tokens of the dropped rows = the unconditional tokens
        dev = zt.device
        ctx = models.condition(_drop_captions(captions, cfg.text_drop, g), video[torch.arange(b), frame].to(dev),
                               drop_image=drop_img.to(dev))["context"]
        return F.mse_loss(models.unet(zt, t, ctx), target)

    return train_loop("content", models, params, cfg.ip_steps, cfg.ip_lr, cfg, stream, g, loss_fn)


@torch.no_grad()
def sample_t2v(models: Bundle, captions: list[str], steps: int = 25, cfg_scale: float = 7.5, seed: int = 42,
               num_frames: int = 8, images: torch.Tensor | None = None) -> torch.Tensor:
    """Plain text(-and-image)-to-video DDIM over *all* frames from pure noise (sanity check of the base model; no
    clamped first frame: the one sampler with ``fixed_frames=0``). ``images`` ``(B, 3, 32, 32)`` are the image
    prompts (needs phase B; None = unconditional image tokens). Returns latents ``(B, 12, F, 16, 16)``; decode
    with ``models.decode_video``."""
    b, side = len(captions), 16
    sched = make_scheduler("ddim", models.schedule)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, models.codec.latent_channels, num_frames, side, side, generator=g)
    cond, uncond = models.condition(list(captions), images), models.condition([""] * b)
    out = sample_video(Denoiser(models.unet, cfg_scale), x, cond, uncond, sched.timesteps, scheduler=sched,
                       generator=g, fixed_frames=0)
    return out["latents"]
