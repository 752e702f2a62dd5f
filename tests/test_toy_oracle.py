"""The sampling-time frame-1 oracle (i2v/toy/oracle.py): the bound on a base's samples that a perfect reader of
frame 1 gives. Its prediction must land on the ground truth (checked in ε and v space against the forward process),
touch only the elements its mode names, and, through the real sampler, reproduce the ground-truth clip."""
import pytest
import torch
from hydra import compose, initialize_config_dir

from i2v.cli.config import CONFIGS
from i2v.diffusion.schedule import NoiseSchedule
from i2v.toy.oracle import FrameOneOracle


def _net(x, t, cond, uncond):            # a stand-in network whose output is recognisable
    return torch.full_like(x, 7.0)


def _clip(seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 4, 5, 6, 6, generator=g)
    z[:, :, 2:] = z[:, :, :1]                 # frames 2..4 equal frame 0 ...
    z[:, :, 2:, :3, :3] += 1.0                # ... except a moved corner
    z[:, :, 1] = torch.randn(1, 4, 6, 6, generator=g)    # frame 1 changed everywhere
    return z, g


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_static_oracle_copies_frame_1_exactly_where_the_clip_did_not_change(prediction_type):
    sched = NoiseSchedule(prediction_type=prediction_type)
    z, g = _clip()
    oracle = FrameOneOracle(_net, sched, "static")
    oracle.set_clip(z)
    t = 700
    eps = torch.randn(z.shape, generator=g)
    a, s = (float(v) for v in sched.alpha_sigma(torch.tensor(t)))
    x = a * z + s * eps
    out = oracle(x, torch.tensor(t), {}, None)
    # where frame i equals frame 0, the oracle's output stands for the noise that makes x_t a noised frame 0
    eps_hat = sched.to_eps(out, x, torch.full((1,), t))
    static = torch.zeros_like(z, dtype=torch.bool)
    static[:, :, 2:] = True
    static[:, :, 2:, :3, :3] = False
    assert torch.allclose(eps_hat[static], ((x - a * z[:, :, :1]) / s).expand_as(z)[static], atol=1e-5)
    # frames 2..4 of this clip equal frame 0 there, so that is the true noise
    assert torch.allclose(eps_hat[static], eps[static], atol=1e-4)
    # everything else (frame 0, the changed frame 1, the moved corner) is the network's output, untouched
    assert (out[~static] == 7.0).all()


def test_ground_truth_oracle_replaces_every_sampled_frame_and_checks_its_inputs():
    sched = NoiseSchedule()
    z, g = _clip(1)
    oracle = FrameOneOracle(_net, sched, "ground_truth")
    with pytest.raises(RuntimeError, match="set_clip"):
        oracle(z, torch.tensor(500), {}, None)
    oracle.set_clip(z)
    eps = torch.randn(z.shape, generator=g)
    a, s = (float(v) for v in sched.alpha_sigma(torch.tensor(500)))
    out = oracle(a * z + s * eps, torch.tensor(500), {}, None)
    assert torch.allclose(out[:, :, 1:], eps[:, :, 1:], atol=1e-4)
    assert (out[:, :, 0] == 7.0).all()
    with pytest.raises(ValueError, match="not an integer training timestep"):
        oracle(z, torch.tensor(500.5), {}, None)
    with pytest.raises(ValueError, match="do not match"):
        oracle(z[:, :, :3], torch.tensor(500), {}, None)
    with pytest.raises(ValueError, match="oracle must be one of"):
        FrameOneOracle(_net, sched, "copy")


def test_oracle_steps_window_the_oracle_to_those_timesteps():
    """toy_eval.oracle_steps=[lo, hi]: the oracle's prediction at sampler timesteps lo..hi (inclusive), the network's
    own everywhere at the other steps; bad windows and windows on a non-oracle reference are refused."""
    from i2v.toy.oracle import sampling_reference

    sched = NoiseSchedule()
    z, g = _clip(2)
    oracle = FrameOneOracle(_net, sched, "ground_truth", steps=[300, 699])
    oracle.set_clip(z)
    eps = torch.randn(z.shape, generator=g)
    for t, inside in ((299, False), (300, True), (500, True), (699, True), (700, False), (951, False)):
        a, s = (float(v) for v in sched.alpha_sigma(torch.tensor(t)))
        out = oracle(a * z + s * eps, torch.tensor(t), {}, None)
        if inside:
            assert torch.allclose(out[:, :, 1:], eps[:, :, 1:], atol=1e-4), t
        else:
            assert (out == 7.0).all(), t
    for bad in ([700, 300], [5], ["a", 3], [True, 3]):
        with pytest.raises(ValueError, match="oracle_steps"):
            FrameOneOracle(_net, sched, "static", steps=bad)
    with pytest.raises(ValueError, match="oracle_steps windows the frame-1 oracle"):
        sampling_reference("first_frame_attention", _net, sched, None, steps=[0, 10])


