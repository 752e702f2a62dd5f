"""scripts/make_toy_checkpoint.py: --quick runs write the same layout as the shipped i2v/assets/toy files, load
through the real loaders (load_ip_adapter, load_toy_state_dict, i2v.toy.build.ToyBuilder) with identical outputs, and are
bit-for-bit deterministic."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "i2v" / "assets" / "toy"


def _script():
    spec = importlib.util.spec_from_file_location("make_toy_checkpoint", ROOT / "scripts" / "make_toy_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    mod = _script()
    torch.set_num_threads(1)
    outs = [tmp_path_factory.mktemp(f"toy{i}") for i in range(2)]
    results = [mod.main(["--quick", "--no-progress", "--out", str(o)]) for o in outs]
    return mod, outs, results


def _layout(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def _shipped_world_args() -> list[str]:
    """The shipped base's world and UNet options, read from its MANIFEST.json (the regenerate command's flags)."""
    cfg = json.loads((SHIPPED / "MANIFEST.json").read_text())["config"]
    return ["--texture", str(cfg["texture"]), "--texture-cells", str(cfg["texture_cells"]),
            "--texture-tiles", str(cfg["texture_tiles"]), "--unet-overrides", json.dumps(cfg["unet_overrides"])]


def test_quick_files_have_the_shipped_layout(tmp_path):
    """A --quick run with the shipped command's world and UNet options writes the shipped files' key layout, and the
    base file's metadata rebuilds the shipped UNet (the deeper four-level layout)."""
    mod = _script()
    torch.set_num_threads(1)
    out = tmp_path / "quick"
    mod.main(["--quick", "--no-progress", "--out", str(out), *_shipped_world_args()])
    for name in mod.FILES:
        shipped, made = SHIPPED / name, out / name
        assert shipped.is_file(), f"shipped toy checkpoint missing: {shipped}"
        assert made.is_file()
        assert _layout(made) == _layout(shipped), name
    from i2v.toy.pretrain import read_base_file_metadata

    with safe_open(str(SHIPPED / "base_unet.safetensors"), "pt") as f:
        shipped_over = read_base_file_metadata(f.metadata())["build_overrides"]
    with safe_open(str(out / "base_unet.safetensors"), "pt") as f:
        made = read_base_file_metadata(f.metadata())
    assert made["build_overrides"] == shipped_over == {
        "in_channels": 12, "out_channels": 12, "block_out_channels": [32, 64, 64, 64],
        "attention_levels": [True, True, True, False], "transformer_layers_per_block": [1, 1, 1, 1],
        "num_attention_heads": [1, 2, 2, 2]}
    keys = _layout(out / "ip_adapter.safetensors")
    assert {k.split(".")[0] for k in keys} == {"image_proj", "ip_adapter"}
    assert not any("_ip" in k for k in _layout(out / "base_unet.safetensors"))
    manifest = json.loads((SHIPPED / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == set(mod.FILES)


def test_shipped_manifest_command_is_canonical_and_gives_its_config():
    """The shipped MANIFEST.json's command, parsed by the script, is the script's own canonical command for the
    shipped directory and yields the settings the MANIFEST records (so running it regenerates these files)."""
    import dataclasses
    import shlex

    from i2v.toy.pretrain import upgrade_settings

    mod = _script()
    manifest = json.loads((SHIPPED / "MANIFEST.json").read_text())
    argv = shlex.split(manifest["command"])
    assert argv[:4] == ["PYTHONPATH=.", "python", "scripts/make_toy_checkpoint.py", "--out"]
    assert argv[4] == "i2v/assets/toy"
    args = mod.parse_args(["--out", str(SHIPPED), *argv[5:]])
    cfg = mod.pretrain_config(args)
    assert mod.command_line(args, cfg) == manifest["command"]
    stored = upgrade_settings(manifest["config"])
    made = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}   # as JSON has it
    assert {k: made[k] for k in stored} == stored


def test_shipped_manifest_hashes_match_files():
    import hashlib

    manifest = json.loads((SHIPPED / "MANIFEST.json").read_text())
    for name, info in manifest["files"].items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == info["sha256"], name
    base = manifest["losses"]["base"]
    assert base["last"] < 0.7 * base["first"]  # pretraining actually learned something


def test_two_quick_runs_are_bitwise_identical(runs):
    mod, (a, b), results = runs
    for name in mod.FILES:
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k].view(torch.uint8), tb[k].view(torch.uint8)), f"{name}:{k}"
    assert results[0]["manifest"]["files"] == results[1]["manifest"]["files"]


