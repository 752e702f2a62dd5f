"""First-frame-clamped video sampling loop (DESIGN "Sampling"; paper §3.3).

Frame 0 is the clean latent of the input image at every step, exactly as in training (frame 0 clean, shared t):

* only frames 1..F−1 are stepped: ``scheduler.step`` sees the ``(B, C, F−1, H, W)`` slice (multistep solvers keep
  their history on that slice), then frame 0 is re-attached — it is the input tensor itself, bitwise;
* the UNet input is ``scheduler.scale_model_input(x_t)`` for frames 1..F−1 and the **unscaled clean latent** for
  frame 0. For DDIM/DDPM/DPM++ scaling is the identity. For Euler-type samplers the state is x = z_t/α_t and
  ``scale_model_input`` divides by sqrt(σ²+1) (= multiplies by α_t), which is what the UNet was trained on; frame 0
  is written into the already-scaled input, so the network sees the clean latent as in training;
* one batched forward per step for ``[uncond; cond]`` (batch 2B) when ``cfg != 1``; ``cfg == 1`` runs the
  conditional branch only. NFE counts UNet calls (a batched guided call counts once).
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, Optional

import torch
from tqdm.auto import tqdm

from .fsp import frame_similarity_prior, fsp_start_index, pure_noise_init
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


@torch.no_grad()
def sample_video(unet: Callable, first_latent: torch.Tensor, cond: torch.Tensor, uncond: Optional[torch.Tensor],
                 *, scheduler, schedule=None, steps: int = 25, cfg: float = 7.5, n_frames: int = 16,
                 t0: float = 1.0, p: float = 0.0, fsp: bool = True, generator: Optional[torch.Generator] = None,
                 added_cond: Optional[Dict[str, torch.Tensor]] = None,
                 added_uncond: Optional[Dict[str, torch.Tensor]] = None, controlnet=None,
                 control: Optional[torch.Tensor] = None, callback: Optional[Callable] = None,
                 progress: bool = True, blur_kernel: int = 9, blur_sigma: float = 18.0) -> dict:
    """Denoise frames 1..F−1 of a video whose frame 0 is ``first_latent``.

    Args:
        unet: ``unet(x (N,C,F,H,W), t (N,), context (N,L,d), added_cond=, down_residuals=, mid_residual=)
            -> eps (N,C,F,H,W)``.
        first_latent: ``(B, C, H, W)`` encoded input image (already multiplied by the VAE scale).
        cond, uncond: UNet contexts ``(B, L, d)`` (text + image tokens, built by the caller; ``uncond`` from the
            empty/negative prompt and the zero image); batch 1 is broadcast. ``uncond`` may be None if cfg == 1.
        scheduler: diffusers scheduler (see :func:`i2v.diffusion.schedule.make_scheduler`); its state is reset.
        schedule: optional :class:`NoiseSchedule`; if given, the scheduler's ᾱ must equal it.
        steps, cfg, n_frames: sampler steps S, guidance scale, frames F (frame 0 included).
        t0, p, fsp: Frame Similarity Prior (see :mod:`i2v.diffusion.fsp`); ``fsp=False``: pure noise, S steps.
        added_cond / added_uncond: SDXL extra conditioning dicts for the two branches (uncond defaults to cond).
        controlnet: optional :class:`i2v.diffusion.controlnet.VideoControlNet`; ``control`` ``(B, F, 3, H', W')``
            in [-1, 1] (one control image per frame).
        callback: ``callback(i, t, latents)`` after every step.
    Returns:
        dict with ``latents`` ``(B, C, F, H, W)`` (frame 0 bitwise ``first_latent``), ``nfe`` / ``unet_calls``
        (network forwards), ``steps`` (scheduler steps run), ``timesteps`` (those steps' timesteps),
        ``start_index`` (steps skipped by SDEdit truncation).
    """
    if first_latent.dim() != 4:
        raise ValueError(f"first_latent must be (B, C, H, W), got shape {tuple(first_latent.shape)}")
    if schedule is not None and not torch.equal(scheduler.alphas_cumprod.float().cpu(), schedule.alphas_cumprod):
        raise ValueError(f"scheduler {type(scheduler).__name__} does not use the backbone schedule {schedule!r}")
    if (controlnet is None) != (control is None):
        raise ValueError("controlnet and control must be given together")
    b, device = first_latent.shape[0], first_latent.device
    context = guidance_context(cond, uncond, cfg, b)
    added = guidance_added_cond(added_cond, added_uncond, cfg, b)
    if control is not None:
        if control.dim() != 5 or control.shape[:2] != (b, n_frames) or control.shape[2] != 3:
            raise ValueError(f"control must be (B={b}, F={n_frames}, 3, H, W), got {tuple(control.shape)}")
        control = duplicate_for_guidance(control, cfg)

    scheduler.set_timesteps(steps, device=device)
    order = getattr(scheduler, "order", 1)
    start = fsp_start_index(steps, t0) if fsp else 0
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * order)
    if fsp:
        x, start = frame_similarity_prior(first_latent, n_frames, t0, p, scheduler, generator,
                                          kernel_size=blur_kernel, sigma=blur_sigma)
    else:
        x, start = pure_noise_init(first_latent, n_frames, scheduler, generator)
    timesteps = scheduler.timesteps[start * order:]
    step_kw = _step_kwargs(scheduler, generator)
    frame0 = first_latent.unsqueeze(2)  # (B, C, 1, H, W), never modified

    unet_calls = 0
    for i, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress, leave=False)):
        model_in = scheduler.scale_model_input(x, t)
        model_in = torch.cat([frame0, model_in[:, :, 1:].to(frame0.dtype)], dim=2)
        model_in = duplicate_for_guidance(model_in, cfg)
        t_in = _unet_timestep(t, model_in.shape[0], device)
        down = mid = None
        if controlnet is not None:
            down, mid = controlnet(model_in, t_in, context, control, added_cond=added)
        eps = unet(model_in, t_in, context, added_cond=added, down_residuals=down, mid_residual=mid)
        unet_calls += 1
        if eps.shape != model_in.shape:
            raise ValueError(f"unet returned {tuple(eps.shape)}, expected {tuple(model_in.shape)}")
        eps = split_guided(eps, cfg)
        moving = scheduler.step(eps[:, :, 1:], t, x[:, :, 1:], **step_kw).prev_sample
        x = torch.cat([frame0, moving.to(frame0.dtype)], dim=2)
        if callback is not None:
            callback(i, t, x)
    return {"latents": x, "nfe": unet_calls, "unet_calls": unet_calls, "steps": len(timesteps),
            "timesteps": timesteps.detach().cpu(), "start_index": start}
