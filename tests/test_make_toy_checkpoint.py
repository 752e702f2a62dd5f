"""scripts/make_toy_checkpoint.py: --quick runs write the same layout as the shipped i2v/assets/toy files, load
through the real loaders (load_ip_adapter, load_toy_state_dict, i2v.toy.build.ToyBuilder) with identical outputs, and are
bit-for-bit deterministic."""
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "i2v" / "assets" / "toy"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    mod = load_script("make_toy_checkpoint")
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
    mod = load_script("make_toy_checkpoint")
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


def test_shipped_manifest_command_is_canonical_and_gives_its_config(monkeypatch):
    """The shipped MANIFEST.json's command, parsed by the script, is the script's own canonical command for the
    shipped directory and yields the settings the MANIFEST records (so running it regenerates these files). A
    continued base's source folder is not in a checkout: its files' sha256 are the ones the MANIFEST records."""
    import dataclasses
    import shlex

    from i2v.toy.pretrain import upgrade_settings

    mod = load_script("make_toy_checkpoint")
    manifest = json.loads((SHIPPED / "MANIFEST.json").read_text())
    if manifest.get("init_from"):
        monkeypatch.setattr(mod, "source_digests", lambda folder: dict(manifest["init_from"]["files"]))
    argv = shlex.split(manifest["command"])
    assert argv[:4] == ["PYTHONPATH=.", "python", "scripts/make_toy_checkpoint.py", "--out"]
    assert argv[4] == "i2v/assets/toy"
    args = mod.parse_args(["--out", str(SHIPPED), *argv[5:]])
    cfg = mod.pretrain_config(args)
    assert mod.command_line(args, cfg) == manifest["command"]
    stored = upgrade_settings(manifest["config"])
    made = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}   # as JSON has it
    assert {k: made[k] for k in stored} == stored


def test_shipped_manifest_chain_runs_back_to_a_fresh_start():
    """A shipped base continued from another (``--init-from``) records each source's command, folder and files down
    to a fresh start: every command's ``--init-from`` is the folder the next recorded command writes (``--out``),
    every one parses with the script, and the last one starts fresh. Running them in order regenerates the files.
    Its base losses: no continuation diverged, and the fresh start actually learned something. (The shipped run's
    own loss is read from its EMA log, first and last 500 steps; a source records only the mean of its first and
    last 20 raw losses, which is noisy: the shipped run's first 20 averaged 0.235 where its EMA over the first 500
    steps was 0.333.)"""
    import shlex

    mod = load_script("make_toy_checkpoint")
    manifest = json.loads((SHIPPED / "MANIFEST.json").read_text())
    command, source, loss = manifest["command"], manifest.get("init_from"), manifest["losses"]["base"]
    ema = [value for _, value in loss["ema_log"]]
    loss = {"first": sum(ema[:10]) / len(ema[:10]), "last": sum(ema[-10:]) / len(ema[-10:])}
    while source:
        assert loss["last"] <= 1.1 * loss["first"]
        argv = shlex.split(command)
        assert argv[argv.index("--init-from") + 1] == source["dir"]
        assert set(source["files"]) == set(mod.INIT_FILES)
        dir_, command, loss, source = source["dir"], source["command"], source["base_loss"], source.get("init_from")
        argv = shlex.split(command)
        assert argv[2] == "scripts/make_toy_checkpoint.py" and argv[argv.index("--out") + 1] == dir_
        mod.parse_args(argv[3:])
    assert "--init-from" not in shlex.split(command)
    assert loss["last"] < 0.7 * loss["first"]


def test_shipped_manifest_hashes_match_files():
    import hashlib

    manifest = json.loads((SHIPPED / "MANIFEST.json").read_text())
    for name, info in manifest["files"].items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == info["sha256"], name


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


def test_clip_workers_render_the_same_batches(runs, tmp_path):
    """--workers N renders the clips ahead in N processes: the same batches in the same order as the plain stream,
    so the files are bitwise those of a run without workers; a stream resumed at a saved position continues there."""
    from i2v.toy.batches import ClipStream
    from i2v.toy.pretrain import PretrainConfig

    mod, (ref, _), _ = runs
    out = tmp_path / "workers"
    res = mod.main(["--quick", "--no-progress", "--out", str(out), "--workers", "2"])
    for name in mod.FILES:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert "--workers 2" in res["manifest"]["command"] and "--device" not in res["manifest"]["command"]
    assert res["manifest"]["device"] == "cpu"

    cfg = PretrainConfig(batch_size=3, n_items=50, base_steps=4, ip_steps=0)
    plain, ahead = ClipStream(cfg), ClipStream(cfg, workers=2)
    plain.pos = ahead.pos = 7                      # as set from a saved state when a run resumes
    for _ in range(3):
        (va, ca), (vb, cb) = plain.next(), ahead.next()
        assert torch.equal(va, vb) and ca == cb and plain.last[0] == ahead.last[0]
    assert plain.pos == ahead.pos == 7 + 3 * 3
    plain.pos = ahead.pos = 30                     # moved after batches were rendered ahead: they are not used
    (va, _), (vb, _) = plain.next(), ahead.next()
    assert torch.equal(va, vb)


@pytest.mark.parametrize("argv, message", [(["--workers", "-1"], "--workers"),
                                           (["--device", "nonsense"], "--device nonsense"),
                                           (["--device", "cuda"], "no CUDA device")])
def test_device_and_workers_are_checked(argv, message, capsys):
    if argv[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("this check is for machines without CUDA")
    mod = load_script("make_toy_checkpoint")
    with pytest.raises(SystemExit):
        mod.parse_args(["--quick", *argv])
    assert message in capsys.readouterr().err
