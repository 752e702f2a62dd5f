"""``adapter.noised_kv`` (i2v/models/noised_kv.py): frames 2..F of the finest attn1 layers read the keys/values of
frame 1 noised to t, in training (frame 1's own training noise) and in sampling (one draw per video), and an adapter
file trained that way is sampled that way."""
import math

import pytest
import torch

from i2v.checkpoints.adapter_io import export_adapter, save_adapter
from i2v.models.adapters import i2v_adapter_layers
from i2v.models.noised_kv import NoisedKVDenoiser, with_noised_first_frame_kv
from i2v.toy.build import random_toy_bundle
from i2v.training.module import first_frame_clean_loss


def _bundle(motion=None, seed=0):
    """Random toy bundle, I2V-Adapter attached; without a motion module frames meet only in the adapter branch."""
    bundle = random_toy_bundle(content=False, i2v=True, motion=motion, seed=seed)
    with torch.no_grad():     # a live branch (zero-initialised W'_O would hide it)
        for _, attn in i2v_adapter_layers(bundle.unet):
            attn.to_out_ff.weight.normal_(0, 0.05)
    return bundle


def _context(bundle, b):
    return bundle.text(["a red square moves left"] * b)["context"]


def test_frames_equal_to_the_noised_frame_read_their_own_keys_and_frame_0_is_untouched():
    """No motion module, adapter branch off: a frame's hidden states depend on that frame only, so frames that equal
    the noised frame 1 get exactly their own self-attention back (the swap changes nothing), frames that differ get
    another output, and frame 0 (clean) keeps its own in every case."""
    bundle = _bundle()
    for _, attn in i2v_adapter_layers(bundle.unet):
        attn.processor.enabled = False
    unet = bundle.unet
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 4, 8, 8, generator=g)
    x1 = torch.randn(2, 12, 1, 8, 8, generator=g)
    t = torch.full((2,), 700)
    ctx = _context(bundle, 2)

    def run(z):
        return unet(z, t, ctx)

    with torch.no_grad():
        plain = run(x)
        same = x.clone()
        same[:, :, 1:] = x1
        assert torch.allclose(with_noised_first_frame_kv(unet, run, same, x1), run(same), atol=1e-5)
        out = with_noised_first_frame_kv(unet, run, x, x1)
    torch.testing.assert_close(out[:, :, 0], plain[:, :, 0], atol=1e-5, rtol=0)
    assert (out[:, :, 1:] - plain[:, :, 1:]).abs().mean() > 1e-3
    assert all(type(a.processor).__name__ == "I2VAdapterProcessor" for _, a in i2v_adapter_layers(unet))
    with pytest.raises(ValueError, match="one frame"):
        with_noised_first_frame_kv(unet, run, x, x1.expand(-1, -1, 2, -1, -1))


@pytest.mark.parametrize("enabled", [True, False])
def test_the_adapter_fast_path_equals_swapping_the_self_attention_term_of_its_output(enabled):
    """With the I2V-Adapter's processor the swap is computed directly (frame 0's own attention, every other frame's
    attention to the noised frame 1, plus the branch); it must equal the generic route any other processor takes:
    the processor's output with its plain self-attention term replaced (fp32, 1e-5)."""
    bundle = _bundle(motion="v2")
    unet = bundle.unet
    layers = i2v_adapter_layers(unet)
    for _, attn in layers:
        attn.processor.enabled = enabled
    g = torch.Generator().manual_seed(6)
    x, x1 = torch.randn(2, 12, 3, 8, 8, generator=g), torch.randn(2, 12, 1, 8, 8, generator=g)
    t, ctx = torch.full((2,), 400), _context(bundle, 2)

    def run(z):
        return unet(z, t, ctx)

    with torch.no_grad():
        fast = with_noised_first_frame_kv(unet, run, x, x1)
        procs = [a.processor for _, a in layers]
        for (_, attn), proc in zip(layers, procs):   # the same processor behind a plain function: generic route
            attn.processor = lambda a, h, context=None, num_frames=None, p=proc: p(a, h, context, num_frames)
        try:
            generic = with_noised_first_frame_kv(unet, run, x, x1)
        finally:
            for (_, attn), proc in zip(layers, procs):
                attn.processor = proc
    scale = generic.abs().max()
    torch.testing.assert_close(fast, generic, atol=1e-5 * float(scale), rtol=0)
    assert (fast - run(x)).abs().max() > 1e-3 * scale


def test_training_loss_noises_frame_1_with_its_own_epsilon_and_t_and_trains_the_branch():
    """The loss's network call is the two-pass forward with frame 1 noised as √ᾱ_t·z_1 + √(1−ᾱ_t)·ε_1 (its own
    training noise, its video's t), differs from the paper's forward, and the adapter branch gets gradient."""
    bundle = _bundle(motion="v2")
    unet, sched = bundle.unet, bundle.schedule
    z = torch.randn(2, 12, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = {"context": _context(bundle, 2)}
    res = first_frame_clean_loss(unet, sched, z, cond, torch.Generator().manual_seed(5), noised_kv=True)
    paper = first_frame_clean_loss(unet, sched, z, cond, torch.Generator().manual_seed(5))
    torch.testing.assert_close(res["z_t"], paper["z_t"])            # same draws, same input
    assert (res["eps_hat"] - paper["eps_hat"])[:, :, 1:].abs().mean() > 1e-4
    abar = sched.alphas_cumprod[res["t"]].view(-1, 1, 1, 1, 1)
    x1 = abar.sqrt() * z[:, :, :1] + (1 - abar).sqrt() * res["eps"][:, :, :1]
    with torch.no_grad():
        want = with_noised_first_frame_kv(unet, lambda x: unet(x, res["t"], cond["context"]), res["z_t"], x1)
    torch.testing.assert_close(res["eps_hat"].detach(), want, atol=1e-5, rtol=0)
    res["loss"].backward()
    grads = [a.to_out_ff.weight.grad for _, a in i2v_adapter_layers(unet)]
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads)


