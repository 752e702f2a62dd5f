"""``adapter.i2v_min_t`` (not the paper's method): the I2V-Adapter branch only at timesteps t >= it. Training draws t
there, the sampling pipeline switches the branch off at the steps below (and only there), the diagnostic's "adapter
on" follows the same rule, and an adapter file trained with it is sampled with it."""
import math

import pytest
import torch

from i2v.checkpoints.adapter_io import export_adapter, save_adapter
from i2v.models.adapters import I2VTimestepGate, check_i2v_min_t, i2v_adapter_layers
from i2v.toy.build import random_toy_bundle
from i2v.training.module import first_frame_clean_loss, sample_timesteps


def _bundle(seed=0, motion="v2"):
    bundle = random_toy_bundle(content=False, i2v=True, motion=motion, seed=seed)
    with torch.no_grad():     # a live branch (zero-initialised W'_O would hide it)
        for _, attn in i2v_adapter_layers(bundle.unet):
            attn.to_out_ff.weight.normal_(0, 0.05)
    return bundle.eval()


def _pipe(bundle, steps=4):
    from i2v.pipeline.sampling import FSPSettings, I2VPipeline, SamplingSettings

    s = SamplingSettings(steps=steps, guidance_scale=1.0, t0=1.0, p=0.0, num_frames=4, scheduler="ddim",
                         fsp=FSPSettings(enabled=True, kernel_size=3, sigma=1.0))
    return I2VPipeline(bundle, s)


def _spy(bundle):
    """Record (t, the branch's switch in every layer) at each network call."""
    seen, forward = [], bundle.unet.forward

    def spy(x, t, *a, **k):
        seen.append((int(torch.as_tensor(t).reshape(-1)[0]),
                     [attn.processor.enabled for _, attn in i2v_adapter_layers(bundle.unet)]))
        return forward(x, t, *a, **k)
    bundle.unet.forward = spy
    return seen


@pytest.mark.parametrize("value", [-1, 1000, 2.5, "500", True])
def test_bad_values_are_refused(value):
    with pytest.raises(ValueError, match="i2v_min_t"):
        check_i2v_min_t(value, 1000)


def test_sampling_switches_the_branch_off_below_min_t_only():
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bundle = _bundle()
    seen = _spy(bundle)
    paper = _pipe(bundle)(image, "a red square moves left", seed=1).video
    steps = [t for t, _ in seen]
    assert all(all(on) for _, on in seen) and min(steps) < 500 <= max(steps)
    seen.clear()
    bundle.i2v_min_t = 500
    gated = _pipe(bundle)(image, "a red square moves left", seed=1).video
    assert [t for t, _ in seen] == steps
    assert all(all(on) if t >= 500 else not any(on) for t, on in seen)
    assert all(attn.processor.enabled for _, attn in i2v_adapter_layers(bundle.unet))   # restored
    assert (gated - paper).abs().max() > 1e-4                  # the gate changes the video
    # an ablation's switched-off branch stays off at every step
    for _, attn in i2v_adapter_layers(bundle.unet):
        attn.processor.enabled = False
    seen.clear()
    _pipe(bundle)(image, "a red square moves left", seed=1)
    assert not any(any(on) for _, on in seen)
    assert not any(attn.processor.enabled for _, attn in i2v_adapter_layers(bundle.unet))


def test_gate_counts_calls_and_restores_the_switch_on_error():
    bundle = _bundle()

    class Boom:
        calls = 3

        def __call__(self, x, t, cond, uncond):
            assert not any(a.processor.enabled for _, a in i2v_adapter_layers(bundle.unet))
            raise RuntimeError("boom")
    gate = I2VTimestepGate(Boom(), bundle.unet, 500)
    assert gate.calls == 3
    with pytest.raises(RuntimeError, match="boom"):
        gate(torch.zeros(1), torch.tensor(499), {}, None)
    assert all(a.processor.enabled for _, a in i2v_adapter_layers(bundle.unet))


