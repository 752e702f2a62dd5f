"""Frame Similarity Prior (paper §3.3, eq. 7): start frames 2..F from the noised, degraded input image.

    x_{t0}^i = α_{t0} D(x_0^1) + σ_{t0} ε,      D(x) = M ∘ x + (1 − M) ∘ GaussianBlur(x)

Definitions fixed here (see DESIGN.md "Sampling and the Frame Similarity Prior"):

* ``p`` is the probability that an element is taken from the **blurred** latent: ``M ~ Bernoulli(1 − p)``
  elementwise, so ``p = 0`` gives D = identity and ``p = 1`` the plain blur (the paper's wording says the
  opposite, its Table 2 trend agrees with this definition). The official code hard-wires ``p = 0.5``.
* The mask is drawn independently for every element of the repeated latent ``(B, C, F−1, H, W)`` (so every
  frame gets its own mask), as in the official ``downgrade_input`` which masks the whole repeated tensor.
* The blur is a 9×9 Gaussian with σ = 18 on latents, applied per channel and per frame (depthwise conv) with
  **reflect** padding, the same as ``torchvision.transforms.GaussianBlur`` used by the official code. Latents
  smaller than the kernel radius + 1 cannot be reflect-padded and fall back to replicate padding.
* SDEdit truncation: with ``S`` sampler steps the loop runs the last ``n = round_half_up(S·t0)`` (at least 1)
  timesteps, i.e. skips the first ``S − n``; the noise level is that of the first kept timestep (t0 = 1 → the
  first, largest timestep, still carrying α_T·D(x)). Noise is added with the scheduler's own ``add_noise`` so
  that sigma-parametrised samplers (Euler) receive it in their own state space; after
  ``scale_model_input`` every sampler sees α_t·D(x) + σ_t·ε.
* The official release starts from the full schedule (t0 = 1) and always applies the prior.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange


def rand_like_gen(kind: str, shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``torch.rand``/``torch.randn`` drawn on the generator's device in float32, then moved to ``device``/``dtype``.

    Drawing in float32 on a fixed device makes a seed give the same numbers for any latent dtype/device.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    fn = {"rand": torch.rand, "randn": torch.randn}[kind]
    out = fn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32)
    return out.to(device=device, dtype=dtype)


def check_blur(kernel_size: int, sigma: float) -> None:
    """Refuse a blur that :func:`gaussian_kernel2d` cannot build (the messages name the two settings)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a number > 0, got {sigma}")


