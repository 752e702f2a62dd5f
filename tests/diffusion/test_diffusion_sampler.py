import math

import pytest
import torch

from i2v.diffusion.fsp import frame_similarity_prior
from i2v.diffusion.schedule import NoiseSchedule, make_scheduler

SCHEDULERS = ["ddim", "euler", "dpmpp", "ddpm"]
B, C, F_, H, W, L, D = 2, 4, 5, 8, 8, 3, 8


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(B, C, H, W, generator=g)
    cond, uncond = torch.randn(B, L, D, generator=g), torch.randn(B, L, D, generator=g)
    return first, cond, uncond


def _run(sample_video, unet, name="ddim", seed=42, **kw):
    first, cond, uncond = _inputs()
    sched = make_scheduler(name, NoiseSchedule())
    args = dict(scheduler=sched, schedule=NoiseSchedule(), steps=10, cfg=7.5, num_frames=F_, t0=1.0, p=0.5,
                generator=torch.Generator().manual_seed(seed), progress=False)
    args.update(kw)
    return sample_video(unet, first, cond, uncond, **args), first


@pytest.mark.parametrize("name", SCHEDULERS)
def test_frame0_exact_and_clean_input(name, fake_unet, sampler):
    seen = []
    out, first = _run(sampler, fake_unet, name, callback=lambda i, t, x: seen.append(x[:, :, 0].clone()))
    lat = out["latents"]
    assert lat.shape == (B, C, F_, H, W)
    assert torch.equal(lat[:, :, 0], first)  # bitwise
    assert len(seen) == out["steps"] and all(torch.equal(s, first) for s in seen)
    for call in fake_unet.calls:  # the UNet always sees the clean, unscaled frame 0 (both CFG halves)
        assert torch.equal(call["x"][:, :, 0], torch.cat([first, first]))
    assert torch.isfinite(lat).all() and not torch.allclose(lat[:, :, 1], lat[:, :, 2])


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("t0,expected", [(1.0, 10), (0.8, 8), (0.6, 6)])
def test_nfe(name, t0, expected, fake_unet, sampler):
    out, _ = _run(sampler, fake_unet, name, t0=t0)
    assert len(fake_unet.calls) == expected == out["nfe"] == out["unet_calls"] == out["steps"]
    full = make_scheduler(name, NoiseSchedule())
    full.set_timesteps(10)
    assert out["timesteps"].tolist() == full.timesteps[10 - expected:].tolist()  # the LAST `expected` timesteps
    for call, t in zip(fake_unet.calls, out["timesteps"]):
        assert call["t"].dtype == torch.long and call["t"].tolist() == [int(t)] * (2 * B)


def test_fsp_disabled_runs_all_steps(fake_unet, sampler):
    out, _ = _run(sampler, fake_unet, "euler", fsp=False, t0=0.6)
    assert out["nfe"] == 10 and out["start_index"] == 0


@pytest.mark.parametrize("name", SCHEDULERS)
def test_seeds(name, fake_unet, sampler):
    a, _ = _run(sampler, fake_unet, name, seed=1)
    b, _ = _run(sampler, fake_unet, name, seed=1)
    c, _ = _run(sampler, fake_unet, name, seed=2)
    assert torch.equal(a["latents"], b["latents"])
    assert (a["latents"][:, :, 1:] - c["latents"][:, :, 1:]).abs().max() > 1e-3


def _prior(name, t0, p, seed, steps=10):
    first, _, _ = _inputs()
    sched = make_scheduler(name, NoiseSchedule())
    sched.set_timesteps(steps)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(steps - round(steps * t0))
    x, _ = frame_similarity_prior(first, F_, t0, p, sched, torch.Generator().manual_seed(seed))
    return x


def _reference_ddim(unet, x, first, cond, uncond, cfg, steps, n):
    """Independent DDIM (eta 0, leading spacing, offset 1, final ᾱ = 1), two separate UNet passes."""
    ac = NoiseSchedule().alphas_cumprod.double()
    ratio = 1000 // steps
    ts = [k * ratio + 1 for k in reversed(range(steps))][steps - n:]
    x = x.double()
    for t in ts:
        inp = x.clone()
        inp[:, :, 0] = first
        tt = torch.full((B,), t, dtype=torch.long)
        e_c = unet(inp.float(), tt, cond).double()
        eps = e_c if uncond is None else unet(inp.float(), tt, uncond).double() + cfg * (
            e_c - unet(inp.float(), tt, uncond).double())
        a_t, a_prev = ac[t], (ac[t - ratio] if t - ratio >= 0 else torch.tensor(1.0, dtype=torch.float64))
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x[:, :, 1:] = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps)[:, :, 1:]
    return x.float()