def test_training_draws_t_at_or_above_min_t():
    g = torch.Generator().manual_seed(0)
    uniform = sample_timesteps(20_000, 1000, 0.0, g, low=600)
    assert uniform.min() == 600 and uniform.max() == 999
    assert abs(uniform.float().mean().item() - 799.5) < 3
    skewed = sample_timesteps(20_000, 1000, 1.0, torch.Generator().manual_seed(1), low=600)
    assert skewed.min() >= 600 and skewed.max() <= 999
    assert abs((skewed.float().mean().item() - 600) / 400 - 2 / 3) < 0.01      # (1+s)/(2+s) of the span
    # low = 0 draws exactly what the paper's uniform draw does
    assert torch.equal(sample_timesteps(64, 1000, 0.0, torch.Generator().manual_seed(2)),
                       torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(2)))
    bundle = _bundle()
    z = torch.randn(8, 12, 4, 16, 16)
    ctx = bundle.text(["a red square moves left"] * 8)
    out = first_frame_clean_loss(bundle.unet, bundle.schedule, z, ctx, torch.Generator().manual_seed(3), min_t=900)
    assert out["t"].min() >= 900


def test_the_module_trains_at_the_bundles_min_t():
    from i2v.training.module import I2VAdapterModule

    bundle = random_toy_bundle(content=False, i2v=True, motion="v2", seed=0)
    bundle.i2v_min_t = 800
    mod = I2VAdapterModule(bundle, {"lr": 1e-3}, {})
    batch = {"video": torch.rand(4, 4, 3, 32, 32) * 2 - 1, "text": ["a red square moves left"] * 4}
    assert mod.compute_loss(batch, torch.Generator().manual_seed(0))["t"].min() >= 800


def test_a_file_trained_with_min_t_is_sampled_with_it_unless_the_config_says(tmp_path, caplog):
    src = _bundle()
    gated = save_adapter(tmp_path / "gated.safetensors", src.trainable, backbone="toy",
                         config={"adapter": {"name": "full", "i2v_min_t": 300}})
    paper = save_adapter(tmp_path / "paper.safetensors", src.trainable, backbone="toy",
                         config={"adapter": {"name": "full", "i2v_min_t": None}})
    fresh = random_toy_bundle(content=False, i2v=True, motion="v2", seed=1)
    fresh.load_i2v_adapter(str(paper))
    assert fresh.i2v_min_t == 0
    fresh.load_i2v_adapter(str(gated))
    assert fresh.i2v_min_t == 300
    given = random_toy_bundle(content=False, i2v=True, motion="v2", seed=1)
    given.i2v_min_t, given.i2v_min_t_given = 0, True              # adapter.i2v_min_t=0 on the command line
    given.load_i2v_adapter(str(gated))
    assert given.i2v_min_t == 0 and "trained with adapter.i2v_min_t=300" in caplog.text
    with pytest.raises(ValueError, match="i2v_min_t=300"):
        export_adapter(gated, "official", tmp_path / "i2v_module.pth")
    export_adapter(paper, "official", tmp_path / "i2v_module.pth")


def test_the_config_key_reaches_the_bundle():
    from hydra import compose, initialize_config_dir

    from i2v.cli.config import CONFIGS
    from i2v.pipeline.bundle import build_bundle

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=toy", "adapter.i2v_min_t=250"])
        default = compose(config_name="train", overrides=["experiment=toy"])
    assert build_bundle(cfg.backbone, cfg.adapter).i2v_min_t == 250
    bundle = build_bundle(default.backbone, default.adapter)
    assert bundle.i2v_min_t == 0 and not bundle.i2v_min_t_given