def test_ground_truth_oracle_through_the_sampler_reproduces_the_held_out_clip(tmp_path):
    """Shipped toy files, 2 held-out clips, the real DDIM sampler and metrics: with the ground-truth oracle the
    sampled videos score as the ground-truth clips do; with the static oracle the background is frame 1's."""
    from i2v.pipeline.bundle import load_bundle_for_sampling
    from i2v.pipeline.sampling import I2VPipeline, SamplingSettings
    from i2v.toy.evaluate import held_out_scenes, scene_options, score_pipeline

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=["experiment=toy", "sampling.steps=4"])
    pipe = I2VPipeline(load_bundle_for_sampling(cfg, torch.device("cpu"), torch.float32),
                       SamplingSettings.from_config(cfg.sampling))
    own = pipe.denoiser
    frames, scenes = int(cfg.sampling.num_frames), scene_options(cfg.backbone)   # the shipped base's world
    gt = score_pipeline(pipe, 2, frames, 32, tmp_path / "gt", oracle="ground_truth", scenes=scenes)
    for key in ("identity", "bg_err", "obj_err", "step_px", "flicker"):
        assert gt["model"][key] == pytest.approx(gt["ground_truth"][key], abs=2e-3), key
    from i2v.utils.io import read_strip
    clip = held_out_scenes(1, frames, 32, scenes)[0]["video"]
    assert (read_strip(tmp_path / "gt" / "clip000.png", frames) - clip).abs().max() < 0.02
    assert pipe.denoiser is own                                     # the pipeline's own denoiser is put back
    plain = score_pipeline(pipe, 2, frames, 32, scenes=scenes)
    static = score_pipeline(pipe, 2, frames, 32, oracle="static", scenes=scenes)
    # the background is frame 1's (error < 0.01), well under the plain model's (0.017 at these 4 steps and 2 clips)
    assert static["model"]["bg_err"] < min(0.01, 0.3 * plain["model"]["bg_err"]), (static["model"], plain["model"])
    # toy_eval.oracle_steps: a window holding every step is the oracle, one holding none (4 leading steps: t = 751,
    # 501, 251, 1) the plain model; a window on the low-noise steps only (501, 251, 1) gives another video whose
    # background those steps still bring to frame 1's (they decide it: 0.0010 against 0.0011 with every step)
    assert score_pipeline(pipe, 2, frames, 32, oracle="static", oracle_steps=[0, 999], scenes=scenes) == static
    assert score_pipeline(pipe, 2, frames, 32, oracle="static", oracle_steps=[2, 250], scenes=scenes) == plain
    low = score_pipeline(pipe, 2, frames, 32, oracle="static", oracle_steps=[0, 600], scenes=scenes)["model"]
    assert low != static["model"] and low["bg_err"] < 0.3 * plain["model"]["bg_err"], (low, plain["model"])
    with pytest.raises(ValueError, match="set toy_eval.oracle"):
        score_pipeline(pipe, 2, frames, 32, oracle_steps=[0, 600], scenes=scenes)
    for mode in ("first_frame_attention", "noised_first_frame_kv"):
        zero_shot = score_pipeline(pipe, 2, frames, 32, oracle=mode, scenes=scenes)
        assert zero_shot["model"]["identity"] != plain["model"]["identity"] and pipe.denoiser is own, mode


def _reference(mode, cls, net, bundle, frames, g):
    """``toy_eval.oracle=<mode>`` around the stand-in ``net`` (checked to be ``cls``), set up for a random clip of
    ``frames`` 8² latents; returns it and the clip."""
    from i2v.toy.oracle import sampling_reference

    ref = sampling_reference(mode, net, bundle.schedule, bundle.unet)
    assert isinstance(ref, cls)
    z = torch.randn(1, 12, frames, 8, 8, generator=g)
    ref.set_clip(z)
    return ref, z


