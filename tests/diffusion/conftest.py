"""Stand-ins for the video UNet and ControlNet with the real call signatures (tiny, deterministic, batch-independent)."""
import math

import pytest
import torch
from torch import nn


class FakeVideoUNet(nn.Module):
    """eps = f(x, t, context): a 3-D conv mixes frames (so frame 0 influences the others), per-sample context
    and timestep embeddings make guidance and timesteps matter. Records every call's inputs."""

    def __init__(self, channels=4, context_dim=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)
        self.ctx = nn.Linear(context_dim, channels)
        with torch.no_grad():
            for prm in self.parameters():
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.2)
        self.calls = []

    def temb(self, t, c):
        freqs = torch.arange(1, c + 1, dtype=torch.float32) / 300.0
        return torch.sin(t.float()[:, None] * freqs[None, :])

    def forward(self, x, t, context, added_cond=None, down_residuals=None, mid_residual=None):
        assert x.dim() == 5 and t.shape == (x.shape[0],) and context.shape[0] == x.shape[0]
        self.calls.append(dict(x=x.clone(), t=t.clone(), context=context.clone(), added_cond=added_cond,
                               down=down_residuals, mid=mid_residual))
        b, c = x.shape[:2]
        h = self.conv(x) + (self.ctx(context.mean(1)) + self.temb(t, c))[:, :, None, None, None]
        if added_cond is not None:
            h = h + added_cond["text_embeds"].mean(-1)[:, None, None, None, None]
        if mid_residual is not None:
            f = x.shape[2]
            h = h + mid_residual.reshape(b, f, -1).mean(-1)[:, None, :, None, None]
        return torch.tanh(h) + 0.1 * x


@pytest.fixture
def fake_unet():
    return FakeVideoUNet()


class FakeControlNet(nn.Module):
    """Residuals that depend on the control frames; records calls."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, context, control, added_cond=None):
        n, c, f, h, w = x.shape
        self.calls.append(dict(x=x.clone(), t=t.clone(), control=control.clone()))
        mid = control.mean(dim=(2, 3, 4)).reshape(n * f, 1, 1, 1).expand(n * f, 2, 1, 1)
        return (torch.zeros(n * f, 1, h, w),), mid


@pytest.fixture
def fake_controlnet():
    return FakeControlNet()


def sinusoid(b, c, h, w, seed=0):
    """Smooth random-phase latent (B, C, H, W) so that blurring changes it measurably."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    ph = torch.rand(b, c, 2, generator=g) * 2 * math.pi
    return torch.sin(xx / 2.0 + ph[..., 0, None, None]) * torch.cos(yy / 3.0 + ph[..., 1, None, None]) + \
        0.3 * torch.randn(b, c, h, w, generator=g)


@pytest.fixture
def make_latent():
    return sinusoid


def _sample(unet, first, cond, uncond, *, scheduler, schedule=None, steps=25, cfg=7.5, num_frames=16, t0=1.0, p=0.0,
            fsp=True, generator=None, added_cond=None, added_uncond=None, controlnet=None, control=None,
            callback=None, progress=False):
    """The sampler's parts put together as :class:`i2v.pipeline.sampling.I2VPipeline` does (scheduler check, guided
    denoiser, prior, loop), with the keyword names the sampler tests were written with; adds ``start_index``."""
    from i2v.diffusion.fsp import initial_latents
    from i2v.diffusion.sampler import Denoiser, check_scheduler, sample_video

    if schedule is not None:
        check_scheduler(scheduler, schedule)
    denoise = Denoiser(unet, cfg, controlnet, control)
    x, timesteps, start = initial_latents(first, num_frames, scheduler, steps, t0=t0, p=p, fsp=fsp, generator=generator)
    out = sample_video(denoise, x, {"context": cond, "added_cond": added_cond},
                       {"context": uncond, "added_cond": added_uncond}, timesteps, scheduler=scheduler,
                       generator=generator, callback=callback, progress=progress)
    return {**out, "start_index": start}


@pytest.fixture
def sampler():
    """``sampler(unet, first (B,C,H,W), cond (B,L,d), uncond, scheduler=..., steps=, cfg=, num_frames=, ...)``."""
    return _sample
