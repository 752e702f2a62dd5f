"""DemoEngine samples through the same function as sample.py: for every Table 3 ablation, switched on the one loaded
model, the frames equal ``python sample.py adapter=<name>`` (a bundle built for that ablation) bit for bit."""
import pytest
import torch

from i2v.app.engine import ABLATIONS, DemoSettings
from i2v.models.adapters import i2v_adapter_layers
from i2v.sampling import sample
from toy_sample import toy_sample_cfg

PROMPT = "a red circle moving left on a blue background"


@pytest.mark.parametrize("adapter", list(ABLATIONS))
def test_frames_equal_sample_py(toy_engine, png, tmp_path, adapter):
    s = DemoSettings(t0=0.9, p=0.3, steps=4, guidance_scale=3.0, num_frames=4, adapter=adapter)
    seen = []
    frames = toy_engine.generate(toy_engine.load_image(png), PROMPT, s, seed=7,
                                 progress_cb=lambda done, total: seen.append((done, total)))
    cfg = toy_sample_cfg(tmp_path, f"image={png}", f"prompt={PROMPT}", "seed=7", "sampling.steps=4",
                         "sampling.t0=0.9", "sampling.p=0.3", "sampling.guidance_scale=3.0", "sampling.num_frames=4",
                         f"adapter={adapter}")
    ref = sample(cfg)[0]["tensor"]
    assert frames.shape == (4, 3, 32, 32)
    assert torch.equal(frames, (ref + 1) / 2)
    n = toy_engine.denoising_steps(s)
    assert seen == [(i, n) for i in range(n + 1)]       # progress: 0 before the first step, then every step


def test_ablation_switch_restores_the_model(toy_engine):
    """After a no_i2v/none request the adapters are back on (the next full request is not an ablation)."""
    bundle = toy_engine.bundle
    with toy_engine.ablation("none"):
        assert not bundle.content_enabled
        assert not any(a.processor.enabled for _, a in i2v_adapter_layers(bundle.unet))
    assert bundle.content_enabled
    assert all(a.processor.enabled for _, a in i2v_adapter_layers(bundle.unet))


def test_ablation_rows_without_the_i2v_adapter_drop_noised_kv(toy_engine):
    """A file trained with adapter.noised_kv samples that way in its own rows only: the no_i2v / none rows run as
    ``sample.py adapter=none`` does (no noised-frame pass), and the switch is back afterwards."""
    bundle = toy_engine.bundle
    bundle.noised_kv = True
    try:
        for name, (i2v_on, _) in ABLATIONS.items():
            with toy_engine.ablation(name):
                assert bundle.noised_kv is i2v_on, name
            assert bundle.noised_kv is True
    finally:
        bundle.noised_kv = False


def test_ablations_differ(toy_engine, png):
    """The switches do something: full and none give different videos from the same image, prompt and seed."""
    img = toy_engine.load_image(png)
    a, b = (toy_engine.generate(img, PROMPT, DemoSettings(steps=2, num_frames=3, guidance_scale=3.0, adapter=n), 1)
            for n in ("full", "none"))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1:], b[1:])


def test_bad_settings_raise_value_error(toy_engine, png):
    img = toy_engine.load_image(png)
    for bad in (DemoSettings(t0=0.0), DemoSettings(t0=1.5), DemoSettings(p=-0.1), DemoSettings(steps=0),
                DemoSettings(num_frames=1), DemoSettings(num_frames=500), DemoSettings(adapter="half")):
        with pytest.raises(ValueError):
            toy_engine.generate(img, PROMPT, bad, 0)
