"""The web demo's engine on a tiny SD1.5 backbone in the real file layouts (single file, AnimateDiff motion file,
VAE folder, tokenizer, IP-Adapter + CLIP vision folder, an I2V-Adapter checkpoint): ``python app.py backbone=sd15``
loads once and serves every Table 3 ablation, with the frames of ``sample.py`` for the same settings."""
import torch
from hydra import compose, initialize_config_dir
from test_real_backbone_e2e import _adapter, _files

from i2v.app import app_argv
from i2v.app.engine import DemoEngine, DemoSettings
from i2v.cli.config import CONFIGS


def test_app_engine_on_a_tiny_sd15_backbone(tmp_path):
    from i2v.sampling import sample

    backbone = _files(tmp_path, "sd15") + ["adapter=full"]
    _adapter(tmp_path, backbone)
    common = backbone + [f"ckpt={tmp_path / 'adapter.safetensors'}", "device=cpu", "sampling.height=32",
                         "sampling.width=32"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="app", overrides=app_argv(common + [f"out={tmp_path / 'app'}"]))
    engine = DemoEngine.load(cfg)
    assert engine.backbone == "sd15" and engine.ablations == ["full", "no_i2v", "no_content", "none"]
    img = engine.load_image(tmp_path / "cat.png")
    settings = DemoSettings(t0=0.8, p=0.5, steps=3, guidance_scale=5.0, num_frames=4)
    videos = {}
    for name in engine.ablations:
        videos[name] = engine.generate(img, "a cat", DemoSettings(**{**settings.as_dict(), "adapter": name}), 3)
        assert videos[name].shape == (4, 3, 32, 32) and torch.isfinite(videos[name]).all()
    assert not torch.equal(videos["full"][1:], videos["none"][1:])
    run = common + [f"image={tmp_path / 'cat.png'}", "prompt=a cat", "seed=3", f"out={tmp_path / 'out'}",
                    "sampling.steps=3", "sampling.num_frames=4", "sampling.t0=0.8", "sampling.p=0.5",
                    "sampling.guidance_scale=5.0"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        ref = sample(compose(config_name="sample", overrides=run))[0]["tensor"]
    assert torch.equal(videos["full"], (ref + 1) / 2)
