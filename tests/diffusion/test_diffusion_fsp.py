import pytest
import torch
import torchvision.transforms.functional as TF

from i2v.diffusion.fsp import (degrade, frame_similarity_prior, fsp_num_steps, fsp_start_index, gaussian_blur,
                               pure_noise_init)
from i2v.diffusion.schedule import NoiseSchedule, make_scheduler


def test_blur_matches_torchvision(make_latent):
    x = make_latent(2, 4, 16, 12)
    ref = TF.gaussian_blur(x, kernel_size=[9, 9], sigma=[18.0, 18.0])  # reflect padding, like the official code
    torch.testing.assert_close(gaussian_blur(x, 9, 18.0), ref, atol=1e-6, rtol=0)
    assert (gaussian_blur(x) - x).abs().mean() > 0.1


def test_degrade_p0_identity_p1_blur(make_latent):
    x = make_latent(2, 4, 16, 16)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(degrade(x, 0.0, g), x)
    ref = TF.gaussian_blur(x, kernel_size=[9, 9], sigma=[18.0, 18.0])
    torch.testing.assert_close(degrade(x, 1.0, g), ref, atol=1e-6, rtol=0)
    # video latents: blurred frame by frame
    v = torch.stack([x, 2 * x, -x], dim=2)
    out = degrade(v, 1.0, g)
    for f, s in enumerate((1, 2, -1)):
        torch.testing.assert_close(out[:, :, f], s * ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        degrade(x, 1.5, g)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_blurred_fraction(p, make_latent):
    # N = 2*4*6*32*32 = 49152 elements; binomial std of the fraction <= 0.5/sqrt(N) = 0.0023; tolerance 0.012 (~5 std)
    x = make_latent(2, 4, 32, 32).unsqueeze(2).expand(-1, -1, 6, -1, -1)
    blur = gaussian_blur(x[:, :, 0])[:, :, None]
    out = degrade(x, p, torch.Generator().manual_seed(2))
    from_blur = (out == blur) & (out != x)
    from_orig = (out == x) & (out != blur)
    assert bool((from_blur | from_orig).all())  # every element is exactly one of the two
    assert abs(from_blur.float().mean().item() - p) < 0.012
    # masks are drawn per element of every frame (frames differ): agreement ≈ p² + (1-p)² < 1
    agree = (from_blur[:, :, 0] == from_blur[:, :, 1]).float().mean().item()
    assert abs(agree - (p * p + (1 - p) ** 2)) < 0.03


def test_num_steps_truncation():
    assert [fsp_num_steps(25, t) for t in (1.0, 0.9, 0.8, 0.7, 0.6)] == [25, 23, 20, 18, 15]  # 17.5 -> 18, 22.5 -> 23
    assert fsp_start_index(25, 0.8) == 5
    assert fsp_num_steps(25, 0.001) == 1
    for bad in (0.0, 1.2, -0.5):
        with pytest.raises(ValueError):
            fsp_num_steps(25, bad)


@pytest.mark.parametrize("name,t0,p", [("ddim", 0.8, 1.0), ("ddim", 1.0, 0.0), ("dpmpp", 0.6, 1.0),
                                       ("euler", 0.8, 1.0)])
def test_prior_moments(name, t0, p, make_latent):
    schedule = NoiseSchedule()
    sched = make_scheduler(name, schedule)
    sched.set_timesteps(25)
    start = 25 - {1.0: 25, 0.8: 20, 0.6: 15}[t0]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start)
    first = make_latent(2, 4, 32, 32, seed=3)
    x, s = frame_similarity_prior(first, 16, t0, p, sched, torch.Generator().manual_seed(4))
    assert s == start and x.shape == (2, 4, 16, 32, 32)
    assert torch.equal(x[:, :, 0], first)
    t = sched.timesteps[start]
    assert int(t) == {"ddim": 961 - 40 * start, "dpmpp": 951 - 38 * start, "euler": 961 - 40 * start}[name]
    if name == "euler":  # sigma-parametrised state: what the UNet sees is scale_model_input(x)
        x = sched.scale_model_input(x, t)
    alpha, sigma = schedule.alpha_sigma(torch.tensor([int(t)]))
    target = first if p == 0.0 else gaussian_blur(first)
    r = (x[:, :, 1:] - alpha * target[:, :, None]) / sigma
    # N = 2*4*15*32*32 = 122880 standard normals: mean error std 0.0029, std error std 0.002
    assert abs(r.mean().item()) < 0.015
    assert abs(r.std().item() - 1.0) < 0.01
    # residual is independent across frames (fresh noise per frame)
    assert abs((r[:, :, 0] * r[:, :, 1]).mean().item()) < 0.03


