"""Sampling-time frame-1 oracle: how good can a base's *samples* get when frame 1 is read perfectly?

The learning diagnostic (:mod:`i2v.training.diagnose`) bounds the ε-loss a perfect reader of frame 1 leaves on a
base (its ``static_oracle`` column). This module asks the same question of the sampled videos, which is what the toy
metrics score: :class:`FrameOneOracle` wraps the sampler's denoiser and, at every step, replaces the network's
prediction by the one that lands on the ground-truth clip, at the latent elements chosen by ``mode``:

* ``static`` -- where the held-out clip's clean latent equals frame 1's (within ``static_tol`` × its RMS): "copy
  frame 1" exactly where copying is right, the network everywhere else (the moving object and its trail). What a
  perfect I2V-Adapter could add to this base at most, by reading what stays put; the rest of the video (the object)
  is the base's own rendering.
* ``ground_truth`` -- everywhere: the sampler then reproduces the ground-truth clip (a check of the wrapper, the
  sampler and the metrics: its scores are the ground-truth row's).

:class:`FirstFrameAttention` (``first_frame_attention``) is a reference of another kind, not an oracle: it reads
only the input frame, with no trained part -- frame 1 enters the network noised to the sampler's t (one fixed noise
for the whole run), and every spatial self-attention reads frame 1's keys/values in place of its own (zero-shot
first-frame attention; the learning diagnostic's ``cross_frame_noisy`` probe, as a sampler).
:class:`NoisedFirstFrameKV` (``noised_first_frame_kv``) keeps frame 1 clean in the input, as the method does, and
swaps only the self-attention term of frames 2..F in the finest-resolution attn1 layers for one reading the
keys/values of frame 1 noised to t (from a second, one-frame pass); any I2V-Adapter branch stays.

The oracles' prediction is formed in the network's output space (ε, or v for a v-prediction base) at the sampler's
timestep, for the frames the sampler steps (frame 0 is the clamped input image). It needs the ground-truth latents of
the clip being sampled (:meth:`FrameOneOracle.set_clip`), so it exists for the toy world's held-out clips:
``python evaluate.py mode=toy experiment=toy_table2 toy_eval.oracle=static``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from i2v.models.noised_kv import NoisedKVDenoiser, training_timesteps

ORACLES = ("static", "ground_truth")
REFERENCES = ORACLES + ("first_frame_attention", "noised_first_frame_kv")   # toy_eval.oracle: sampling_reference


def check_oracle_steps(steps: Optional[Sequence[float]]) -> Optional[tuple[float, float]]:
    """``toy_eval.oracle_steps``: None (every step) or ``[lo, hi]``, the sampler timesteps (0..T-1, inclusive) at
    which the oracle replaces the network's prediction; the other steps keep the network's own. Returns a tuple."""
    if steps is None:
        return None
    vals = list(steps)
    if len(vals) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals) \
            or not vals[0] <= vals[1]:
        raise ValueError(f"toy_eval.oracle_steps must be null or [lo, hi] timesteps with lo <= hi, got {steps!r}")
    return float(vals[0]), float(vals[1])


def static_mask(z: torch.Tensor, tol: float = 1e-3) -> torch.Tensor:
    """Clean latents ``(B, C, F, H, W)`` -> bool, same shape: True where an element equals frame 1's within ``tol`` ×
    the clip's latent RMS (what did not change from frame 1; frame 0 all True). Also the learning diagnostic's
    ``static_oracle`` mask (:mod:`i2v.training.diagnose`)."""
    rms = z.pow(2).mean(dim=tuple(range(1, z.dim())), keepdim=True).sqrt()    # per clip
    return (z - z[:, :, :1]).abs() <= tol * rms


class FrameOneOracle:
    """``denoise(x, t, cond, uncond)`` with the network's output replaced by the ground-truth clip's where ``mode``
    says (see the module docstring). ``schedule``: the bundle's :class:`~i2v.diffusion.schedule.NoiseSchedule`."""

    def __init__(self, denoise: Callable, schedule, mode: str = "static", static_tol: float = 1e-3,
                 steps: Optional[Sequence[float]] = None):
        if mode not in ORACLES:
            raise ValueError(f"oracle must be one of {ORACLES}, got {mode!r}")
        self.denoise, self.schedule, self.mode, self.static_tol = denoise, schedule, mode, float(static_tol)
        self.steps = check_oracle_steps(steps)
        self.source: Optional[torch.Tensor] = None
        self.where: Optional[torch.Tensor] = None

    def set_clip(self, z: torch.Tensor) -> None:
        """``z`` ``(B, C, F, H, W)``: the clean latents of the ground-truth clip(s) about to be sampled."""
        if z.dim() != 5 or z.shape[2] < 2:
            raise ValueError(f"expected clean latents (B, C, F>=2, H, W), got {tuple(z.shape)}")
        if self.mode == "static":
            where, source = static_mask(z, self.static_tol), z[:, :, :1].expand_as(z)
        else:
            where, source = torch.ones_like(z, dtype=torch.bool), z
        where[:, :, 0] = False           # frame 0 is the sampler's clamped input: the network's output stays
        self.where, self.source = where, source

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict, uncond: Optional[dict]) -> torch.Tensor:
        out = self.denoise(x, t, cond, uncond)
        if self.source is None:
            raise RuntimeError("FrameOneOracle: call set_clip(ground-truth latents) before sampling")
        if self.source.shape[1:] != x.shape[1:] or self.source.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"ground-truth latents {tuple(self.source.shape)} do not match the sampled "
                             f"latents {tuple(x.shape)}")
        tt = training_timesteps(t, x)
        if self.steps is not None and not self.steps[0] <= float(tt.flatten()[0]) <= self.steps[1]:
            return out                   # a step outside the window: the network's own prediction
        source = self.source.to(x).expand_as(x)
        a, s = self.schedule.alpha_sigma(tt)
        a, s = (v.to(x).view(-1, *([1] * (x.dim() - 1))) for v in (a, s))
        eps = (x - a * source) / s
        return torch.where(self.where.to(x.device).expand_as(x), self.schedule.target(source, eps, tt), out)


