"""First-frame-clamped video sampling loop (DESIGN "Sampling"; paper §3.3), k-diffusion/sgm-sized:
``sample_video(denoise, x_init, cond, uncond, timesteps, scheduler=...)``, with classifier-free guidance and the
ControlNet folded into the :class:`Denoiser`.

Frame 0 is the clean latent of the input image at every step, exactly as in training (frame 0 clean, shared t):

* only frames 1..F−1 are stepped: ``scheduler.step`` sees the ``(B, C, F−1, H, W)`` slice (multistep solvers keep
  their history on that slice), then frame 0 is re-attached — it is the input tensor's frame 0, bitwise;
* the network input is ``scheduler.scale_model_input(x_t)`` for frames 1..F−1 and the **unscaled clean latent** for
  frame 0. For DDIM/DDPM/DPM++ scaling is the identity. For Euler-type samplers the state is x = z_t/α_t and
  ``scale_model_input`` divides by sqrt(σ²+1) (= multiplies by α_t), which is what the UNet was trained on; frame 0
  is written into the already-scaled input, so the network sees the clean latent as in training;
* the :class:`Denoiser` runs one batched forward per step for ``[uncond; cond]`` (batch 2B) when the guidance scale
  is not 1; scale 1 runs the conditional branch only. NFE counts UNet calls (a batched guided call counts once).

``fixed_frames=0`` turns the same loop into plain text-to-video sampling of every frame (the toy base check).
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .guidance import duplicate_for_guidance, guidance_added_cond, guidance_context, split_guided


def _step_kwargs(scheduler, generator: Optional[torch.Generator]) -> dict:
    params = inspect.signature(scheduler.step).parameters
    kw = {}
    if "generator" in params:
        kw["generator"] = generator
    if "eta" in params:
        kw["eta"] = 0.0
    return kw


def _unet_timestep(t: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Scheduler timestep (scalar) → ``(n,)``; integral values become long DDPM indices, others stay float."""
    t = t.to(device)
    if t.dtype.is_floating_point and torch.equal(t, t.round()):
        t = t.long()
    return t.reshape(1).expand(n)


def check_scheduler(scheduler, schedule) -> None:
    """Raise unless the diffusers ``scheduler`` uses the ᾱ and the prediction type of the backbone's
    :class:`NoiseSchedule`."""
    if not torch.equal(scheduler.alphas_cumprod.float().cpu(), schedule.alphas_cumprod):
        raise ValueError(f"scheduler {type(scheduler).__name__} does not use the backbone schedule {schedule!r}")
    kind = getattr(getattr(scheduler, "config", None), "prediction_type", schedule.prediction_type)
    if kind != schedule.prediction_type:
        raise ValueError(f"scheduler {type(scheduler).__name__} reads the network output as {kind!r}, but the "
                         f"backbone was trained for {schedule.prediction_type!r} (schedule.prediction_type)")


def check_steps(scheduler, steps: int, num_train_timesteps: int) -> None:
    """Raise (one line) when ``scheduler`` cannot take ``steps`` sampling steps on a schedule of
    ``num_train_timesteps``: more steps than timesteps, or (``leading`` spacing with ``steps_offset`` 1, the official
    setting) a timestep past the last one, as 1000 steps of 1000 give, or before the first (``trailing``, 998)."""
    if steps >= num_train_timesteps:
        raise ValueError(f"sampling.steps={steps} does not fit the {num_train_timesteps} training timesteps: use at "
                         f"most {num_train_timesteps - 1}")
    scheduler.set_timesteps(int(steps))
    lo, hi = int(scheduler.timesteps.min()), int(scheduler.timesteps.max())
    if lo < 0 or hi >= num_train_timesteps:
        raise ValueError(f"sampling.steps={steps} does not fit the {num_train_timesteps} training timesteps with "
                         f"scheduler {type(scheduler).__name__} (its timesteps would reach "
                         f"{lo if lo < 0 else hi}): use fewer steps")


