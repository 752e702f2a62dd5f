"""The sampling pipeline object against a frozen copy of the sampling loop it replaced (``generate_one`` +
the 21-argument ``sample_video`` as of commit 9b82ce5), on the shipped toy world: the latents must be bit-identical.
The reference below is kept only here; it uses the primitives both share (codec, encoders, prior, scheduler)."""
import inspect

import pytest
import torch
from PIL import Image

from i2v.data.synthetic import SyntheticVideos
from i2v.diffusion.fsp import frame_similarity_prior, fsp_start_index, pure_noise_init
from i2v.diffusion.guidance import negative_prompt
from i2v.diffusion.schedule import SamplerConfig, make_scheduler
from i2v.models.content import image_tokens, uncond_image_tokens
from i2v.pipeline.sampling import I2VPipeline, SamplingSettings
from i2v.pipeline.bundle import load_bundle_for_sampling
from toy_sample import toy_sample_cfg


@torch.no_grad()
def _reference_latents(bundle, s, image, prompt, seed):
    """Today's (before the redesign) generate_one -> sample_video, frozen: same RNG order, same loop."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    img = image[None]
    first = bundle.codec.encode(img, generator=g)                                 # (1, C, h, w)

    def context(text, images):
        ctx = bundle.text([text])["context"]
        tok = (uncond_image_tokens(bundle.image_proj, bundle.image_encoder, 1) if images is None
               else image_tokens(bundle.image_proj, bundle.image_encoder(images)))
        return torch.cat([ctx, tok.to(ctx.dtype)], dim=1)

    cond, uncond = context(prompt, img), context(negative_prompt(s.get("negative_prompt")), None)
    cfg, steps, n = float(s.guidance_scale), int(s.steps), int(s.num_frames)
    scheduler = make_scheduler(str(s.scheduler), bundle.schedule,
                               SamplerConfig(timestep_spacing=str(s.get("timestep_spacing", "leading"))))
    guided = cfg != 1.0
    context = torch.cat([uncond, cond]) if guided else cond
    scheduler.set_timesteps(steps, device=first.device)
    order = getattr(scheduler, "order", 1)
    start = fsp_start_index(steps, float(s.t0)) if s.fsp.enabled else 0
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * order)
    if s.fsp.enabled:
        x, start = frame_similarity_prior(first, n, float(s.t0), float(s.p), scheduler, g,
                                          kernel_size=int(s.fsp.kernel_size), sigma=float(s.fsp.sigma),
                                          noise_dc=str(s.fsp.get("noise_dc", "keep")))
    else:
        x, start = pure_noise_init(first, n, scheduler, g)
    params = inspect.signature(scheduler.step).parameters
    kw = {k: v for k, v in (("generator", g), ("eta", 0.0)) if k in params}
    frame0 = first.unsqueeze(2)
    for t in scheduler.timesteps[start * order:]:
        model_in = scheduler.scale_model_input(x, t)
        model_in = torch.cat([frame0, model_in[:, :, 1:].to(frame0.dtype)], dim=2)
        model_in = torch.cat([model_in, model_in]) if guided else model_in
        tt = t.long() if t.dtype.is_floating_point and torch.equal(t, t.round()) else t
        eps = bundle.unet(model_in, tt.reshape(1).expand(model_in.shape[0]), context, added_cond=None,
                          down_residuals=None, mid_residual=None)
        if guided:
            e_u, e_c = eps.chunk(2)
            eps = e_u + cfg * (e_c - e_u)
        moving = scheduler.step(eps[:, :, 1:], t, x[:, :, 1:], **kw).prev_sample
        x = torch.cat([frame0, moving.to(frame0.dtype)], dim=2)
    return x


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    cfg = toy_sample_cfg(tmp_path_factory.mktemp("toy"))
    return cfg, load_bundle_for_sampling(cfg, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("over", [
    ["sampling.t0=0.8", "sampling.steps=4", "sampling.num_frames=4"],
    ["sampling.scheduler=euler", "sampling.guidance_scale=1.0", "sampling.negative_prompt=official"],
    ["sampling.scheduler=dpmpp", "sampling.fsp.enabled=false", "sampling.steps=3"],
    ["sampling.timestep_spacing=trailing", "sampling.steps=4", "sampling.num_frames=3"],
    ["sampling.fsp.noise_dc=remove", "sampling.steps=4", "sampling.p=0.0"],
])
def test_pipeline_latents_equal_the_old_loop_bitwise(toy, tmp_path, over):
    from omegaconf import OmegaConf

    cfg, bundle = toy
    s = OmegaConf.merge(cfg.sampling, OmegaConf.from_dotlist([o.split(".", 1)[1] for o in over]))
    clip = SyntheticVideos(1, num_frames=1, size=32, seed=5)[0]
    image, prompt = clip["video"][0], clip["text"]
    ref = _reference_latents(bundle, s, image, prompt, seed=3)
    pipe = I2VPipeline(bundle, SamplingSettings.from_config(s))
    steps = []
    out = pipe(image, prompt, seed=3, callback=lambda done, total: steps.append((done, total)))
    assert torch.equal(out.latents, ref)
    assert out.video.shape == (int(s.num_frames), 3, 32, 32) and out.nfe == out.steps == len(steps)
    assert steps[-1] == (out.steps, out.steps)
    again = pipe(image, prompt, seed=3)                     # built once, called again: the same video
    assert torch.equal(again.latents, ref)


def test_pipeline_takes_a_pil_image(toy):
    cfg, bundle = toy
    clip = SyntheticVideos(1, num_frames=1, size=32, seed=5)[0]
    arr = ((clip["video"][0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    pipe = I2VPipeline(bundle, SamplingSettings.from_config(cfg.sampling))
    a = pipe(Image.fromarray(arr), "a", seed=1)
    b = pipe(torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1, "a", seed=1)
    assert torch.equal(a.latents, b.latents)


@pytest.mark.parametrize("key,value,match", [("t0", 0.0, "t0 must lie"), ("p", 1.5, "p must lie"),
                                             ("num_frames", 1, "num_frames must be >= 2"),
                                             ("guidance_scale", float("nan"), "finite"), ("t0", None, "is null"),
                                             ("scheduler", "heun", "scheduler must be one of"),
                                             ("timestep_spacing", "uniform", "timestep_spacing must be one of"),
                                             ("fsp", {"kernel_size": 4}, "fsp.kernel_size must be a positive odd"),
                                             ("fsp", {"sigma": 0.0}, "fsp.sigma must be a number > 0"),
                                             ("fsp", {"noise_dc": "zero"}, "fsp.noise_dc must be one of"),
                                             ("fsp", {"enabled": False, "noise_dc": "remove"},
                                              "needs sampling.fsp.enabled=true")])
def test_settings_are_checked_once_when_built(toy, key, value, match):
    from omegaconf import OmegaConf

    cfg, _ = toy
    s = OmegaConf.merge(cfg.sampling, {key: value})
    with pytest.raises(ValueError, match=match):
        SamplingSettings.from_config(s)


@pytest.mark.parametrize("spacing,first", [("leading", 951), ("trailing", 999), ("linspace", 999)])
def test_timestep_spacing_sets_where_sampling_starts(toy, spacing, first):
    """sampling.timestep_spacing reaches the scheduler: 20 steps at t0 = 1 start at t = 951 with the official
    leading spacing (1000 - 1000/20 + 1) and at 999 with trailing or linspace; the default is leading."""
    from omegaconf import OmegaConf

    cfg, bundle = toy
    assert SamplingSettings.from_config(cfg.sampling).timestep_spacing == "leading"
    s = OmegaConf.merge(cfg.sampling, {"timestep_spacing": spacing, "steps": 20, "num_frames": 2})
    pipe = I2VPipeline(bundle, SamplingSettings.from_config(s))
    seen = []
    unet = bundle.unet
    hook = unet.register_forward_pre_hook(lambda mod, args: seen.append(int(args[1].reshape(-1)[0])))
    try:
        pipe(SyntheticVideos(1, num_frames=1, size=32, seed=5)[0]["video"][0], "a", seed=0)
    finally:
        hook.remove()
    assert seen[0] == first and len(seen) == 20