def gaussian_kernel2d(kernel_size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised ``(k, k)`` Gaussian kernel, built like torchvision's ``_get_gaussian_kernel2d``."""
    check_blur(kernel_size, sigma)
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = pdf / pdf.sum()
    return torch.outer(k1, k1).to(dtype=dtype, device=device)


def gaussian_blur(x: torch.Tensor, kernel_size: int = 9, sigma: float = 18.0) -> torch.Tensor:
    """Per-channel spatial Gaussian blur of ``(..., C, H, W)`` (e.g. ``(B, C, H, W)``) → same shape.

    Video latents ``(B, C, F, H, W)`` must be rearranged by the caller (``degrade`` does it).
    """
    if x.dim() < 3:
        raise ValueError(f"gaussian_blur expects (..., C, H, W), got shape {tuple(x.shape)}")
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    flat = x.reshape(-1, c, h, w)
    pad = kernel_size // 2
    mode = "reflect" if (pad < h and pad < w) else "replicate"
    kernel = gaussian_kernel2d(kernel_size, sigma, dtype=flat.dtype, device=flat.device)
    weight = kernel.expand(c, 1, kernel_size, kernel_size)
    out = F.conv2d(F.pad(flat, (pad, pad, pad, pad), mode=mode), weight, groups=c)
    return out.reshape(*lead, c, h, w)


def degrade(x: torch.Tensor, p: float, generator: Optional[torch.Generator] = None, kernel_size: int = 9,
            sigma: float = 18.0) -> torch.Tensor:
    """D(x) = M ∘ x + (1 − M) ∘ blur(x), each element taken from the blurred latent with probability ``p``.

    Args:
        x: ``(B, C, H, W)`` image latents or ``(B, C, F, H, W)`` video latents (blurred per frame).
        p: probability of taking the blurred value, in [0, 1]; 0 → exactly ``x``, 1 → exactly ``blur(x)``.
    Returns:
        tensor of ``x``'s shape and dtype.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if x.dim() == 5:
        blurred = rearrange(gaussian_blur(rearrange(x, "b c f h w -> b f c h w"), kernel_size, sigma),
                            "b f c h w -> b c f h w")
    elif x.dim() == 4:
        blurred = gaussian_blur(x, kernel_size, sigma)
    else:
        raise ValueError(f"degrade expects (B,C,H,W) or (B,C,F,H,W), got shape {tuple(x.shape)}")
    # keep = 1 with probability 1 - p  (rand ∈ [0, 1): p=0 keeps everything, p=1 keeps nothing)
    keep = rand_like_gen("rand", x.shape, generator, x.device) >= p
    return torch.where(keep, x, blurred)


def fsp_num_steps(num_steps: int, t0: float) -> int:
    """Number of sampler steps actually run for strength ``t0 ∈ (0, 1]``: round-half-up(S·t0), at least 1."""
    if not 0.0 < t0 <= 1.0:
        raise ValueError(f"t0 must lie in (0, 1], got {t0}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return max(1, min(num_steps, int(math.floor(num_steps * t0 + 0.5 + 1e-9))))


def fsp_start_index(num_steps: int, t0: float) -> int:
    """Index into the scheduler's timesteps of the first step run (SDEdit truncation)."""
    return num_steps - fsp_num_steps(num_steps, t0)


NOISE_DC = ("keep", "remove")


def check_noise_dc(noise_dc: str) -> None:
    if noise_dc not in NOISE_DC:
        raise ValueError(f"noise_dc must be one of {NOISE_DC}, got {noise_dc!r}")


def frame_similarity_prior(first_latent: torch.Tensor, num_frames: int, t0: float, p: float, scheduler,
                           generator: Optional[torch.Generator] = None, kernel_size: int = 9,
                           sigma: float = 18.0, noise_dc: str = "keep") -> Tuple[torch.Tensor, int]:
    """Initial video latents under the Frame Similarity Prior.

    Args:
        first_latent: ``(B, C, H, W)`` clean latent of the input image.
        num_frames: F (≥ 2), frame 0 included.
        scheduler: a diffusers scheduler on which ``set_timesteps(S)`` has been called.
        noise_dc: ``keep`` (the paper: ε as drawn) | ``remove`` (not in the paper: each frame's ε has its spatial
            mean removed, per channel, so every frame starts from the prior's own mean colour, D(first_latent)'s,
            instead of that plus a random offset a network cannot tell from colour; docs/toy_world.md).
    Returns:
        ``(x_init (B, C, F, H, W), start_index)``: frame 0 is ``first_latent`` (bitwise), frames 1..F−1 are
        ``scheduler.add_noise(D(first_latent), ε, timesteps[start_index])``; the loop runs ``timesteps[start_index:]``.
    """
    _check_first(first_latent, num_frames)
    check_noise_dc(noise_dc)
    num_steps = len(scheduler.timesteps) // getattr(scheduler, "order", 1)
    start = fsp_start_index(num_steps, t0)
    return _prior_from(first_latent, num_frames, p, scheduler, start, generator, kernel_size, sigma, noise_dc), start


def _prior_from(first_latent: torch.Tensor, num_frames: int, p: float, scheduler, start: int,
                generator: Optional[torch.Generator], kernel_size: int, sigma: float,
                noise_dc: str = "keep") -> torch.Tensor:
    """The prior's ``x_init (B, C, F, H, W)`` noised to the level of ``timesteps[start]`` (``noise_dc`` checked by
    the callers)."""
    b = first_latent.shape[0]
    rest = first_latent.unsqueeze(2).expand(-1, -1, num_frames - 1, -1, -1)
    rest = degrade(rest, p, generator, kernel_size, sigma)
    noise = rand_like_gen("randn", rest.shape, generator, rest.device, rest.dtype)
    if noise_dc == "remove":
        noise = noise - noise.mean(dim=(-2, -1), keepdim=True)
    t_start = scheduler.timesteps[start * getattr(scheduler, "order", 1)]
    noisy = scheduler.add_noise(rest, noise, t_start.reshape(1).repeat(b)).to(first_latent.dtype)
    return torch.cat([first_latent.unsqueeze(2), noisy], dim=2)


def pure_noise_init(first_latent: torch.Tensor, num_frames: int, scheduler,
                    generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, int]:
    """Prior disabled: frames 1..F−1 are ε·``scheduler.init_noise_sigma``; all steps run (start index 0).

    Args / returns as :func:`frame_similarity_prior`.
    """
    _check_first(first_latent, num_frames)
    b, c, h, w = first_latent.shape
    noise = rand_like_gen("randn", (b, c, num_frames - 1, h, w), generator, first_latent.device, first_latent.dtype)
    noise = noise * scheduler.init_noise_sigma
    return torch.cat([first_latent.unsqueeze(2), noise.to(first_latent.dtype)], dim=2), 0


def _check_first(first_latent: torch.Tensor, num_frames: int) -> None:
    if first_latent.dim() != 4:
        raise ValueError(f"first_latent must be (B, C, H, W), got shape {tuple(first_latent.shape)}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 (frame 0 is the input image), got {num_frames}")


def initial_latents(first_latent: torch.Tensor, num_frames: int, scheduler, steps: int, *, t0: float = 1.0,
                    p: float = 0.0, fsp: bool = True, generator: Optional[torch.Generator] = None,
                    kernel_size: int = 9, sigma: float = 18.0,
                    noise_dc: str = "keep") -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Set ``scheduler`` to ``steps`` steps and draw the start of a video whose frame 0 is ``first_latent``.

    Args:
        first_latent: ``(B, C, H, W)`` clean latent of the input image.
        num_frames: F (>= 2), frame 0 included.
        t0, p, fsp: the Frame Similarity Prior (``fsp=False``: pure noise, all ``steps`` steps run).
        noise_dc: the prior's noise as drawn (``keep``) or with each frame's spatial mean removed (``remove``;
            see :func:`frame_similarity_prior`; only with the prior on).
    Returns:
        ``(x_init (B, C, F, H, W), timesteps to run, start_index)``; frame 0 of ``x_init`` is ``first_latent``.
    """
    check_noise_dc(noise_dc)
    if not fsp and noise_dc != "keep":
        raise ValueError(f"noise_dc={noise_dc!r} acts on the Frame Similarity Prior's noise, and the prior is off "
                         f"(pure noise has no mean colour of frame 1 to start from)")
    scheduler.set_timesteps(steps, device=first_latent.device)
    order = getattr(scheduler, "order", 1)
    start = fsp_start_index(steps, t0) if fsp else 0
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * order)
    if fsp:
        _check_first(first_latent, num_frames)
        x = _prior_from(first_latent, num_frames, p, scheduler, start, generator, kernel_size, sigma, noise_dc)
    else:
        x, _ = pure_noise_init(first_latent, num_frames, scheduler, generator)
    return x, scheduler.timesteps[start * order:], start
