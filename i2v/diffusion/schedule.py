"""DDPM noise schedule (betas, ᾱ, forward noising) and diffusers samplers built on the same betas.

One :class:`NoiseSchedule` per backbone is used by training (``add_noise``) and sampling (``make_scheduler``),
so both see exactly the same ᾱ_t. Betas are computed the way diffusers computes them (float32 ``linspace``;
``scaled_linear`` = linspace of square roots, squared), so ``alphas_cumprod`` is bit-identical to every diffusers
scheduler built by :func:`make_scheduler`.

Sampler convention (official I2V-Adapter / AnimateDiff DDIM): ``DDIMScheduler(beta_start, beta_end,
beta_schedule)`` with the pipeline forcing ``steps_offset=1`` and ``clip_sample=False``; everything else is the
diffusers default, i.e. ``timestep_spacing="leading"`` and ``set_alpha_to_one=True`` (the final DDIM step lands on
ᾱ=1, returning the predicted x0). With 25 steps the DDIM timesteps are 961, 921, …, 41, 1. SD1.5's own
``scheduler_config.json`` says ``set_alpha_to_one=False``; the difference is one final step to ᾱ_0=0.99915
instead of 1, and it is exposed as :attr:`SamplerConfig.set_alpha_to_one`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
SCHEDULER_NAMES = ("ddim", "euler", "dpmpp", "ddpm")


class NoiseSchedule:
    """Variance-preserving DDPM schedule with ``num_train_timesteps`` integer steps 0..N-1.

    ``prediction_type`` is what the network outputs: ``"epsilon"`` (SD1.5, SDXL, AnimateDiff: the noise ε) or
    ``"v_prediction"`` (SD2.x-style v = α_t ε − σ_t z; the toy base, see ``i2v.toy.pretrain``). Training regresses
    :meth:`target`; everything that reads the output as noise goes through :meth:`to_eps`; samplers get the same
    type from :func:`make_scheduler`.

    Attributes:
        betas, alphas_cumprod: ``(N,)`` float32 tensors (ᾱ_t = Π_{s≤t} (1 − β_s)).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon"):
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.prediction_type = prediction_type
        if not 0.0 < beta_start < beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.beta_schedule = beta_schedule
        n = self.num_train_timesteps
        if beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
        else:
            self.betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float32) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def __repr__(self) -> str:
        return (f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps}, beta_start={self.beta_start}, "
                f"beta_end={self.beta_end}, beta_schedule={self.beta_schedule!r}, "
                f"prediction_type={self.prediction_type!r})")

    def _check_t(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point:
            raise TypeError(f"timesteps must be integer DDPM indices, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got {t.tolist()}")
        return t.long()

    def alpha_sigma(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t) for integer timesteps ``t`` of any shape (same shape out)."""
        t = self._check_t(t)
        ac = self.alphas_cumprod.to(t.device)[t]
        return ac.sqrt(), (1.0 - ac).sqrt()

    def _ab(self, t: torch.Tensor, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """α_t, σ_t of ``(B,)`` timesteps shaped to broadcast against ``like`` ``(B, ...)``, in its dtype."""
        t = self._check_t(t).to(like.device)
        ac = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)[t]
        shape = (-1,) + (1,) * (like.dim() - 1)
        return (ac ** 0.5).reshape(shape), ((1 - ac) ** 0.5).reshape(shape)

    def target(self, z: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for clean ``z``, noise ``eps`` and ``(B,)`` timesteps ``t``: ε, or
        v = α_t ε − σ_t z."""
        if self.prediction_type == "epsilon":
            return eps
        a, s = self._ab(t, z)
        return a * eps - s * z

    def to_eps(self, output: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise ε̂ a network ``output`` at ``z_t`` stands for (identity for ε-prediction; α_t v̂ + σ_t z_t
        for v-prediction, since α_t v + σ_t z_t = (α_t² + σ_t²) ε = ε)."""
        if self.prediction_type == "epsilon":
            return output
        a, s = self._ab(t, z_t)
        return a * output + s * z_t

    def add_noise(self, z: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process z_t = α_t z + σ_t ε.

        Args:
            z, eps: ``(B, ...)`` — video latents ``(B, C, F, H, W)`` or images ``(B, C, H, W)``.
            t: ``(B,)`` integer timesteps, one per sample (shared by all frames).
        Returns:
            ``(B, ...)`` noisy latents, dtype of ``z``.
        """
        if z.shape != eps.shape:
            raise ValueError(f"z {tuple(z.shape)} and eps {tuple(eps.shape)} must have the same shape")
        t = self._check_t(t).to(z.device)
        if t.shape != (z.shape[0],):
            raise ValueError(f"t must have shape ({z.shape[0]},) (one timestep per sample), got {tuple(t.shape)}")
        # Same arithmetic as diffusers' DDPMScheduler.add_noise: ᾱ in the latent dtype, then sqrt.
        ac = self.alphas_cumprod.to(device=z.device, dtype=z.dtype)[t]
        shape = (-1,) + (1,) * (z.dim() - 1)
        a, s = (ac ** 0.5).reshape(shape), ((1 - ac) ** 0.5).reshape(shape)
        return a * z + s * eps


@dataclass
class SamplerConfig:
    """Sampler options shared by every scheduler kind (defaults: official I2V-Adapter DDIM, see module doc)."""

    timestep_spacing: str = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = True  # DDIM only
    prediction_type: Optional[str] = None  # None: the backbone schedule's (what its network was trained to output)
    dpm_solver_order: int = 2  # DPM-Solver++ only


def make_scheduler(name: str, schedule: NoiseSchedule, config: SamplerConfig | None = None, **overrides):
    """A diffusers scheduler with ``schedule``'s betas.

    Args:
        name: ``"ddim"`` (default sampler), ``"euler"`` (EulerDiscrete; scales the model input and starts from
            ``init_noise_sigma``-scaled noise), ``"dpmpp"`` (DPMSolverMultistep, ``dpmsolver++``, order 2) or
            ``"ddpm"`` (ancestral, stochastic: uses the sampling generator).
        schedule: the backbone's :class:`NoiseSchedule`.
        config: spacing / offset options; ``overrides`` are passed to the scheduler constructor last.
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cfg = config or SamplerConfig()
    common = dict(num_train_timesteps=schedule.num_train_timesteps, beta_start=schedule.beta_start,
                  beta_end=schedule.beta_end, beta_schedule=schedule.beta_schedule,
                  prediction_type=cfg.prediction_type or schedule.prediction_type, timestep_spacing=cfg.timestep_spacing,
                  steps_offset=cfg.steps_offset)
    if name == "ddim":
        kw = dict(common, clip_sample=False, set_alpha_to_one=cfg.set_alpha_to_one)
        cls = DDIMScheduler
    elif name == "ddpm":
        kw = dict(common, clip_sample=False, variance_type="fixed_small")
        cls = DDPMScheduler
    elif name == "euler":
        kw = dict(common)
        cls = EulerDiscreteScheduler
    elif name == "dpmpp":
        kw = dict(common, algorithm_type="dpmsolver++", solver_order=cfg.dpm_solver_order)
        cls = DPMSolverMultistepScheduler
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULER_NAMES}")
    kw.update(overrides)
    sched = cls(**kw)
    ours = schedule.alphas_cumprod
    if sched.alphas_cumprod.shape != ours.shape or not torch.equal(sched.alphas_cumprod.float(), ours):
        raise RuntimeError(f"{cls.__name__} alphas_cumprod differ from {schedule!r}; check the overrides {overrides}")
    return sched

