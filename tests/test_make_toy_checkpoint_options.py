"""make_toy_checkpoint.py's world and UNet options (object sizes, background cells and colour field, attention
initialisation, UNet overrides): each reaches the pretraining clips or the models, MANIFEST.json's config and its
regenerate command, and the configs that make the adapter's clips and the held-out clips from the same world."""
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from script_loader import load_script


def test_radius_range_reaches_the_clips_the_manifest_and_the_configs(tmp_path):
    """--radius-range sets the pretraining clips' object sizes and is recorded in MANIFEST.json's config and its
    regenerate command (absent from the command at the default); ``backbone.scenes.radius_range`` sets the same
    for held-out clips (scene_options) and for the adapter's training data."""
    from hydra import compose, initialize_config_dir

    from i2v.cli.config import CONFIGS
    from i2v.data.synthetic import SyntheticVideos
    from i2v.toy.evaluate import scene_options
    from i2v.toy.pretrain import ClipStream, PretrainConfig, upgrade_settings
    from i2v.utils.paths import ASSETS

    mod = load_script("make_toy_checkpoint")
    torch.set_num_threads(1)
    args = mod.parse_args(["--out", str(tmp_path), "--radius-range", "0.13", "0.2"])
    cfg = mod.pretrain_config(args)
    assert tuple(cfg.radius_range) == (0.13, 0.2) and "--radius-range 0.13 0.2 " in mod.command_line(args, cfg)
    default = mod.parse_args(["--out", str(tmp_path)])
    assert "--radius-range" not in mod.command_line(default, mod.pretrain_config(default))
    radii = [ClipStream(PretrainConfig(radius_range=(0.15, 0.16), base_steps=1, ip_steps=1)).data.scene(i)
             .objects[0].radius for i in range(20)]
    assert min(radii) >= 0.15 * 32 - 1e-6 and max(radii) <= 0.16 * 32 + 1e-6
    mod.main(["--quick", "--no-progress", "--out", str(tmp_path), "--radius-range", "0.13", "0.2"])
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest["config"]["radius_range"] == [0.13, 0.2] and "--radius-range 0.13 0.2 " in manifest["command"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        shipped = compose(config_name="train", overrides=["experiment=toy"])
        other = compose(config_name="train", overrides=["experiment=toy", "backbone.scenes.radius_range=[0.11,0.15]"])
    world = upgrade_settings(json.loads((ASSETS / "toy" / "MANIFEST.json").read_text())["config"])
    assert list(shipped.data.dataset.radius_range) == world["radius_range"]        # the shipped base's world
    assert scene_options(shipped.backbone)["radius_range"] == tuple(world["radius_range"])
    assert list(other.data.dataset.radius_range) == [0.11, 0.15]
    assert scene_options(other.backbone)["radius_range"] == (0.11, 0.15)
    held_out = SyntheticVideos(4, num_frames=2, size=32, seed=10_000, **scene_options(other.backbone))
    assert all(0.11 * 32 - 1e-6 <= held_out.scene(i).objects[0].radius <= 0.15 * 32 + 1e-6 for i in range(4))


def test_smooth_colour_field_reaches_the_clips_the_manifest_and_the_configs(tmp_path):
    """--texture-smooth/--texture-smooth-knots give the pretraining clips a smooth colour field and are recorded in
    the regenerate command (absent at the default, 0); ``backbone.scenes.texture_smooth`` sets the same for
    held-out clips (scene_options) and for the adapter's training data; a state saved before the setting existed
    resumes as a run without it."""
    from hydra import compose, initialize_config_dir

    from i2v.cli.config import CONFIGS
    from i2v.data.synthetic import SyntheticVideos
    from i2v.toy.evaluate import scene_options
    from i2v.toy.loop import upgrade_settings
    from i2v.toy.pretrain import ClipStream, PretrainConfig

    mod = load_script("make_toy_checkpoint")
    args = mod.parse_args(["--out", str(tmp_path), "--texture-smooth", "0.4", "--texture-smooth-knots", "4"])
    cfg = mod.pretrain_config(args)
    assert (cfg.texture_smooth, cfg.texture_smooth_knots) == (0.4, 4)
    assert "--texture-smooth 0.4 --texture-smooth-knots 4 " in mod.command_line(args, cfg)
    default = mod.parse_args(["--out", str(tmp_path)])
    assert "--texture-smooth" not in mod.command_line(default, mod.pretrain_config(default))
    scene = ClipStream(PretrainConfig(texture_smooth=0.4, texture_smooth_knots=4, base_steps=1, ip_steps=1)
                       ).data.scene(0)
    assert scene.smooth.shape == (3, 4, 4) and np.abs(scene.smooth).max() <= 0.4
    assert ClipStream(PretrainConfig(base_steps=1, ip_steps=1)).data.scene(0).smooth is None
    old = {k: v for k, v in vars(PretrainConfig()).items() if not k.startswith("texture_smooth")}
    up = upgrade_settings(old)
    assert (up["texture_smooth"], up["texture_smooth_knots"]) == (0.0, 3)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        shipped = compose(config_name="train", overrides=["experiment=toy"])
        other = compose(config_name="train", overrides=["experiment=toy", "backbone.scenes.texture_smooth=0.4",
                                                        "backbone.scenes.texture_smooth_knots=4"])
    assert shipped.data.dataset.texture_smooth == 0.0 and scene_options(shipped.backbone)["texture_smooth"] == 0.0
    assert (other.data.dataset.texture_smooth, other.data.dataset.texture_smooth_knots) == (0.4, 4)
    opts = scene_options(other.backbone)
    assert (opts["texture_smooth"], opts["texture_smooth_knots"]) == (0.4, 4)
    held_out = SyntheticVideos(2, num_frames=2, size=32, seed=10_000, **opts)
    assert held_out.scene(1).smooth.shape == (3, 4, 4)


def test_scene_and_attention_options_reach_the_run_and_its_manifest(tmp_path):
    """--texture/--texture-tiles make the pretraining clips textured wallpapers, --attn-init-scale scales the
    initial attn1 queries/keys, --unet-overrides changes the UNet (kept in the base file's metadata, from which the
    toy builder rebuilds it); all are in MANIFEST.json's config and in its regenerate command."""
    from i2v.models.attention import spatial_attention_layers
    from i2v.toy.pretrain import ClipStream, PretrainConfig, build_base

    mod = load_script("make_toy_checkpoint")
    torch.set_num_threads(1)
    over = {"transformer_layers_per_block": [2, 1]}
    mod.main(["--quick", "--no-progress", "--out", str(tmp_path), "--texture", "0.2", "--texture-tiles", "2",
              "--attn-init-scale", "3", "--unet-overrides", json.dumps(over), "--prediction-type", "v_prediction",
              "--codec-scale", "2", "--position-channels", "4", "--clean-distractor", "0.5",
              "--object-weight", "3"])
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest["config"]["clean_distractor"] == 0.5 and "--clean-distractor 0.5 " in manifest["command"]
    assert manifest["config"]["object_weight"] == 3.0 and "--object-weight 3 " in manifest["command"]
    assert (manifest["config"]["texture"], manifest["config"]["texture_tiles"]) == (0.2, 2)
    assert manifest["config"]["attn_init_scale"] == 3.0
    assert ("--texture 0.2 --texture-cells 8 --texture-tiles 2 --prediction-type v_prediction --codec-scale 2 "
            "--position-channels 4 "
            "--attn-init-scale 3 " in manifest["command"])
    assert manifest["codec"]["scale"] == manifest["config"]["codec_scale"] == 2.0
    assert manifest["schedule"]["prediction_type"] == manifest["config"]["prediction_type"] == "v_prediction"
    assert f"--unet-overrides '{json.dumps(over)}' " in manifest["command"]
    assert manifest["config"]["unet_overrides"] == over and manifest["unet"]["transformer_layers_per_block"] == [2, 1]
    from i2v.toy.pretrain import read_base_file_metadata

    with safe_open(str(tmp_path / "base_unet.safetensors"), "pt") as f:
        meta = read_base_file_metadata(f.metadata())
    assert meta == {"build_overrides": {"in_channels": 16, "out_channels": 16, **over},
                    "prediction_type": "v_prediction", "codec_scale": 2.0, "position_channels": 4}
    cfg = OmegaConf.create({"unet": str(tmp_path / "base_unet.safetensors"), "motion_version": "v2",
                            "text_encoder": str(tmp_path / "text_encoder.safetensors"), "codec": "patch",
                            "vae_scale": 2.0, "schedule": {"prediction_type": "v_prediction"}})
    from i2v.toy.build import ToyBuilder
    parts = ToyBuilder(cfg).build_parts(OmegaConf.create({"content": False}))
    unet = parts["unet"]
    assert parts["codec"].latent_channels == 16 and parts["codec"].position_channels == 4
    # a config that reads the base's output as the other kind is refused, naming the key to set
    cfg.schedule.prediction_type = "epsilon"
    with pytest.raises(ValueError, match="backbone.schedule.prediction_type=v_prediction"):
        ToyBuilder(cfg).build_parts(OmegaConf.create({"content": False}))
    cfg.schedule.prediction_type, cfg.vae_scale = "v_prediction", 4.0     # and one that scales latents otherwise
    with pytest.raises(ValueError, match="backbone.vae_scale=2"):
        ToyBuilder(cfg).build_parts(OmegaConf.create({"content": False}))
    level0 = [n for n, _ in spatial_attention_layers(unet, "attn1") if n.startswith("down_blocks.0")]
    assert len(level0) == 2, level0       # the toy preset has one transformer layer there
    scene = ClipStream(PretrainConfig(texture=0.2, texture_tiles=2, base_steps=1, ip_steps=1)).data.scene(0)
    assert scene.pattern is not None and scene.texture == 0.2
    plain, scaled = build_base(0), build_base(0, attn_init_scale=3.0)
    pairs = list(zip(spatial_attention_layers(plain.unet, "attn1"), spatial_attention_layers(scaled.unet, "attn1")))
    assert pairs
    for (_, a), (_, b) in pairs:
        torch.testing.assert_close(b.to_q.weight, 3.0 * a.to_q.weight)
        torch.testing.assert_close(b.to_k.weight, 3.0 * a.to_k.weight)
        torch.testing.assert_close(b.to_v.weight, a.to_v.weight)


def test_init_from_continues_a_base_and_is_recorded(tmp_path):
    """--init-from DIR starts phase A from DIR's base UNet and text encoder: with lr 0 the continued base is DIR's
    bit for bit (a fresh init of the same seed is not), also under a GroupNorm-mode override that keeps the shapes;
    MANIFEST.json records the source files' sha256 and command (and, for a chain of continuations, each source's
    own record) and the regenerate command carries the flag. A base of another
    shape, a folder without the files and --init-from equal to --out are refused with one clear message."""
    from safetensors.torch import load_file

    mod = load_script("make_toy_checkpoint")
    torch.set_num_threads(1)
    src, cont, fresh = tmp_path / "src", tmp_path / "cont", tmp_path / "fresh"
    mod.main(["--quick", "--no-progress", "--out", str(src), "--seed", "3"])
    frozen = ["--quick", "--no-progress", "--seed", "4", "--lr", "0", "--ip-lr", "0"]
    across = ["--unet-overrides", '{"motion_spatial_norm": "across_frames"}']
    mod.main([*frozen, *across, "--out", str(cont), "--init-from", str(src)])
    mod.main([*frozen, "--out", str(fresh)])
    a, b, c = (load_file(str(d / "base_unet.safetensors")) for d in (src, cont, fresh))
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
    with safe_open(str(cont / "base_unet.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["toy_base"])
    assert meta["build_overrides"]["motion_spatial_norm"] == "across_frames"
    manifest = json.loads((cont / "MANIFEST.json").read_text())
    source = json.loads((src / "MANIFEST.json").read_text())
    assert manifest["init_from"]["files"]["base_unet.safetensors"] == source["files"]["base_unet.safetensors"]["sha256"]
    assert manifest["init_from"]["command"] == source["command"] and f"--init-from {src} " in manifest["command"]
    assert "init_from" not in manifest["init_from"]          # src started fresh: the chain ends there
    assert manifest["init_from"]["base_loss"] == {k: source["losses"]["base"][k] for k in ("first", "last")}
    # a continuation of a continuation records the whole chain back to the fresh start
    mod.main([*frozen, *across, "--out", str(tmp_path / "cont2"), "--init-from", str(cont)])
    chain = json.loads((tmp_path / "cont2" / "MANIFEST.json").read_text())["init_from"]
    assert chain["command"] == manifest["command"] and chain["init_from"] == manifest["init_from"]
    with pytest.raises(ValueError, match="does not fit the base"):
        mod.main([*frozen, "--out", str(tmp_path / "wide"), "--init-from", str(src),
                  "--unet-overrides", '{"transformer_layers_per_block": [2, 1]}'])
    with pytest.raises(FileNotFoundError, match="no base_unet.safetensors"):
        mod.main([*frozen, "--out", str(tmp_path / "x"), "--init-from", str(tmp_path)])
    with pytest.raises(SystemExit):
        mod.parse_args(["--out", str(src), "--init-from", str(src)])
    # a saved state is resumed only from the same source files: another --init-from (or none) starts over
    from i2v.toy.loop import PhaseState

    def cfg(*extra):
        return mod.pretrain_config(mod.parse_args([*frozen, "--out", str(tmp_path / "r"), *extra]))

    PhaseState("base", cfg("--init-from", str(src))).save({"step": 1})
    assert PhaseState("base", cfg("--init-from", str(src))).load()["step"] == 1
    for other in (("--init-from", str(fresh)), ()):
        with pytest.raises(ValueError, match="other settings"):
            PhaseState("base", cfg(*other)).load()


def test_base_steps_0_keeps_the_loaded_base_and_trains_the_content_adapter(tmp_path):
    """--base-steps 0 --init-from DIR: the base UNet and text encoder written are DIR's tensor for tensor (at the
    default lr, so a base step taken by mistake would show), the Content-Adapter files are new, MANIFEST.json says
    no base loss and the regenerate command carries the flag; without --init-from it is refused."""
    from safetensors.torch import load_file

    mod = load_script("make_toy_checkpoint")
    torch.set_num_threads(1)
    src, out = tmp_path / "src", tmp_path / "ip"
    mod.main(["--quick", "--no-progress", "--out", str(src), "--seed", "3"])
    res = mod.main(["--quick", "--no-progress", "--out", str(out), "--seed", "4", "--base-steps", "0",
                    "--init-from", str(src)])
    for name in ("base_unet.safetensors", "text_encoder.safetensors"):
        a, b = load_file(str(src / name)), load_file(str(out / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = load_file(str(src / "ip_adapter.safetensors")), load_file(str(out / "ip_adapter.safetensors"))
    assert not all(torch.equal(a[k], b[k]) for k in a)
    manifest = res["manifest"]
    assert manifest["losses"]["base"]["first"] is None and manifest["losses"]["content"]["first"] is not None
    assert "--base-steps 0 " in manifest["command"] and manifest["config"]["base_steps"] == 0
    with pytest.raises(SystemExit):
        mod.parse_args(["--out", str(tmp_path / "x"), "--base-steps", "0"])
    with pytest.raises(SystemExit):
        mod.parse_args(["--out", str(tmp_path / "x"), "--base-steps", "-1", "--init-from", str(src)])