def test_refuses_to_overwrite(runs):
    mod, (a, _), _ = runs
    with pytest.raises(FileExistsError, match="--overwrite"):
        mod.main(["--quick", "--no-progress", "--out", str(a)])


def test_interrupted_run_resumes_to_identical_files(runs, tmp_path, monkeypatch):
    """A run stopped mid-phase-B and started again with the same command writes the bytes of an uninterrupted
    run (weights, EMA, optimiser, lr schedule, RNG and data position all come back), then drops its state."""
    from i2v.toy import pretrain as toy_pretrain

    mod, (ref, _), _ = runs
    out = tmp_path / "resumed"
    args = ["--quick", "--no-progress", "--out", str(out), "--checkpoint-every", "1"]
    calls, real_next = [], toy_pretrain.ClipStream.next

    def dying_next(self):
        calls.append(1)
        if len(calls) == 5:                       # 3 base steps + 1 content step done, the 2nd content step dies
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(toy_pretrain.ClipStream, "next", dying_next)
    with pytest.raises(KeyboardInterrupt):
        mod.main(args)
    assert sorted(p.name for p in (out / ".pretrain_state").iterdir()) == ["base.pt", "content.pt"]
    assert not (out / "base_unet.safetensors").exists()
    monkeypatch.setattr(toy_pretrain.ClipStream, "next", real_next)
    res = mod.main(args)
    for name in mod.FILES:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert res["manifest"]["losses"] == json.loads((ref / "MANIFEST.json").read_text())["losses"]
    assert not (out / ".pretrain_state").exists()
    with pytest.raises(ValueError, match="other settings"):   # a state from other settings is not resumed
        toy_pretrain.PhaseState("base", toy_pretrain.PretrainConfig(state_dir=str(tmp_path / "s"))).save({})
        toy_pretrain.PhaseState("base", toy_pretrain.PretrainConfig(state_dir=str(tmp_path / "s"), lr=1.0)).load()


