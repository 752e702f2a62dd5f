"""The image-to-video sampling pipeline (paper §3.3): :class:`I2VPipeline`, built once from a :class:`Bundle` and
typed :class:`SamplingSettings`, then ``pipe(image, prompt, seed=...)`` per video.

Frame 1 = the encoded input image, kept exactly clean; frames 2..F start from the Frame Similarity Prior (or pure
noise with ``fsp.enabled=false``) and are denoised with classifier-free guidance (and an optional ControlNet) by
:func:`i2v.diffusion.sampler.sample_video`. ``sample.py``, ``evaluate.py``, the training callback and the toy
evaluation all sample through this object; the settings are validated once, when they are built.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from i2v.diffusion.color import color_match
from i2v.diffusion.fsp import check_blur, check_noise_dc, initial_latents
from i2v.diffusion.guidance import negative_prompt
from i2v.diffusion.sampler import Denoiser, check_scheduler, check_steps, sample_video
from i2v.diffusion.schedule import SamplerConfig, make_scheduler
from i2v.models.adapters import I2VTimestepGate
from i2v.models.noised_kv import NoisedKVDenoiser
from i2v.utils.io import RESIZE_MODES
from i2v.pipeline.bundle import Bundle

log = logging.getLogger(__name__)

SCHEDULERS = ("ddim", "euler", "dpmpp", "ddpm")
SPACINGS = ("leading", "trailing", "linspace")   # diffusers' timestep_spacing


def resolve_device(device: Optional[str] = "auto", dtype: Optional[str] = "auto") -> tuple[torch.device, torch.dtype]:
    """``device``/``dtype`` settings (``auto``: CUDA and float16 when there is a GPU, else CPU and float32)."""
    device = "auto" if device is None else str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device} requested but CUDA is not available")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dtype in (None, "auto"):
        return dev, torch.float16 if dev.type == "cuda" else torch.float32
    return dev, getattr(torch, str(dtype))


def color_match_settings(sampling: Mapping) -> Optional[dict]:
    """``sampling.post.color_match`` as keyword arguments of :func:`i2v.diffusion.color.color_match`, or ``None``
    when off. Accepts ``{enabled, reference, channels}`` or a plain bool (reference ``input``, channels ``ab``)."""
    spec = (sampling.get("post") or {}).get("color_match")
    if not isinstance(spec, (dict, DictConfig)):
        return {"reference": "input", "channels": "ab"} if spec else None
    if not spec.get("enabled", False):
        return None
    return {"reference": str(spec.get("reference", "input")), "channels": str(spec.get("channels", "ab"))}


@dataclass(frozen=True)
class FSPSettings:
    """The Frame Similarity Prior's switch and latent blur (``sampling.fsp``, configs/fsp/default.yaml)."""

    enabled: bool
    kernel_size: int
    sigma: float
    noise_dc: str = "keep"   # keep (the paper) | remove (each frame's noise without its spatial mean; not the paper)

    def __post_init__(self):
        try:
            check_blur(self.kernel_size, self.sigma)
            check_noise_dc(self.noise_dc)
        except ValueError as e:   # the same checks as the prior's own, named by their config keys
            raise ValueError(f"sampling.fsp.{e}") from None
        if not self.enabled and self.noise_dc != "keep":
            raise ValueError(f"sampling.fsp.noise_dc={self.noise_dc} acts on the prior's noise: it needs "
                             f"sampling.fsp.enabled=true")


