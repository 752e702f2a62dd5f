"""The web demo's model side: one loaded model, one video per call (``python app.py``, paper §3.3 sampling).

Every model load and sampling call of the app goes through :class:`DemoEngine`, and the engine samples with
:class:`i2v.pipeline.I2VPipeline`, the pipeline behind ``python sample.py``: the same image, prompt, settings and
seed give the same frames (tests/app/test_app_engine.py checks it).

Ablations (paper Table 3) are switches on the one loaded model, never a reload: ``no_i2v`` turns the I2V-Adapter
processors into plain self-attention and ``no_content`` gives ``attn2`` back its plain cross-attention and drops the
image tokens -- exactly the modules a bundle built with ``adapter=no_i2v|no_content|none`` runs, so the frames equal
``sample.py adapter=...`` with the same ``ckpt``. (The paper's Table 3, and ``experiment=toy_table3``, retrain the
adapter for each row; the demo switches parts off in the one trained model.)
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import torch
from omegaconf import DictConfig

from i2v.diffusion.fsp import fsp_num_steps
from i2v.utils.io import load_image
from i2v.models.adapters import i2v_adapter_layers, set_i2v_adapter_enabled
from i2v.models.attention import spatial_attention_layers
from i2v.pipeline import Bundle, I2VPipeline, SamplingSettings, resolve_device
from i2v.pipeline.bundle import load_bundle_for_sampling

# adapter name -> (I2V-Adapter on, Content-Adapter on); the names of configs/adapter/*.yaml
ABLATIONS = {"full": (True, True), "no_i2v": (False, True), "no_content": (True, False), "none": (False, False)}


@dataclass(frozen=True)
class DemoSettings:
    """The per-request sampling settings a user can change in the page (the rest stay as in ``cfg.sampling``)."""
    t0: float = 1.0                 # Frame Similarity Prior start time in (0, 1]
    p: float = 0.5                  # probability that a latent element comes from the blurred first frame
    steps: int = 25
    guidance_scale: float = 7.5
    num_frames: int = 16
    negative_prompt: str = ""
    adapter: str = "full"           # one of ABLATIONS

    def as_dict(self) -> dict:
        return asdict(self)


class DemoEngine:
    """A loaded :class:`Bundle` plus the app's config; :meth:`generate` is thread-safe (one video at a time)."""

    def __init__(self, cfg: DictConfig, bundle: Bundle):
        self.cfg, self.bundle = cfg, bundle
        self.base_settings = SamplingSettings.from_config(cfg.sampling)    # checks cfg.sampling once
        self._lock = threading.Lock()
        has_i2v, has_content = bool(i2v_adapter_layers(bundle.unet)), bundle.content_enabled
        # the ablations this model can show: those whose parts are all loaded
        self.ablations = [n for n, (i, c) in ABLATIONS.items() if (has_i2v or not i) and (has_content or not c)]

    @classmethod
    def load(cls, cfg: DictConfig) -> "DemoEngine":
        """Build the model of ``cfg`` (backbone, adapter, ckpt, device, dtype) once, as ``sample.py`` does."""
        SamplingSettings.from_config(cfg.sampling)             # bad settings fail before the model loads
        device, dtype = resolve_device(cfg.get("device", "auto"), cfg.get("dtype", "auto"))
        return cls(cfg, load_bundle_for_sampling(cfg, device, dtype))

    # ------------------------------------------------------------------ settings and inputs
    @property
    def backbone(self) -> str:
        return self.bundle.name

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the videos: ``sampling.height/width`` or the backbone's resolution."""
        s = self.cfg.sampling
        return int(s.get("height") or self.bundle.resolution), int(s.get("width") or self.bundle.resolution)

    @property
    def frame_limit(self) -> int:
        """Most frames the demo offers: the motion module's positional-encoding length (64 without one)."""
        return self.bundle.pe_length or 64

    def defaults(self) -> DemoSettings:
        s = self.cfg.sampling
        adapter = str(self.cfg.adapter.name)
        return DemoSettings(t0=float(s.t0), p=float(s.p), steps=int(s.steps), guidance_scale=float(s.guidance_scale),
                            num_frames=int(s.num_frames), negative_prompt=str(s.get("negative_prompt") or ""),
                            adapter=adapter if adapter in self.ablations else self.ablations[0])

    def sampling_settings(self, settings: DemoSettings) -> SamplingSettings:
        """``cfg.sampling`` with the request's settings; raises ValueError for out-of-range values."""
        if settings.adapter not in self.ablations:
            raise ValueError(f"adapter {settings.adapter!r} is not available with this model "
                             f"(loaded: {', '.join(self.ablations)})")
        s = replace(self.base_settings, **{k: getattr(settings, k) for k in
                                           ("t0", "p", "steps", "guidance_scale", "num_frames", "negative_prompt")})
        self.bundle.check_video_shape(*self.size, s.num_frames)
        return s

    def load_image(self, path) -> torch.Tensor:
        """An image file as ``sample.py`` reads it: (3, H, W) in [-1, 1] at :attr:`size` (``sampling.resize``)."""
        resize = str(self.cfg.sampling.get("resize", "crop"))
        return load_image(path, size=self.size, resize=resize, multiple=math.lcm(64, self.bundle.pixel_multiple))

    def denoising_steps(self, settings: DemoSettings) -> int:
        """UNet steps a request runs (SDEdit truncation at ``t0``): the progress bar's total."""
        return fsp_num_steps(settings.steps, settings.t0) if self.base_settings.fsp.enabled else settings.steps

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, image: torch.Tensor, prompt: str, settings: DemoSettings, seed: int,
                 progress_cb: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """One video. ``image`` (3, H, W) in [-1, 1] (see :meth:`load_image`). ``progress_cb(done, total)`` after
        every denoising step. Returns frames ``(F, 3, H, W)`` in [0, 1] on the CPU, frame 0 = the input image."""
        pipe = I2VPipeline(self.bundle, self.sampling_settings(settings))
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
        with self._lock, self.ablation(settings.adapter):
            if progress_cb is not None:
                progress_cb(0, self.denoising_steps(settings))
            out = pipe(image, prompt, seed=int(seed), callback=progress_cb)
        return ((out.video + 1) / 2).cpu()

    @contextmanager
    def ablation(self, name: str):
        """Switch the adapters of the loaded model to the ``adapter=<name>`` configuration for the block."""
        i2v_on, content_on = ABLATIONS[name]
        unet, bundle = self.bundle.unet, self.bundle
        has_i2v = bool(i2v_adapter_layers(unet))
        saved_content, saved_kv = None, bundle.noised_kv
        if has_i2v:
            set_i2v_adapter_enabled(unet, i2v_on)
        if not i2v_on:
            bundle.noised_kv = False        # adapter.noised_kv belongs to the adapter: rows without it, as sample.py
        if bundle.content_enabled and not content_on:
            layers = [a for _, a in spatial_attention_layers(unet, "attn2")]
            saved_content = ([(a, a.processor) for a in layers], bundle.image_proj, bundle.image_encoder)
            for a in layers:
                a.processor = None          # plain cross-attention on the text tokens, as without an IP-Adapter
            bundle.image_proj = bundle.image_encoder = None   # condition() then gives text tokens only
        try:
            yield
        finally:
            bundle.noised_kv = saved_kv
            if has_i2v:
                set_i2v_adapter_enabled(unet, True)
            if saved_content is not None:
                procs, bundle.image_proj, bundle.image_encoder = saved_content
                for a, proc in procs:
                    a.processor = proc


def settings_with(settings: DemoSettings, **changes) -> DemoSettings:
    """A copy with some fields changed (the side-by-side mode's second column)."""
    return replace(settings, **changes)