def test_peek_exports_the_base_of_a_run_in_progress(runs, tmp_path, monkeypatch):
    """--peek with a run's own arguments writes its base phase as of the last saved state: after phase A the bytes
    an uninterrupted run exports; mid-phase A the EMA of that step (loadable, and not yet the final weights)."""
    from i2v.toy import pretrain as toy_pretrain

    mod, (ref, _), _ = runs
    out = tmp_path / "run"
    args = ["--quick", "--no-progress", "--out", str(out), "--checkpoint-every", "1"]
    with pytest.raises(FileNotFoundError, match="no saved base-phase state"):
        mod.main(args + ["--peek", str(tmp_path / "none")])
    calls, real_next = [], toy_pretrain.ClipStream.next

    def dying_next(self, stop):
        calls.append(1)
        if len(calls) == stop:
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(toy_pretrain.ClipStream, "next", lambda self: dying_next(self, 3))  # 2 of 3 base steps
    with pytest.raises(KeyboardInterrupt):
        mod.main(args)
    mid = mod.main(args + ["--peek", str(tmp_path / "mid")])
    assert mid["step"] == 2
    assert json.loads((tmp_path / "mid" / "PEEK.json").read_text())["of_steps"] == 3
    peeked, final = (load_file(str(d / "base_unet.safetensors")) for d in (tmp_path / "mid", ref))
    assert peeked.keys() == final.keys() and any(not torch.equal(peeked[k], final[k]) for k in final)
    raw = torch.load(out / ".pretrain_state" / "base.pt", weights_only=True)["models"]["unet"]   # not the EMA
    assert any(not torch.equal(peeked[k], raw[k]) for k in peeked)
    with pytest.raises(FileExistsError, match="--overwrite"):
        mod.main(args + ["--peek", str(tmp_path / "mid")])

    calls.clear()
    monkeypatch.setattr(toy_pretrain.ClipStream, "next", lambda self: dying_next(self, 2))  # dies in phase B
    with pytest.raises(KeyboardInterrupt):
        mod.main(args)
    done = mod.main(args + ["--peek", str(tmp_path / "done")])
    assert done["step"] == 3
    for name in ("base_unet.safetensors", "text_encoder.safetensors"):
        assert (tmp_path / "done" / name).read_bytes() == (ref / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["PEEK.json", "base_unet.safetensors",
                                                                      "text_encoder.safetensors"]


def test_stored_settings_with_the_old_frame_key_still_match(tmp_path):
    """MANIFEST.json files (and states) saved before the rename say ``n_frames`` and have no ``radius_range``; read
    back, they name the fields of today's PretrainConfig with the value those runs used, and a saved state with the
    old key is resumed, not refused."""
    import dataclasses

    from i2v.toy import pretrain as toy_pretrain

    stored = json.loads((SHIPPED / "MANIFEST.json").read_text())["config"]
    stored = {("n_frames" if k == "num_frames" else k): v for k, v in stored.items()}   # as written before the rename
    stored.pop("radius_range", None)                                                    # ... and before it existed
    cfg = toy_pretrain.PretrainConfig(**toy_pretrain.upgrade_settings(stored))
    assert cfg.num_frames == stored["n_frames"] and tuple(cfg.radius_range) == (0.1, 0.18)
    assert set(toy_pretrain.upgrade_settings(stored)) <= {f.name for f in dataclasses.fields(cfg)}
    cfg = toy_pretrain.PretrainConfig(state_dir=str(tmp_path))
    old_key = {("n_frames" if k == "num_frames" else k): v for k, v in toy_pretrain.PhaseState("base", cfg).key.items()
               if k != "radius_range"}
    torch.save({"step": 3, "key": old_key}, tmp_path / "base.pt")
    assert toy_pretrain.PhaseState("base", cfg).load()["step"] == 3


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 12, 8, 16, 16, generator=g)
    img = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    return x, torch.tensor([10, 700]), img


def _reference_eps(models, x, t, img, prompts):
    ctx = models.condition(prompts, img, drop_image=torch.tensor([False, True]))["context"]   # the trained Bundle
    return models.unet(x, t, ctx)