def _reference_euler(unet, x, first, cond, steps, n):
    """Independent Euler (σ-space state, model input x/sqrt(σ²+1), frame 0 clean)."""
    ac = NoiseSchedule().alphas_cumprod.double()
    ratio = 1000 // steps
    ts = [k * ratio + 1 for k in reversed(range(steps))][steps - n:]
    sig = [((1 - ac[t]) / ac[t]).sqrt() for t in ts] + [torch.tensor(0.0, dtype=torch.float64)]
    x = x.double()
    for i, t in enumerate(ts):
        inp = x / (sig[i] ** 2 + 1).sqrt()
        inp[:, :, 0] = first
        eps = unet(inp.float(), torch.full((B,), t, dtype=torch.long), cond).double()
        x[:, :, 1:] = (x + (sig[i + 1] - sig[i]) * eps)[:, :, 1:]
    return x.float()


def _close(a, b):
    tol = 1e-4 * max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol


@pytest.mark.parametrize("t0,n", [(1.0, 10), (0.6, 6)])
def test_ddim_matches_reference_with_cfg(t0, n, fake_unet, sampler):
    first, cond, uncond = _inputs()
    x = _prior("ddim", t0, 0.5, 7)
    ref = _reference_ddim(fake_unet, x, first, cond, uncond, 7.5, 10, n)
    out, _ = _run(sampler, fake_unet, "ddim", seed=7, t0=t0)
    _close(out["latents"], ref)