def _probe_clips():
    """Two random 4-frame clips and captions with direction words, for the diagnostic's probes."""
    videos = torch.rand(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    return videos, ["a red square moves left", "a blue circle moves up"]


def test_diagnostic_on_equals_off_below_min_t():
    from i2v.training.diagnose import eps_loss_by_timestep

    bundle, videos, texts = _bundle(), *_probe_clips()
    paper = eps_loss_by_timestep(bundle, videos, texts, timesteps=[300, 700])
    bundle.i2v_min_t = 500
    gated = eps_loss_by_timestep(bundle, videos, texts, timesteps=[300, 700])
    assert gated[300]["adapter_on"] == gated[300]["adapter_off"] == paper[300]["adapter_off"]
    assert not math.isclose(paper[300]["adapter_on"], paper[300]["adapter_off"], rel_tol=1e-4)
    assert gated[700] == paper[700]


def test_caption_probe_follows_the_gate_as_the_diagnostic_does():
    """The caption probe's own-caption loss is the diagnostic's "adapter on" with the gate as well: the branch off at
    t below adapter.i2v_min_t (it ran there before, scoring a branch that sampling never runs at those t)."""
    from i2v.training.caption_probe import caption_probe
    from i2v.training.diagnose import eps_loss_by_timestep

    bundle, videos, texts = _bundle(), *_probe_clips()
    paper = caption_probe(bundle, videos, texts, timesteps=[300, 700])
    bundle.i2v_min_t = 500
    gated = caption_probe(bundle, videos, texts, timesteps=[300, 700])
    diag = eps_loss_by_timestep(bundle, videos, texts, timesteps=[300, 700])
    for t in (300, 700):
        assert gated[t]["caption"] == pytest.approx(diag[t]["adapter_on"], rel=1e-6)
    assert gated[300]["caption"] == pytest.approx(diag[300]["adapter_off"], rel=1e-6)
    assert not math.isclose(paper[300]["caption"], gated[300]["caption"], rel_tol=1e-4)
    assert gated[700].keys() == paper[700].keys()
    assert all(gated[700][k] == paper[700][k] or math.isnan(gated[700][k]) and math.isnan(paper[700][k])
               for k in paper[700])                                          # no Content-Adapter: its columns NaN
    assert all(a.processor.enabled for _, a in i2v_adapter_layers(bundle.unet))     # switches restored


def test_a_start_below_min_t_is_told(caplog):
    """sampling.t0 low enough that every sampler step is below adapter.i2v_min_t: the branch never runs, and the
    pipeline says so (once per pipeline)."""
    from i2v.pipeline.sampling import FSPSettings, I2VPipeline, SamplingSettings

    bundle = _bundle()
    bundle.i2v_min_t = 700
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s = SamplingSettings(steps=4, guidance_scale=1.0, t0=0.6, p=1.0, num_frames=4, scheduler="ddim",
                         fsp=FSPSettings(enabled=True, kernel_size=3, sigma=1.0))
    pipe = I2VPipeline(bundle, s)
    seen = _spy(bundle)
    with caplog.at_level("WARNING"):
        pipe(image, "a red square moves left", seed=0)
        pipe(image, "a red square moves left", seed=1)
    assert caplog.text.count("runs at no step") == 1
    assert seen and not any(any(on) for _, on in seen)
    caplog.clear()
    with caplog.at_level("WARNING"):
        _pipe(bundle)(image, "a red square moves left", seed=0)                  # t0 = 1: no warning
    assert "runs at no step" not in caplog.text


def test_sample_py_records_the_gate_a_file_brought(tmp_path):
    """sample.py with the shipped adapter_min_t700 file: the gate comes from the file (the config says null) and the
    video's .json records it."""
    import json

    from toy_sample import toy_sample_cfg

    from i2v.cli.config import asset_path
    from i2v.data.synthetic import SyntheticVideos
    from i2v.sampling import sample
    from i2v.utils.io import save_frames

    save_frames(SyntheticVideos(1, num_frames=1, size=32, seed=3)[0]["video"], tmp_path / "in")
    base = [f"image={tmp_path / 'in' / '000.png'}", "prompt=a red square moves left"]
    sample(toy_sample_cfg(tmp_path / "gated", *base, f"ckpt={asset_path('toy/adapter_min_t700.safetensors')}"))
    sample(toy_sample_cfg(tmp_path / "paper", *base))
    gated = json.loads(next((tmp_path / "gated" / "out").glob("*.json")).read_text())
    paper = json.loads(next((tmp_path / "paper" / "out").glob("*.json")).read_text())
    assert (gated["i2v_min_t"], paper["i2v_min_t"]) == (700, 0)


def test_diagnostic_script_says_when_the_focus_t_is_gated(capsys):
    """With the shipped gated file (τ = 700) the attention-focus section at the default t = 500 says the branch does
    not run there; at t = 800 it does not."""
    from script_loader import load_script

    from i2v.cli.config import asset_path

    ckpt = asset_path("toy/adapter_min_t700.safetensors")
    script = load_script("diagnose_adapter")
    common = ["experiment=toy", f"ckpt={ckpt}", "n_clips=2", "batch_size=2", "timesteps=[950]", "probes=false",
              "captions=false"]
    script.main(common)
    assert "switches the branch off at this t in sampling" in capsys.readouterr().out
    script.main(common + ["focus_t=800"])
    out = capsys.readouterr().out
    assert "attention focus at t=800" in out and "switches the branch off" not in out