def test_loaders_reproduce_the_trained_models(runs):
    from i2v.checkpoints.ip_adapter import load_ip_adapter
    from i2v.models import build_video_unet
    from i2v.models.content import image_tokens, uncond_image_tokens
    from i2v.models.toy import ToyImageEncoder, ToyTextEncoder, load_toy_state_dict

    _, (out, _), (res, _) = runs
    models = res["models"]
    from i2v.toy.pretrain import read_base_file_metadata

    with safe_open(str(out / "base_unet.safetensors"), "pt") as f:
        over = read_base_file_metadata(f.metadata())["build_overrides"]
    unet = build_video_unet("toy", motion="v2", **over)
    unet.load_state_dict(load_file(str(out / "base_unet.safetensors")), strict=True)
    proj = load_ip_adapter(unet, out / "ip_adapter.safetensors")
    text, enc = ToyTextEncoder(), ToyImageEncoder()
    load_toy_state_dict(text, out / "text_encoder.safetensors")
    load_toy_state_dict(enc, out / "image_encoder.safetensors")
    x, t, img = _inputs()
    prompts = ["a red circle moving left on a blue background", ""]
    with torch.no_grad():
        ref = _reference_eps(models, x, t, img, prompts)
        tok = torch.cat([image_tokens(proj, enc(img[:1])), uncond_image_tokens(proj, enc, 1)])
        got = unet(x, t, torch.cat([text(prompts)["context"], tok], dim=1))
    assert got.shape == (2, 12, 8, 16, 16)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_bundle_build_toy_loads_the_files(runs):
    from i2v.toy.build import ToyBuilder

    _, (out, _), (res, _) = runs
    backbone = OmegaConf.create({
        "name": "toy", "motion_version": "v2", "unet": str(out / "base_unet.safetensors"),
        "text_encoder": str(out / "text_encoder.safetensors"), "image_encoder": str(out / "image_encoder.safetensors"),
        "ip_adapter": str(out / "ip_adapter.safetensors"), "codec": "patch", "vae_scale": 4.0})
    parts = ToyBuilder(backbone).build_parts(OmegaConf.create({"content": True, "content_scale": 1.0}))
    x, t, img = _inputs(1)
    prompts = ["a green square moving up on a white background", "a blue triangle"]
    from i2v.models.content import image_tokens, uncond_image_tokens

    with torch.no_grad():
        ref = _reference_eps(res["models"], x, t, img, prompts)
        enc, proj = parts["image_encoder"], parts["image_proj"]
        tok = torch.cat([image_tokens(proj, enc(img[:1])), uncond_image_tokens(proj, enc, 1)])
        got = parts["unet"](x, t, torch.cat([parts["text"](prompts)["context"], tok], dim=1))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    video = torch.rand(1, 8, 3, 32, 32) * 2 - 1
    z = parts["codec"].encode(video[0])
    torch.testing.assert_close(parts["codec"].decode(z), video[0], rtol=0, atol=1e-5)


def test_radius_range_reaches_the_clips_the_manifest_and_the_configs(tmp_path):
    """--radius-range sets the pretraining clips' object sizes and is recorded in MANIFEST.json's config and its
    regenerate command (absent from the command at the default); ``backbone.scenes.radius_range`` sets the same
    for held-out clips (scene_options) and for the adapter's training data."""
    from hydra import compose, initialize_config_dir

    from i2v.cli.config import CONFIGS
    from i2v.data.synthetic import SyntheticVideos
    from i2v.toy.evaluate import scene_options
    from i2v.toy.pretrain import ClipStream, PretrainConfig

    mod = _script()
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
        other = compose(config_name="train", overrides=["experiment=toy", "backbone.scenes.radius_range=[0.13,0.2]"])
    assert list(shipped.data.dataset.radius_range) == [0.1, 0.18] == list(PretrainConfig.radius_range)
    assert list(other.data.dataset.radius_range) == [0.13, 0.2]
    assert scene_options(other.backbone)["radius_range"] == (0.13, 0.2)
    held_out = SyntheticVideos(4, num_frames=2, size=32, seed=10_000, **scene_options(other.backbone))
    assert all(0.13 * 32 - 1e-6 <= held_out.scene(i).objects[0].radius <= 0.2 * 32 + 1e-6 for i in range(4))


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

    mod = _script()
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

    mod = _script()
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


def test_clean_distractor_puts_another_clips_clean_frame_first_without_loss():
    """With probability p a video's frame 0 becomes the *clean* frame 0 of the next video of the batch (never its
    own: the base must not learn to copy it) and gets loss weight 0; p = 0 changes nothing."""
    from i2v.toy.pretrain import _with_clean_distractor

    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 5, 2, 2, generator=g)
    z_t = torch.randn(4, 3, 5, 2, 2, generator=g)
    same, w = _with_clean_distractor(z, z_t, 0.0, g)
    assert same is z_t and bool((w == 1).all())
    out, w = _with_clean_distractor(z, z_t, 1.0, torch.Generator().manual_seed(1))
    for i in range(4):
        assert torch.equal(out[i, :, 0], z[(i - 1) % 4, :, 0])
        assert torch.equal(out[i, :, 1:], z_t[i, :, 1:])
    assert w.shape == (4, 1, 5, 1, 1) and bool((w[:, :, 0] == 0).all()) and bool((w[:, :, 1:] == 1).all())
    out, w = _with_clean_distractor(z, z_t, 0.5, torch.Generator().manual_seed(2))
    picked = w[:, 0, 0, 0, 0] == 0
    for i in range(4):
        src = z[(i - 1) % 4, :, 0] if picked[i] else z_t[i, :, 0]
        assert torch.equal(out[i, :, 0], src)