def test_first_frame_attention_feeds_frame_1_noised_and_every_self_attention_reads_it():
    """The zero-shot reference: the network sees frame 0 as the clean latent noised to the sampler's t with one noise
    for the whole run (frames 1.. untouched); during the call every spatial attn1 attends to frame 0's keys/values
    only (a frame's output ignores the other frames, follows frame 0, and is plain self-attention when all frames
    are equal); the base's own processors are back afterwards."""
    from i2v.models.attention import spatial_attention_layers
    from i2v.toy.build import random_toy_bundle
    from i2v.toy.oracle import FirstFrameAttention, sampling_reference

    bundle = random_toy_bundle(content=False, i2v=False)
    layers = list(spatial_attention_layers(bundle.unet, "attn1"))
    own = [a.processor for _, a in layers]
    attn = layers[0][1]
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 5, attn.to_q.in_features, generator=g)       # one video of 3 frames, 5 tokens each
    seen = []

    def net(x, t, cond, uncond):
        with torch.no_grad():
            base = attn(h, num_frames=3)
            moved2, moved0 = h.clone(), h.clone()
            moved2[2] += 1.0
            moved0[0] += 1.0
            same = h[:1].expand(3, -1, -1)
            seen.append({"x": x.clone(), "procs": [a.processor for _, a in layers],
                         "other": (attn(moved2, num_frames=3)[1] - base[1]).abs().max(),
                         "frame0": (attn(moved0, num_frames=3)[1] - base[1]).abs().max(),
                         "same": (attn(same, num_frames=3) - attn.default_forward(same)).abs().max()})
        return torch.full_like(x, 7.0)

    sched = bundle.schedule
    ref, z = _reference("first_frame_attention", FirstFrameAttention, net, bundle, 4, g)
    x = z.clone()
    x[:, :, 1:] = torch.randn(1, 12, 3, 8, 8, generator=g)
    noises = []
    for t in (900, 300):
        out = ref(x, torch.tensor(t), {}, None)
        assert (out == 7.0).all()
        got = seen[-1]
        assert torch.equal(got["x"][:, :, 1:], x[:, :, 1:])
        a, s = (float(v) for v in sched.alpha_sigma(torch.tensor(t)))
        noises.append((got["x"][:, :, :1] - a * z[:, :, :1]) / s)
        assert all(p is not o for p, o in zip(got["procs"], own))
        assert got["other"] < 1e-6 < got["frame0"] and got["same"] < 1e-5, got
    torch.testing.assert_close(noises[0], noises[1], atol=1e-4, rtol=0)    # one noise for the whole run
    assert noises[0].std() > 0.5
    assert all(a.processor is o for (_, a), o in zip(layers, own))
    assert torch.equal(x[:, :, :1], z[:, :, :1])                           # the caller's latent is not changed
    with pytest.raises(ValueError, match="must be one of"):
        sampling_reference("copy", net, sched, bundle.unet)


def test_noised_first_frame_kv_swaps_only_the_finest_self_attention_term_of_frames_2_on():
    """The two-pass reference: a one-frame pass on frame 0 noised to t, then the clip with frame 0 clean; in the
    second pass the finest attn1 gives frames 1.. attention to the first pass's keys/values (a frame's output ignores
    the other frames; equals plain self-attention when every frame equals the noised frame 0), frame 0 and coarser
    layers keep their own, and a layer's processor (an adapter branch) is kept on top; processors restored."""
    from i2v.models.attention import spatial_attention_layers
    from i2v.toy.build import random_toy_bundle
    from i2v.toy.oracle import NoisedFirstFrameKV

    bundle = random_toy_bundle(content=False, i2v=False)
    layers = list(spatial_attention_layers(bundle.unet, "attn1"))
    fine, coarse = layers[0][1], layers[-1][1]
    g = torch.Generator().manual_seed(2)
    h1f, h1c = (torch.randn(1, n, a.to_q.in_features, generator=g) for n, a in ((16, fine), (4, coarse)))
    hf = torch.randn(3, 16, fine.to_q.in_features, generator=g)
    hc = torch.randn(3, 4, coarse.to_q.in_features, generator=g)
    seen = []

    def net(x, t, cond, uncond):
        with torch.no_grad():
            if x.shape[2] == 1:                         # the one-frame pass stores the noised frame's keys/values
                seen.append({"x1": x.clone()})
                fine(h1f, num_frames=1), coarse(h1c, num_frames=1)
                return torch.zeros_like(x)
            moved = hf.clone()
            moved[2] += 1.0
            seen[-1].update(x=x.clone(), out=fine(hf, num_frames=3), moved=fine(moved, num_frames=3),
                            same=fine(h1f.expand(3, -1, -1), num_frames=3), coarse=coarse(hc, num_frames=3))
        return torch.full_like(x, 7.0)

    sched = bundle.schedule
    ref, z = _reference("noised_first_frame_kv", NoisedFirstFrameKV, net, bundle, 3, g)
    assert (ref(z, torch.tensor(600), {}, None) == 7.0).all()
    got = seen[-1]
    a, s = (float(v) for v in sched.alpha_sigma(torch.tensor(600)))
    assert torch.equal(got["x"], z) and ((got["x1"] - a * z[:, :, :1]) / s).std() > 0.5
    plain = fine.default_forward(hf)
    assert torch.allclose(got["out"][0], plain[0], atol=1e-6) and not torch.allclose(got["out"][1], plain[1])
    assert torch.allclose(got["moved"][1], got["out"][1], atol=1e-6)
    assert torch.allclose(got["same"], fine.default_forward(h1f.expand(3, -1, -1)), atol=1e-5)
    assert torch.allclose(got["coarse"], coarse.default_forward(hc), atol=1e-6)
    assert all(a.processor is None for _, a in layers)
    fine.processor = lambda attn, h, context=None, num_frames=None: attn.default_forward(h) + 1.0   # a "branch"
    try:
        ref(z, torch.tensor(600), {}, None)
    finally:
        fine.processor = None
    torch.testing.assert_close(seen[-1]["out"] - got["out"], torch.ones_like(got["out"]), atol=1e-5, rtol=0)