def test_cfg1_is_conditional_only(fake_unet, sampler):
    first, cond, _ = _inputs()
    x = _prior("ddim", 0.8, 0.5, 3)
    ref = _reference_ddim(fake_unet, x, first, cond, None, 1.0, 10, 8)
    fake_unet.calls.clear()
    out1, _ = _run(sampler, fake_unet, "ddim", seed=3, t0=0.8, cfg=1.0)
    _close(out1["latents"], ref)
    assert out1["nfe"] == 8 and all(c["x"].shape[0] == B for c in fake_unet.calls)  # half the forward batch
    assert all(torch.equal(c["context"], cond) for c in fake_unet.calls)
    n1 = sum(c["x"].shape[0] for c in fake_unet.calls)
    fake_unet.calls.clear()
    first, cond, uncond = _inputs()
    out_none = sampler(fake_unet, first, cond, None, scheduler=make_scheduler("ddim", NoiseSchedule()),
                            steps=10, cfg=1.0, num_frames=F_, t0=0.8, p=0.5,
                            generator=torch.Generator().manual_seed(3), progress=False)
    assert torch.equal(out_none["latents"], out1["latents"])
    fake_unet.calls.clear()
    out_g, _ = _run(sampler, fake_unet, "ddim", seed=3, t0=0.8, cfg=7.5)
    assert sum(c["x"].shape[0] for c in fake_unet.calls) == 2 * n1
    assert (out_g["latents"] - out1["latents"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="unconditional"):
        sampler(fake_unet, first, cond, None, scheduler=make_scheduler("ddim", NoiseSchedule()), cfg=2.0,
                     steps=2, num_frames=F_, progress=False)


def test_euler_matches_reference(fake_unet, sampler):
    first, cond, _ = _inputs()
    x = _prior("euler", 0.8, 0.5, 9)
    ref = _reference_euler(fake_unet, x, first, cond, 10, 8)
    out, _ = _run(sampler, fake_unet, "euler", seed=9, t0=0.8, cfg=1.0)
    _close(out["latents"], ref)


def test_guidance_batches_uncond_first_and_added_cond(fake_unet, sampler):
    first, cond, uncond = _inputs()
    add_c = {"text_embeds": torch.ones(B, 6), "time_ids": torch.zeros(B, 6)}
    add_u = {"text_embeds": -torch.ones(B, 6), "time_ids": torch.zeros(B, 6)}
    _run(sampler, fake_unet, "ddim", steps=3, added_cond=add_c, added_uncond=add_u)
    call = fake_unet.calls[0]
    assert torch.equal(call["context"], torch.cat([uncond, cond]))
    assert call["added_cond"]["text_embeds"][:B].eq(-1).all() and call["added_cond"]["text_embeds"][B:].eq(1).all()


def test_controlnet_plumbing(fake_unet, sampler, fake_controlnet):
    control = torch.rand(B, F_, 3, H, W) * 2 - 1
    out, _ = _run(sampler, fake_unet, "ddim", steps=4, controlnet=fake_controlnet, control=control)
    assert len(fake_controlnet.calls) == len(fake_unet.calls) == 4
    cn = fake_controlnet.calls[0]
    assert torch.equal(cn["control"], torch.cat([control, control]))  # both CFG halves get the same control
    assert torch.equal(cn["x"], fake_unet.calls[0]["x"]) and torch.equal(cn["t"], fake_unet.calls[0]["t"])
    assert fake_unet.calls[0]["mid"] is not None and len(fake_unet.calls[0]["down"]) == 1
    plain, _ = _run(sampler, fake_unet, "ddim", steps=4)
    assert (plain["latents"] - out["latents"]).abs().max() > 1e-4  # the residuals change the result
    with pytest.raises(ValueError, match="together"):
        _run(sampler, fake_unet, "ddim", steps=2, controlnet=fake_controlnet)
    with pytest.raises(ValueError, match="control must be"):
        _run(sampler, fake_unet, "ddim", steps=2, controlnet=fake_controlnet, control=control[:, :3])


def test_schedule_mismatch_raises(fake_unet, sampler):
    with pytest.raises(ValueError, match="schedule"):
        _run(sampler, fake_unet, "ddim", steps=2, schedule=NoiseSchedule(beta_schedule="scaled_linear"))


@pytest.mark.parametrize("name", ["euler", "dpmpp"])  # σ-scaled input; multistep history on the F-1 slice
def test_real_toy_unet(name, sampler):
    from i2v.models.unet import build_video_unet

    torch.manual_seed(0)
    unet = build_video_unet("toy", motion="v2").eval()
    first = torch.randn(1, 4, 8, 8)
    cond, uncond = torch.randn(1, 6, 64), torch.zeros(1, 6, 64)
    calls = []
    hook = unet.register_forward_pre_hook(lambda m, a: calls.append(a[0][:, :, 0].clone()))
    out = sampler(unet, first, cond, uncond, scheduler=make_scheduler(name, NoiseSchedule()), steps=3,
                       cfg=7.5, num_frames=3, t0=0.7, p=0.5, generator=torch.Generator().manual_seed(0),
                       progress=False)
    hook.remove()
    assert out["nfe"] == len(calls) == 2  # round(3 * 0.7)
    assert torch.equal(out["latents"][:, :, 0], first)
    assert all(torch.equal(c, torch.cat([first, first])) for c in calls)
    assert torch.isfinite(out["latents"]).all()


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_a_step_count_that_leaves_the_schedule_is_refused(name, spacing):
    """sampling.steps=1000 on 1000 training timesteps (and DPM++ 999 with leading spacing) would put a timestep at
    1000, past the schedule's last (an IndexError deep in the prior), trailing spacing at 998 one at -1: refused in
    one line; every accepted count keeps its timesteps inside the schedule."""
    from i2v.diffusion.sampler import check_steps
    from i2v.diffusion.schedule import SamplerConfig

    refused = []
    for steps in [1, 2, 25, 50, 500, 998, 999, 1000, 1001]:
        sched = make_scheduler(name, NoiseSchedule(), SamplerConfig(timestep_spacing=spacing))
        try:
            check_steps(sched, steps, 1000)
        except ValueError as e:
            assert str(e).startswith(f"sampling.steps={steps} does not fit the 1000 training timesteps"), e
            refused.append(steps)
            continue
        sched.set_timesteps(steps)
        assert 0 <= int(sched.timesteps.min()) and int(sched.timesteps.max()) < 1000, (steps, sched.timesteps)
    assert {1000, 1001} <= set(refused) and set(refused) <= {998, 999, 1000, 1001}, refused