class Denoiser:
    """Guided ε: ``denoise(x (B,C,F,H,W), t (scalar), cond, uncond) -> ε (B,C,F,H,W)``.

    ``cond`` / ``uncond`` are ``{"context": (B|1, L, d), "added_cond": dict | None}`` (as from
    :meth:`i2v.pipeline.bundle.Bundle.condition`); ``uncond`` may be ``None`` when ``guidance_scale == 1``.
    The UNet is called as ``unet(x, t (N,), context, added_cond=, down_residuals=, mid_residual=)``; with a
    ``controlnet`` (:class:`i2v.diffusion.controlnet.VideoControlNet`) its residuals for ``control``
    ``(B, F, 3, H', W')`` in [-1, 1] (one control image per frame) are added. ``calls`` counts network forwards.
    """

    def __init__(self, unet: Callable, guidance_scale: float = 1.0, controlnet=None,
                 control: Optional[torch.Tensor] = None):
        if (controlnet is None) != (control is None):
            raise ValueError("controlnet and control must be given together")
        self.unet, self.scale = unet, float(guidance_scale)
        self.controlnet, self.control = controlnet, control
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict, uncond: Optional[dict]) -> torch.Tensor:
        b, f = x.shape[0], x.shape[2]
        context = guidance_context(cond["context"], None if uncond is None else uncond["context"], self.scale, b)
        added = guidance_added_cond(cond.get("added_cond"), None if uncond is None else uncond.get("added_cond"),
                                    self.scale, b)
        model_in = duplicate_for_guidance(x, self.scale)
        t_in = _unet_timestep(t, model_in.shape[0], x.device)
        down = mid = None
        if self.controlnet is not None:
            control = self.control
            if control.dim() != 5 or control.shape[:2] != (b, f) or control.shape[2] != 3:
                raise ValueError(f"control must be (B={b}, F={f}, 3, H, W), got {tuple(control.shape)}")
            down, mid = self.controlnet(model_in, t_in, context, duplicate_for_guidance(control, self.scale),
                                        added_cond=added)
        eps = self.unet(model_in, t_in, context, added_cond=added, down_residuals=down, mid_residual=mid)
        self.calls += 1
        if eps.shape != model_in.shape:
            raise ValueError(f"unet returned {tuple(eps.shape)}, expected {tuple(model_in.shape)}")
        return split_guided(eps, self.scale)


@torch.no_grad()
def sample_video(denoise: Callable, x_init: torch.Tensor, cond: dict, uncond: Optional[dict],
                 timesteps: torch.Tensor, *, scheduler, generator: Optional[torch.Generator] = None,
                 callback: Optional[Callable] = None, progress: bool = False, fixed_frames: int = 1) -> dict:
    """Denoise frames ``fixed_frames..F−1`` of ``x_init``; the first ``fixed_frames`` stay as given.

    Args:
        denoise: ``denoise(x, t, cond, uncond) -> ε`` (a :class:`Denoiser`; guidance and ControlNet inside).
        x_init: ``(B, C, F, H, W)`` start latents, e.g. from :func:`i2v.diffusion.fsp.initial_latents`
            (frame 0 = the encoded input image).
        cond, uncond: passed to ``denoise`` unchanged.
        timesteps: the timesteps to run, in order; ``scheduler`` has been set up for them.
        callback: ``callback(i, t, latents)`` after every step.
    Returns:
        dict with ``latents`` ``(B, C, F, H, W)`` (the fixed frames bitwise those of ``x_init``), ``nfe`` /
        ``unet_calls`` (network forwards, when ``denoise`` counts them), ``steps`` (scheduler steps run),
        ``timesteps`` (those steps' timesteps).
    """
    if x_init.dim() != 5:
        raise ValueError(f"x_init must be (B, C, F, H, W), got shape {tuple(x_init.shape)}")
    k = int(fixed_frames)
    fixed = x_init[:, :, :k]  # never modified
    calls_before = getattr(denoise, "calls", 0)
    step_kw = _step_kwargs(scheduler, generator)
    x = x_init
    for i, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress, leave=False)):
        model_in = scheduler.scale_model_input(x, t)
        model_in = torch.cat([fixed, model_in[:, :, k:].to(fixed.dtype)], dim=2)
        eps = denoise(model_in, t, cond, uncond)
        moving = scheduler.step(eps[:, :, k:], t, x[:, :, k:], **step_kw).prev_sample
        x = torch.cat([fixed, moving.to(fixed.dtype)], dim=2)
        if callback is not None:
            callback(i, t, x)
    calls = getattr(denoise, "calls", 0) - calls_before
    return {"latents": x, "nfe": calls, "unet_calls": calls, "steps": len(timesteps),
            "timesteps": timesteps.detach().cpu()}