def test_prior_with_mixed_mask_is_centred_on_degraded(make_latent):
    # t0 = 0.1 with 10 steps -> a single step at t = 1 (σ ≈ 0.04): every element must sit within 5σ of α·x or
    # α·blur(x), and the share near the blur must be p.
    schedule, sched = NoiseSchedule(), make_scheduler("ddim", NoiseSchedule())
    sched.set_timesteps(10)
    first = make_latent(1, 4, 32, 32, seed=5)
    x, start = frame_similarity_prior(first, 9, 0.1, 0.3, sched, torch.Generator().manual_seed(6))
    assert start == 9 and int(sched.timesteps[start]) == 1
    alpha, sigma = schedule.alpha_sigma(torch.tensor([1]))
    d_orig = (x[:, :, 1:] - alpha * first[:, :, None]).abs()
    d_blur = (x[:, :, 1:] - alpha * gaussian_blur(first)[:, :, None]).abs()
    assert bool((torch.minimum(d_orig, d_blur) < 5 * sigma).all())
    clear = ((first - gaussian_blur(first)).abs() > 0.5)[:, :, None].expand_as(d_orig)  # 10σ apart
    near_blur = (d_blur < d_orig)[clear].float()
    assert near_blur.numel() > 3000
    assert abs(near_blur.mean().item() - 0.3) < 0.04  # binomial std < 0.009


def test_pure_noise_init_scale():
    sched = make_scheduler("euler", NoiseSchedule())
    sched.set_timesteps(25)
    first = torch.randn(2, 4, 16, 16)
    x, s = pure_noise_init(first, 8, sched, torch.Generator().manual_seed(0))
    assert s == 0 and torch.equal(x[:, :, 0], first)
    assert abs(x[:, :, 1:].std().item() / float(sched.init_noise_sigma) - 1) < 0.02
    assert float(sched.init_noise_sigma) > 5  # Euler really scales


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_prior_noise_dc_removed(p, make_latent):
    """noise_dc=remove: the same draw as keep, each frame's noise less its spatial mean (per channel), so every later
    frame's spatial mean is exactly α·mean(D(first)); keep leaves the draw as it was."""
    schedule = NoiseSchedule()
    first = make_latent(2, 4, 16, 16, seed=7) + 0.5        # a mean colour to carry
    out = {}
    for dc in ("keep", "remove"):
        sched = make_scheduler("ddim", schedule)
        sched.set_timesteps(20)
        out[dc], start = frame_similarity_prior(first, 6, 1.0, p, sched, torch.Generator().manual_seed(8),
                                                noise_dc=dc)
    t = sched.timesteps[start]
    alpha, sigma = schedule.alpha_sigma(torch.tensor([int(t)]))
    target = (first if p == 0.0 else gaussian_blur(first))[:, :, None]
    keep, remove = ((out[k][:, :, 1:] - alpha * target) / sigma for k in ("keep", "remove"))
    assert torch.equal(out["remove"][:, :, 0], first)
    assert keep.mean(dim=(-2, -1)).abs().max() > 0.05          # a drawn 16² noise has a visible mean per frame
    assert remove.mean(dim=(-2, -1)).abs().max() < 1e-5
    torch.testing.assert_close(remove, keep - keep.mean(dim=(-2, -1), keepdim=True), rtol=0, atol=1e-5)
    frame_means = out["remove"][:, :, 1:].mean(dim=(-2, -1))
    torch.testing.assert_close(frame_means, (alpha * target).mean(dim=(-2, -1)).expand_as(frame_means),
                               rtol=0, atol=1e-5)


def test_noise_dc_refused_when_unknown_or_without_the_prior(make_latent):
    from i2v.diffusion.fsp import initial_latents

    first = make_latent(1, 4, 8, 8)
    sched = make_scheduler("ddim", NoiseSchedule())
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="noise_dc must be one of"):
        frame_similarity_prior(first, 4, 1.0, 0.0, sched, noise_dc="zero")
    with pytest.raises(ValueError, match="the prior is off"):
        initial_latents(first, 4, sched, 10, fsp=False, noise_dc="remove")