@dataclass(frozen=True)
class SamplingSettings:
    """Everything one sampled video depends on besides the model, image, prompt and seed (``cfg.sampling``;
    defaults in configs/sampling/default.yaml). Checked once, here; build with :meth:`from_config`."""

    steps: int
    guidance_scale: float
    t0: float                      # Frame Similarity Prior start time in (0, 1]
    p: float                       # probability of taking the blurred first-frame latent, in [0, 1]
    num_frames: int                # frame 1 is the input image
    scheduler: str
    fsp: FSPSettings
    negative_prompt: str = ""               # text or a preset name (i2v.diffusion.guidance.NEGATIVE_PRESETS)
    color_match: Optional[dict] = None      # {"reference", "channels"} or None
    height: Optional[int] = None            # None = backbone resolution
    width: Optional[int] = None
    resize: str = "crop"
    fps: int = 8
    timestep_spacing: str = "leading"       # official/AnimateDiff: leading (S steps start at T - T/S + 1)

    def __post_init__(self):
        for key in ("t0", "p", "guidance_scale"):
            if not math.isfinite(float(getattr(self, key))):
                raise ValueError(f"sampling.{key} must be a finite number, got {getattr(self, key)}")
        if self.fps < 1:
            raise ValueError(f"sampling.fps must be >= 1, got {self.fps}")
        if not (0.0 < self.t0 <= 1.0):
            raise ValueError(f"sampling.t0 must lie in (0, 1], got {self.t0}")
        if not (0.0 <= self.p <= 1.0):
            raise ValueError(f"sampling.p must lie in [0, 1], got {self.p}")
        if self.steps < 1:
            raise ValueError(f"sampling.steps must be >= 1, got {self.steps}")
        if self.num_frames < 2:
            raise ValueError(f"sampling.num_frames must be >= 2 (frame 1 is the input image), got {self.num_frames}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"sampling.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"sampling.scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(f"sampling.timestep_spacing must be one of {SPACINGS}, got {self.timestep_spacing!r}")

    @classmethod
    def from_config(cls, sampling: Union[DictConfig, Mapping]) -> "SamplingSettings":
        """From the ``sampling`` config node (``cfg.sampling``)."""
        s = sampling if isinstance(sampling, DictConfig) else OmegaConf.create(dict(sampling))
        for key in ("t0", "p"):
            if s.get(key) is None:
                raise ValueError(f"sampling.{key} is null (experiment=table2: fsp_row must be 0..9)")
        opt = lambda key: None if s.get(key) is None else int(s.get(key))  # noqa: E731
        return cls(steps=int(s.steps), guidance_scale=float(s.guidance_scale), t0=float(s.t0), p=float(s.p),
                   num_frames=int(s.num_frames), scheduler=str(s.scheduler),
                   fsp=FSPSettings(bool(s.fsp.enabled), int(s.fsp.kernel_size), float(s.fsp.sigma),
                                   str(s.fsp.get("noise_dc", "keep"))),
                   negative_prompt=str(s.get("negative_prompt") or ""), color_match=color_match_settings(s),
                   height=opt("height"), width=opt("width"), resize=str(s.get("resize", "crop")),
                   fps=int(s.get("fps", 8)), timestep_spacing=str(s.get("timestep_spacing", "leading")))


@dataclass
class I2VOutput:
    """One sampled video: ``video`` (F, 3, H, W) float in [-1, 1], ``latents`` (1, C, F, h, w), network calls,
    sampler steps run."""

    video: torch.Tensor
    latents: torch.Tensor
    nfe: int
    steps: int
    extra: dict = field(default_factory=dict)


def image_tensor(image: Union[torch.Tensor, Image.Image]) -> torch.Tensor:
    """A PIL image (RGB, any mode converted) or a ``(3, H, W)`` tensor in [-1, 1] -> ``(3, H, W)`` float tensor."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W) in [-1, 1], got shape {tuple(image.shape)}")
    return image


class I2VPipeline:
    """``I2VPipeline(bundle, settings)(image, prompt, seed=0, callback=None) -> I2VOutput``.

    Owns the bundle, the diffusers scheduler (on the backbone's schedule), the prior's settings and the guided
    :class:`~i2v.diffusion.sampler.Denoiser` (with the optional ControlNet and its per-frame ``control``
    ``(1, F, 3, H', W')``). The image is used at its own size (a multiple of ``bundle.pixel_multiple``). With
    ``bundle.noised_kv`` (``adapter.noised_kv``, :mod:`i2v.models.noised_kv`) every step also runs the network on
    frame 1 noised to t (one noise drawn from the seed's generator after the start latents). With
    ``bundle.i2v_min_t`` > 0 (``adapter.i2v_min_t``) the I2V-Adapter's branch is off at the steps whose t is below it.
    """

    def __init__(self, bundle: Bundle, settings: SamplingSettings, controlnet=None,
                 control: Optional[torch.Tensor] = None):
        self.bundle, self.settings = bundle, settings
        bundle.check_num_frames(settings.num_frames)
        self.negative = negative_prompt(settings.negative_prompt)
        self.scheduler = make_scheduler(settings.scheduler, bundle.schedule,
                                        SamplerConfig(timestep_spacing=settings.timestep_spacing))
        check_scheduler(self.scheduler, bundle.schedule)
        check_steps(self.scheduler, settings.steps, bundle.schedule.num_train_timesteps)
        self.denoiser = Denoiser(bundle.unet, settings.guidance_scale, controlnet, control)
        self._warned_gate = False

    @torch.no_grad()
    def __call__(self, image: Union[torch.Tensor, Image.Image], prompt: str, seed: int = 0,
                 callback: Optional[Callable[[int, int], None]] = None, progress: bool = False) -> I2VOutput:
        """Sample one video. ``image`` (3, H, W) in [-1, 1] or a PIL image; ``callback(done, total)`` after every
        sampler step. Raises ``FloatingPointError`` (before decoding) when the latents are not finite."""
        s, bundle = self.settings, self.bundle
        image = image_tensor(image)
        param = next(bundle.unet.parameters())
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        img = image[None].to(param.device, param.dtype)
        first = bundle.encode_video(img[:, None], generator=g)[:, :, 0]              # (1, C, h, w)
        hw = tuple(image.shape[-2:])
        cond = bundle.condition([prompt], img, hw=hw)
        uncond = bundle.condition([self.negative], None, hw=hw)
        x, timesteps, _ = initial_latents(first, s.num_frames, self.scheduler, s.steps, t0=s.t0, p=s.p,
                                          fsp=s.fsp.enabled, generator=g, kernel_size=s.fsp.kernel_size,
                                          sigma=s.fsp.sigma, noise_dc=s.fsp.noise_dc)
        denoise = self.denoiser
        if bundle.noised_kv:   # adapter.noised_kv: frame 1 noised with one draw for the whole video
            noise = torch.randn(first[:, :, None].shape, generator=g, dtype=torch.float32).to(first)
            denoise = NoisedKVDenoiser(self.denoiser, bundle.schedule, bundle.unet, noise)
        if bundle.active_i2v_min_t > 0:   # adapter.i2v_min_t: the branch off at the steps below it
            denoise = I2VTimestepGate(denoise, bundle.unet, bundle.i2v_min_t)
            if float(timesteps.max()) < bundle.i2v_min_t and not self._warned_gate:
                self._warned_gate = True
                log.warning("adapter.i2v_min_t=%d but sampling starts at t=%d (sampling.t0=%g): the I2V-Adapter's "
                            "branch runs at no step of these videos", bundle.i2v_min_t, int(timesteps.max()), s.t0)
        step_cb = None if callback is None else (lambda i, t, lat: callback(i + 1, len(timesteps)))
        res = sample_video(denoise, x, cond, uncond, timesteps, scheduler=self.scheduler, generator=g,
                           callback=step_cb, progress=progress)
        latents = res["latents"]
        if not torch.isfinite(latents).all():
            raise FloatingPointError("the sampled latents hold NaN/Inf (non-finite adapter or model weights, or an "
                                     "fp16 overflow: try dtype=float32); nothing was written")
        video = bundle.decode_video(latents)[0].float()
        if s.color_match is not None:
            video = color_match(video, image.to(video), **s.color_match)
        return I2VOutput(video=video, latents=latents, nfe=res["nfe"], steps=res["steps"])