def test_masked_mse_drops_the_weighted_out_frames():
    """The clean-distractor loss is the plain MSE over the frames that keep weight 1, nothing from the others."""
    from i2v.toy.pretrain import masked_mse

    g = torch.Generator().manual_seed(3)
    out, target = torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(2, 3, 4, 2, 2, generator=g)
    weight = torch.ones(2, 1, 4, 1, 1)
    assert masked_mse(out, target, weight) == pytest.approx(float(torch.nn.functional.mse_loss(out, target)), rel=1e-6)
    weight[0, :, 0] = 0
    kept = torch.cat([(out - target)[0, :, 1:].flatten(), (out - target)[1].flatten()])
    assert masked_mse(out, target, weight) == pytest.approx(float(kept.pow(2).mean()), rel=1e-6)
    target[0, :, 0] += 100.0                      # a dropped frame cannot move the loss
    assert masked_mse(out, target, weight) == pytest.approx(float(kept.pow(2).mean()), rel=1e-6)


def test_object_masks_mark_the_moving_object_in_every_frame():
    """ClipStream.object_masks: 1 at the latent positions the object covers in that frame (its centre's position
    always; nothing farther than its radius + one latent cell), 0 elsewhere, per clip and frame, on a textured world."""
    from i2v.toy.pretrain import ClipStream, PretrainConfig

    stream = ClipStream(PretrainConfig(batch_size=3, base_steps=2, ip_steps=1, texture=0.5, texture_cells=16))
    video, _ = stream.next()
    masks = stream.object_masks(16)
    assert masks.shape == (3, 1, 8, 16, 16) and set(masks.unique().tolist()) == {0.0, 1.0}
    # pixel centres sit at integer coordinates; latent cell j holds pixels 2j, 2j + 1, so its centre is at 2j + 0.5
    ys, xs = torch.meshgrid(torch.arange(16) * 2 + 0.5, torch.arange(16) * 2 + 0.5, indexing="ij")
    for b, i in enumerate(stream.last[0]):
        meta = stream.data[i]["meta"]
        radius = meta["radius"]
        for f in range(8):
            cx, cy = (float(v) for v in meta["centers"][f])
            m = masks[b, 0, f]
            assert m[int(round(cy)) // 2, int(round(cx)) // 2] == 1
            # a shape of radius r reaches at most r·sqrt(2) from its centre (a square's corner), a cell sqrt(2)
            far = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() > (radius + 1) * 2 ** 0.5 + 0.1
            assert m[far].sum() == 0
            assert 0 < m.sum() < 0.5 * m.numel()
        assert not torch.equal(masks[b, 0, 0], masks[b, 0, -1])   # it moves


def test_object_weight_raises_the_loss_share_of_the_object():
    """With object_weight w the base loss is sum((1 + w·mask)·err²) / sum(1 + w·mask): an error on the object
    counts (1 + w)× an equal error on the background."""
    from i2v.toy.pretrain import masked_mse

    out, target = torch.zeros(1, 2, 1, 2, 2), torch.zeros(1, 2, 1, 2, 2)
    mask = torch.zeros(1, 1, 1, 2, 2)
    mask[..., 0, 0] = 1
    target[..., 0, 0] = 1.0                              # error 1 on the object only
    assert masked_mse(out, target, 1 + 3 * mask) == pytest.approx(2 * 4 / (2 * (4 + 3)))
    target[..., 0, 0], target[..., 1, 1] = 0.0, 1.0      # the same error on the background instead
    assert masked_mse(out, target, 1 + 3 * mask) == pytest.approx(2 * 1 / (2 * (4 + 3)))