def test_training_refuses_gradient_checkpointing_with_noised_kv():
    """Checkpointing recomputes blocks during backward, after the swapped processors are restored: refused."""
    from i2v.training.module import I2VAdapterModule

    bundle = _bundle()
    bundle.noised_kv = True
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        I2VAdapterModule(bundle, optim={"lr": 1e-3}, train={"gradient_checkpointing": True})
    I2VAdapterModule(bundle, optim={"lr": 1e-3}, train={"gradient_checkpointing": False})


def test_train_py_refuses_it_before_the_base_loads(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    import i2v.train as entry
    from i2v.cli.config import CONFIGS

    monkeypatch.setattr(entry, "build_bundle", lambda *a, **k: pytest.fail("the base was built"))
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=toy", "adapter.noised_kv=true",
                                          "train.gradient_checkpointing=true", f"out_dir={tmp_path}"])
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        entry.train(cfg)


def _pipe(bundle, steps=3, cfg=2.0):
    from i2v.pipeline.sampling import FSPSettings, I2VPipeline, SamplingSettings

    s = SamplingSettings(steps=steps, guidance_scale=cfg, t0=1.0, p=0.0, num_frames=4, scheduler="ddim",
                         fsp=FSPSettings(enabled=True, kernel_size=3, sigma=1.0))
    return I2VPipeline(bundle, s)


def test_pipeline_runs_a_one_frame_pass_each_step_and_draws_the_noise_from_the_seed():
    bundle = _bundle(motion="v2").eval()
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    plain = _pipe(bundle)(image, "a red square moves left", seed=1)
    bundle.noised_kv = True
    frames = []
    forward = bundle.unet.forward
    bundle.unet.forward = lambda x, *a, **k: (frames.append(x.shape[2]), forward(x, *a, **k))[1]
    try:
        out = _pipe(bundle)(image, "a red square moves left", seed=1)
    finally:
        del bundle.unet.forward
    again = _pipe(bundle)(image, "a red square moves left", seed=1)
    other = _pipe(bundle)(image, "a red square moves left", seed=2)
    assert frames == [1, 4] * 3 and out.nfe == 6
    torch.testing.assert_close(out.latents[:, :, 0], plain.latents[:, :, 0], atol=0, rtol=0)   # input frame kept
    assert (out.latents - plain.latents)[:, :, 1:].abs().mean() > 1e-4
    torch.testing.assert_close(out.latents, again.latents, atol=0, rtol=0)
    assert not torch.equal(out.latents, other.latents)


def test_the_one_frame_pass_gets_frame_1s_controlnet_image():
    from i2v.diffusion.sampler import Denoiser

    bundle = _bundle()
    seen = []

    def controlnet(x, t, context, control, added_cond=None):
        seen.append((x.shape[2], control.shape[1]))
        return None, None

    control = torch.zeros(1, 4, 3, 32, 32)
    den = Denoiser(bundle.unet, 2.0, controlnet, control)
    wrapped = NoisedKVDenoiser(den, bundle.schedule, bundle.unet, torch.randn(1, 12, 1, 8, 8))
    ctx = {"context": _context(bundle, 1)}
    with torch.no_grad():
        wrapped(torch.randn(1, 12, 4, 8, 8), torch.tensor(500), ctx, ctx)
    assert seen == [(1, 1), (4, 4)] and den.control is control and wrapped.calls == 2
    with pytest.raises(ValueError, match="integer training timestep"):
        wrapped(torch.randn(1, 12, 4, 8, 8), torch.tensor(500.5), ctx, ctx)


def test_a_file_trained_with_noised_kv_is_sampled_with_it(tmp_path):
    bundle = _bundle()
    with_kv = save_adapter(tmp_path / "kv.safetensors", bundle.trainable, backbone="toy",
                           config={"adapter": {"name": "full", "noised_kv": True}})
    without = save_adapter(tmp_path / "plain.safetensors", bundle.trainable, backbone="toy",
                           config={"adapter": {"name": "full", "noised_kv": False}})
    fresh = _bundle(seed=1)
    fresh.load_i2v_adapter(str(without))
    assert fresh.noised_kv is False
    fresh.load_i2v_adapter(str(with_kv))
    assert fresh.noised_kv is True
    with pytest.raises(ValueError, match="noised_kv"):
        export_adapter(with_kv, "official", tmp_path / "i2v_module.pth")
    export_adapter(without, "official", tmp_path / "i2v_module.pth")


def test_diagnostic_scores_a_noised_kv_adapter_through_its_own_forward():
    from i2v.training.diagnose import eps_loss_by_timestep

    bundle = _bundle(motion="v2")
    videos = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    texts = ["a red square moves left", "a blue circle moves up"]
    paper = eps_loss_by_timestep(bundle, videos, texts, timesteps=[600])
    bundle.noised_kv = True
    variant = eps_loss_by_timestep(bundle, videos, texts, timesteps=[600])
    assert variant[600]["adapter_off"] == paper[600]["adapter_off"]
    assert not math.isclose(variant[600]["adapter_on"], paper[600]["adapter_on"], rel_tol=1e-4)


def test_toy_references_refuse_a_noised_kv_bundle():
    from i2v.toy.evaluate import score_pipeline

    bundle = _bundle()
    bundle.noised_kv = True
    with pytest.raises(ValueError, match="does not combine"):
        score_pipeline(_pipe(bundle), n_videos=1, num_frames=4, size=32, oracle="static")
