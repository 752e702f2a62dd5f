"""Noised first-frame keys/values: an opt-in variant of the I2V-Adapter (``adapter.noised_kv=true``), not the paper's.

The paper's branch (:mod:`i2v.models.adapters`) reads the keys/values of the *clean* frame 1, which the frozen base
never saw during its pretraining: there every frame was noised to the same t. In this variant, in the spatial
self-attention layers of the finest resolution (the most tokens: the toy's 16², SD1.5's 64² at 512 px), frames
2..F have their own self-attention term replaced::

    Attn(Q_i, K_i, V_i) W_O   ->   Attn(Q_i, K̃_1, Ṽ_1) W_O        (i = 2..F)

where ``K̃_1 = to_k(X̃_1)``, ``Ṽ_1 = to_v(X̃_1)`` are that layer's frozen projections in a pass of the same network on
frame 1 alone, noised to the current t (``z̃_1 = √ᾱ_t z_1 + √(1−ᾱ_t) n``). The I2V-Adapter branch (clean frame 1)
runs beside it unchanged, frame 1's own output and the coarser layers are untouched, and nothing new is trained or
stored: the variant is a different forward, used in training (``n`` = frame 1's own training noise; that pass
runs without gradient) and in sampling (``n`` one fixed draw per video). Cost: one extra forward of a single frame
per step. Frame 1 stays clean in the input, as in the method. Why and what it does on the toy world:
docs/toy_world.md, "Noised first-frame keys/values".
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from i2v.models.adapters import I2VAdapterProcessor, attend_first_frame, attend_per_video
from i2v.models.attention import swapped_processors


def run_own(own, attn, h: torch.Tensor, context, num_frames) -> torch.Tensor:
    """What a layer computes with its own processor ``own`` (``None``: plain attention)."""
    return attn.default_forward(h, context) if own is None else own(attn, h, context, num_frames)


def with_noised_first_frame_kv(model, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                               x1: torch.Tensor) -> torch.Tensor:
    """``run(x)`` with the finest spatial attn1 layers of ``model`` reading frame 1's noised keys/values (module
    docstring). ``run(latents)`` calls the network on ``latents`` (a closure over t and the condition); ``x``
    ``(B, C, F, h, w)`` is the usual input (frame 0 clean), ``x1`` ``(B, C, 1, h, w)`` frame 1 noised to t. ``run(x1)``
    is called first, without gradient, to store every layer's keys/values."""
    if x1.dim() != 5 or x1.shape[2] != 1 or x1.shape[:2] != x.shape[:2] or x1.shape[3:] != x.shape[3:]:
        raise ValueError(f"x1 must be one frame (B, C, 1, h, w) matching x {tuple(x.shape)}, got {tuple(x1.shape)}")
    store: dict = {}
    finest = 0           # during the one-frame pass: the most tokens seen so far; after it: the finest layers'

    def capture(attn, own):
        def proc(attn, h, context=None, num_frames=None):
            nonlocal finest
            if h.shape[1] >= finest:      # coarser layers are never read: their keys/values are not computed
                finest = h.shape[1]
                store[attn] = (attn.to_k(h), attn.to_v(h))
            return run_own(own, attn, h, context, num_frames)
        return proc

    def read(attn, own):
        def proc(attn, h, context=None, num_frames=None):
            if attn not in store or store[attn][0].shape[1] < finest:
                return run_own(own, attn, h, context, num_frames)
            k1, v1 = store[attn]
            if num_frames is None or k1.shape[0] * num_frames != h.shape[0]:
                raise ValueError(f"noised_kv: {h.shape[0]} frame rows do not match {k1.shape[0]} videos × "
                                 f"num_frames={num_frames}")
            q = attn.to_q(h)
            swapped = attend_per_video(attn, q, k1, v1, num_frames)     # every frame reads the noised frame 1
            if own is not None and not isinstance(own, I2VAdapterProcessor):
                # another processor: keep its output, swap only its plain self-attention term (one more attention)
                plain = attn.default_forward(h)
                out = own(attn, h, context, num_frames)
                first = (torch.arange(h.shape[0], device=h.device) % num_frames == 0).view(-1, 1, 1)
                return torch.where(first, out, out - plain + attn.project_out(swapped))
            k, v = attn.to_k(h), attn.to_v(h)
            own_term = attn.attend(q[::num_frames], k[::num_frames], v[::num_frames])   # frame 0 keeps its own
            y = swapped.index_copy(0, torch.arange(0, h.shape[0], num_frames, device=h.device), own_term)
            out = attn.project_out(y)
            if isinstance(own, I2VAdapterProcessor) and own.enabled:      # the paper's branch, clean frame 1
                out = out + attn.to_out_ff(attend_first_frame(attn, attn.to_q_ff(h), k, v, num_frames))
            return out
        return proc

    with torch.no_grad(), swapped_processors(model, capture):
        run(x1)
    if not store:
        raise ValueError("noised_kv: the model has no spatial attn1 layers")
    finest = max(k.shape[1] for k, _ in store.values())
    with swapped_processors(model, read):
        return run(x)


def training_timesteps(t, x: torch.Tensor) -> torch.Tensor:
    """The sampler's scalar ``t`` as ``(B,)`` long training timesteps for ``x``; refused when it is not one
    (a sampler on continuous σ)."""
    t_val = float(torch.as_tensor(t).reshape(-1)[0])
    if t_val != round(t_val):
        raise ValueError(f"this sampler runs at t = {t_val}, not an integer training timestep: frame 1 cannot be "
                         f"noised to it (use scheduler ddim, ddpm or dpmpp)")
    return torch.full((x.shape[0],), int(round(t_val)), dtype=torch.long, device=x.device)


class NoisedKVDenoiser:
    """``denoise(x, t, cond, uncond)`` (e.g. a :class:`~i2v.diffusion.sampler.Denoiser`) run through
    :func:`with_noised_first_frame_kv`: frame 0 of ``x`` (the clamped input latent) noised to ``t`` with ``noise``
    ``(B|1, C, 1, h, w)``, one draw for the whole video. ``calls`` counts network calls (two per step)."""

    def __init__(self, denoise: Callable, schedule, unet, noise: Optional[torch.Tensor] = None):
        self.denoise, self.schedule, self.unet, self.noise = denoise, schedule, unet, noise

    @property
    def calls(self) -> int:
        return getattr(self.denoise, "calls", 0)

    def __call__(self, x: torch.Tensor, t, cond: dict, uncond: Optional[dict]) -> torch.Tensor:
        if self.noise is None:
            raise RuntimeError("NoisedKVDenoiser: set .noise (B|1, C, 1, h, w) before sampling")
        tt = training_timesteps(t, x)
        first = x[:, :, :1]
        x1 = self.schedule.add_noise(first, self.noise.to(first).expand_as(first), tt)
        return with_noised_first_frame_kv(self.unet, lambda z: self._run(z, t, cond, uncond), x, x1)

    def _run(self, z: torch.Tensor, t, cond: dict, uncond: Optional[dict]) -> torch.Tensor:
        control = getattr(self.denoise, "control", None)
        if control is None or z.shape[2] == control.shape[1]:
            return self.denoise(z, t, cond, uncond)
        self.denoise.control = control[:, :z.shape[2]]     # the one-frame pass: frame 1's ControlNet image
        try:
            return self.denoise(z, t, cond, uncond)
        finally:
            self.denoise.control = control
