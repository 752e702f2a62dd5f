"""Round trips: diffusers folders, LDM single files and AnimateDiff motion files -> VideoUNet == diffusers."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from ckpt_layouts import (SD15_HINTS, SDXL_HINTS, adapter_to_original, diffusers_motion_reference,
                      diffusers_per_frame, make_adapter, save_single_file, to_ldm_single_file,
                      tolerance, video_inputs)
from diffusers import UNet2DConditionModel

from i2v.checkpoints.common import detect_format, read_checkpoint
from i2v.checkpoints.ldm import infer_unet_config, layout_from_ldm, ldm_to_diffusers, split_ldm
from i2v.checkpoints.loader import load_video_unet
from i2v.checkpoints.diffusers_config import (motion_config_to_diffusers, unet_config_from_diffusers,
                                              unet_config_to_diffusers)

HINTS = {"sd15": SD15_HINTS, "sdxl": SDXL_HINTS}


def _assert_close(out, ref):
    err = (out - ref).abs().max().item()
    assert err <= tolerance(ref), f"max abs err {err:.3g} > {tolerance(ref):.3g}"


@pytest.mark.parametrize("kind,suffix", [("sd15", ".safetensors"), ("sdxl", ".ckpt")])
def test_ldm_key_map_reproduces_diffusers_state_dict(kind, suffix, request, ckpt_dir):
    """The loader's LDM -> diffusers map inverts the test-side §1.3/§2 map exactly, and the inferred config
    builds a diffusers UNet with the same outputs (checked without our UNet)."""
    unet = request.getfixturevalue(f"{kind}_unet")
    path = ckpt_dir / f"keymap_{kind}{suffix}"
    save_single_file(to_ldm_single_file(unet, sdxl=kind == "sdxl"), path)
    raw = read_checkpoint(path)
    assert detect_format(raw.tensors) == "ldm" and raw.skipped == ([] if suffix == ".safetensors" else ["global_step"])
    parts = split_ldm(raw.tensors, source=path)
    assert len(parts.vae) == 2 and len(parts.text) == (2 if kind == "sdxl" else 1)
    assert len(parts.ignored["schedule"]) == 4
    got = ldm_to_diffusers(parts.unet, layout_from_ldm(parts.unet))
    ref = unet.state_dict()
    assert sorted(got) == sorted(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    cfg = infer_unet_config(got, HINTS[kind])
    rebuilt = UNet2DConditionModel(**cfg).eval()
    rebuilt.load_state_dict(got, strict=True)
    x, t, ctx, added = video_inputs(kind, frames=2)
    _assert_close(diffusers_per_frame(rebuilt, x, t, ctx, added), diffusers_per_frame(unet, x, t, ctx, added))


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_diffusers_folder_matches_diffusers(kind, request, capsys):
    unet = request.getfixturevalue(f"{kind}_unet")
    folder = request.getfixturevalue(f"{kind}_folder")
    model = load_video_unet(folder)
    assert f"loaded {len(unet.state_dict())} UNet tensors ({kind}, diffusers folder)" in capsys.readouterr().out
    x, t, ctx, added = video_inputs(kind, frames=2)
    with torch.no_grad():
        out = model(x, t, ctx, added)
    _assert_close(out, diffusers_per_frame(unet, x, t, ctx, added))


@pytest.mark.parametrize("kind,suffix", [("sd15", ".ckpt"), ("sdxl", ".safetensors")])
def test_single_file_matches_folder(kind, suffix, request, ckpt_dir, capsys):
    unet = request.getfixturevalue(f"{kind}_unet")
    path = ckpt_dir / f"single_{kind}{suffix}"
    save_single_file(to_ldm_single_file(unet, sdxl=kind == "sdxl"), path)
    from_file = load_video_unet(path, unet_hints=HINTS[kind])
    assert f"({kind}, ldm single file)" in capsys.readouterr().out
    from_folder = load_video_unet(request.getfixturevalue(f"{kind}_folder"), verbose=False)
    assert from_file.config.replace(sample_size=8) == from_folder.config   # sample_size: informational only
    x, t, ctx, added = video_inputs(kind, frames=2)
    with torch.no_grad():
        _assert_close(from_file(x, t, ctx, added), from_folder(x, t, ctx, added))


def test_bare_ldm_unet_and_diffusers_single_file(sd15_unet, sd15_folder, ckpt_dir, capsys):
    ldm = to_ldm_single_file(sd15_unet, sdxl=False)
    bare = {k[len("model.diffusion_model."):]: v for k, v in ldm.items() if k.startswith("model.diffusion_model.")}
    save_single_file(bare, ckpt_dir / "bare_unet.safetensors")
    save_single_file(sd15_unet.state_dict(), ckpt_dir / "diffusion_pytorch_model.safetensors")
    ref = load_video_unet(sd15_folder, verbose=False).state_dict()
    for name, label in (("bare_unet", "bare ldm unet"), ("diffusion_pytorch_model", "diffusers single file")):
        got = load_video_unet(ckpt_dir / f"{name}.safetensors", unet_hints=SD15_HINTS).state_dict()
        assert f"(sd15, {label})" in capsys.readouterr().out
        assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_use_ema_takes_the_ema_copy(sd15_unet, ckpt_dir):
    sd = to_ldm_single_file(sd15_unet, sdxl=False, ema=True)
    path = ckpt_dir / "ema.safetensors"
    save_single_file(sd, path)
    plain = load_video_unet(path, unet_hints=SD15_HINTS, verbose=False).state_dict()
    ema = load_video_unet(path, unet_hints=SD15_HINTS, use_ema=True, verbose=False).state_dict()
    assert torch.equal(plain["conv_in.weight"], sd15_unet.state_dict()["conv_in.weight"])
    assert torch.equal(ema["conv_in.weight"], sd["model_ema.diffusion_modelinput_blocks00weight"])
    key = "down_blocks.1.resnets.0.conv1.weight"           # input_blocks.4.0.in_layers.2
    assert torch.equal(ema[key], sd["model_ema.diffusion_modelinput_blocks40in_layers2weight"])


def test_pipeline_variant_and_sharded_folders(sd15_unet, ckpt_dir):
    sharded = ckpt_dir / "sharded"
    sd15_unet.save_pretrained(sharded, max_shard_size="200KB")
    index = json.loads((sharded / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    half = ckpt_dir / "pipe_fp16"
    copy.deepcopy(sd15_unet).half().save_pretrained(half / "unet", variant="fp16")
    ref = sd15_unet.state_dict()
    got = load_video_unet(sharded, verbose=False).state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    got16 = load_video_unet(half, variant="fp16", verbose=False).state_dict()
    assert all(torch.equal(got16[k], ref[k].half().float()) for k in ref)
    assert not torch.equal(got16["conv_in.weight"], ref["conv_in.weight"])  # really the fp16 file


# version, file suffix, expected pe length (reference/checkpoints.md §4.2)
MOTION_CASES = [("v1", ".ckpt", 24), ("v2", ".safetensors", 32), ("v3", ".ckpt", 32), ("sdxl_beta", ".safetensors", 32)]


@pytest.mark.parametrize("version,suffix,pe_len", MOTION_CASES)
def test_animatediff_original_matches_diffusers_motion_model(version, suffix, pe_len, request, ckpt_dir, capsys):
    kind = "sdxl" if version == "sdxl_beta" else "sd15"
    unet, adapter = request.getfixturevalue(f"{kind}_unet"), make_adapter(version)
    path = ckpt_dir / f"mm_{version}{suffix}"
    save_single_file(adapter_to_original(adapter), path, animatediff_config={"note": "non-tensor entry"})
    model = load_video_unet(request.getfixturevalue(f"{kind}_folder"), path, norm="diffusers")
    assert f"({version}, animatediff;" in capsys.readouterr().out
    assert model.motion_config.version == version and model.motion_config.max_seq_length == pe_len
    assert (model.motion_config.spatial_norm, model.motion_config.motion_norm) == ("per_frame", "across_frames")
    x, t, ctx, added = video_inputs(kind, frames=3)
    with torch.no_grad():
        out = model(x, t, ctx, added)
    _assert_close(out, diffusers_motion_reference(unet, adapter, x, t, ctx, added))


def test_motion_adapter_folder_matches_original_file(sd15_folder, ckpt_dir):
    adapter = make_adapter("v2")
    folder = ckpt_dir / "motion_adapter_v2"
    adapter.save_pretrained(folder)
    original = ckpt_dir / "mm_v2_for_folder.ckpt"
    save_single_file(adapter_to_original(adapter), original)
    a = load_video_unet(sd15_folder, folder, verbose=False)
    b = load_video_unet(sd15_folder, original, verbose=False)
    assert a.motion_config == b.motion_config and a.motion_config.version == "v2"
    x, t, ctx, _ = video_inputs("sd15", frames=3)
    with torch.no_grad():
        _assert_close(a(x, t, ctx), b(x, t, ctx))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_motion_file(dtype, sd15_folder, ckpt_dir):
    original = {k: v.to(dtype) for k, v in adapter_to_original(make_adapter("v3")).items()}
    save_single_file(original, ckpt_dir / f"mm_v3_{str(dtype)[6:]}.safetensors")
    model = load_video_unet(sd15_folder, ckpt_dir / f"mm_v3_{str(dtype)[6:]}.safetensors", verbose=False)
    assert model.motion_config.version == "v3"
    key = "down_blocks.2.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_v.weight"
    got = model.state_dict()["down_blocks.2.motion_modules.1.transformer_blocks.0.attn2.to_v.weight"]
    assert got.dtype == torch.float32 and torch.equal(got, original[key].float())


@pytest.mark.parametrize("version,norms", [("v1", ("across_frames", "per_frame")),
                                           ("v3", ("per_frame", "per_frame"))])
def test_release_norm_defaults(version, norms, sd15_unet, sd15_folder, ckpt_dir):
    """norm=None follows §4.3 (v1: UNet GroupNorm across frames; SD1.5 motion norm per frame), and that
    changes the output versus the diffusers combination."""
    adapter = make_adapter(version)
    path = ckpt_dir / f"mm_norm_{version}.safetensors"
    save_single_file(adapter_to_original(adapter), path)
    model = load_video_unet(sd15_folder, path, verbose=False)
    assert (model.motion_config.spatial_norm, model.motion_config.motion_norm) == norms
    x, t, ctx, _ = video_inputs("sd15", frames=3)
    with torch.no_grad():
        err = (model(x, t, ctx) - diffusers_motion_reference(sd15_unet, adapter, x, t, ctx, None)).abs().max()
    assert err > 1e-3


@pytest.mark.parametrize("kind,version", [("sd15", "v2"), ("sdxl", "sdxl_beta")])
def test_release_size_layouts_on_meta(kind, version):
    """Real SD1.5/SDXL sizes without weights (meta tensors): the test-side LDM file maps back, the config is
    inferred with the release head rules and no hints, the derived totals of reference/checkpoints.md hold,
    and a VideoUNet at that size has exactly the diffusers UNetMotionModel keys and shapes minus pe."""
    from diffusers import MotionAdapter

    from i2v.checkpoints.common import CheckpointError
    from i2v.checkpoints.loader import check_release_counts
    from i2v.models.config import MotionConfig, UNetConfig
    from i2v.models.unet import build_video_unet

    preset = UNetConfig.sd15() if kind == "sd15" else UNetConfig.sdxl()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config_to_diffusers(preset))
        adapter = MotionAdapter(**motion_config_to_diffusers(MotionConfig.for_version(version, preset)))
        ours = build_video_unet(kind, version, device="meta")
    ldm = to_ldm_single_file(unet, sdxl=kind == "sdxl")
    parts = split_ldm(ldm)
    mapped = ldm_to_diffusers(parts.unet, layout_from_ldm(parts.unet))
    ref = unet.state_dict()
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ref.items()}
    assert unet_config_from_diffusers(infer_unet_config(mapped)) == preset      # 8 heads / head dim 64
    assert len(ref) == {"sd15": 686, "sdxl": 1680}[kind]
    assert sum(v.numel() for v in ref.values()) == {"sd15": 859_520_964, "sdxl": 2_567_463_684}[kind]
    original = adapter_to_original(adapter)
    assert len(original) == {"v2": 588, "sdxl_beta": 420}[version]
    motion = {k: v for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")}
    expected = {k: v.shape for k, v in {**ref, **motion}.items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    check_release_counts(ours.config, ours.state_dict(), "meta", ours.motion_config)
    with pytest.raises(CheckpointError, match="UNet holds"):
        check_release_counts(ours.config, dict(list(ours.state_dict().items())[1:]), "meta", ours.motion_config)