class FirstFrameAttention:
    """``denoise(x, t, cond, uncond)`` of a base with zero-shot first-frame attention (module docstring): frame 0 of
    ``x`` (the sampler's clean input latent) is replaced by ``z_1`` noised to ``t`` with one fixed noise, and the call
    runs with every attn1 of ``unet`` reading frame 0's keys/values. ``seed``: that noise."""

    def __init__(self, denoise: Callable, schedule, unet, seed: int = 0):
        self.denoise, self.schedule, self.unet, self.seed = denoise, schedule, unet, int(seed)
        self.noise: Optional[torch.Tensor] = None

    def set_clip(self, z: torch.Tensor) -> None:
        """``z`` ``(B, C, F, H, W)``: the clip's clean latents; only frame 0 (the input image) is kept."""
        self.noise = torch.randn(z[:, :, :1].shape, generator=torch.Generator().manual_seed(self.seed))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict, uncond: Optional[dict]) -> torch.Tensor:
        from i2v.training.diagnose import probe_attn1

        if self.noise is None:
            raise RuntimeError("FirstFrameAttention: call set_clip(latents) before sampling")
        tt = training_timesteps(t, x)
        x = x.clone()
        x[:, :, :1] = self.schedule.add_noise(x[:, :, :1], self.noise.to(x).expand_as(x[:, :, :1]), tt)
        with probe_attn1(self.unet, "cross_frame"):
            return self.denoise(x, t, cond, uncond)


class NoisedFirstFrameKV(FirstFrameAttention):
    """``denoise(x, t, cond, uncond)`` with frame 0 clean in the input; in every attn1 at the finest resolution (the
    most tokens), frames 1.. have their self-attention term ``Attn(Q_i, K_i, V_i)W_O`` replaced by
    ``Attn(Q_i, K̃_1, Ṽ_1)W_O``, K̃_1/Ṽ_1 the keys/values of that layer in a pass on frame 0 alone noised to ``t``
    (one fixed noise); the layer's processor (e.g. the I2V-Adapter branch) otherwise runs as it is. Two network
    calls per step (the second on one frame). The sampling half of ``adapter.noised_kv``
    (:mod:`i2v.models.noised_kv`) applied to any adapter, e.g. one trained without it, with the noise of seed 0."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict, uncond: Optional[dict]) -> torch.Tensor:
        if self.noise is None:
            raise RuntimeError("NoisedFirstFrameKV: call set_clip(latents) before sampling")
        return NoisedKVDenoiser(self.denoise, self.schedule, self.unet, self.noise)(x, t, cond, uncond)


def sampling_reference(mode: str, denoise: Callable, schedule, unet, steps: Optional[Sequence[float]] = None):
    """The wrapper of ``toy_eval.oracle=<mode>`` (:data:`REFERENCES`) around the sampler's ``denoise``; ``steps``
    (``toy_eval.oracle_steps``): the frame-1 oracle at those timesteps only (:func:`check_oracle_steps`)."""
    if mode not in REFERENCES:
        raise ValueError(f"toy_eval.oracle must be one of {REFERENCES}, got {mode!r}")
    if steps is not None and mode not in ORACLES:
        raise ValueError(f"toy_eval.oracle_steps windows the frame-1 oracle ({' | '.join(ORACLES)}), not "
                         f"toy_eval.oracle={mode}")
    if mode == "first_frame_attention":
        return FirstFrameAttention(denoise, schedule, unet)
    if mode == "noised_first_frame_kv":
        return NoisedFirstFrameKV(denoise, schedule, unet)
    return FrameOneOracle(denoise, schedule, mode, steps=steps)
