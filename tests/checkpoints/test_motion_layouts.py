"""Motion modules judged by their tensors: community layouts (PE 24 + mid block, 64-frame modules) load as
``custom`` and match diffusers' UNetMotionModel on the same weights; the releases keep their names and totals."""
from __future__ import annotations

import pytest
import torch
from ckpt_layouts import (SD15_TINY, adapter_to_original, diffusers_motion_reference, make_adapter, randomize_,
                          save_single_file, tolerance, video_inputs)
from diffusers import MotionAdapter

from i2v.checkpoints.common import CheckpointError
from i2v.checkpoints.loader import check_release_counts, load_video_unet


def _adapter(pe_len: int, mid: bool) -> MotionAdapter:
    torch.manual_seed(5)
    return randomize_(MotionAdapter(block_out_channels=SD15_TINY["block_out_channels"], motion_layers_per_block=2,
                                    motion_num_attention_heads=8, motion_norm_num_groups=8,
                                    motion_max_seq_length=pe_len, use_motion_mid_block=mid))


def _parity(model, unet, adapter, frames: int) -> None:
    x, t, ctx, _ = video_inputs("sd15", frames=frames)
    with torch.no_grad():
        out = model(x, t, ctx)
    ref = diffusers_motion_reference(unet, adapter, x, t, ctx, None)
    err = (out - ref).abs().max().item()
    assert err <= tolerance(ref), f"{frames} frames: max abs err {err:.3g} > {tolerance(ref):.3g}"


def test_motion_adapter_pe24_with_mid_block(sd15_unet, sd15_folder, ckpt_dir, capsys):
    """Refused before ("pe length 24 but AnimateDiff v2 uses 32"); now a custom layout with the v2 family's norms."""
    adapter = _adapter(24, mid=True)
    adapter.save_pretrained(ckpt_dir / "ma_pe24_mid")
    model = load_video_unet(sd15_folder, ckpt_dir / "ma_pe24_mid", norm="diffusers")
    printed = capsys.readouterr().out
    assert printed.count("note:") == 1 and "pe length 24, with mid block, 4 levels is not an AnimateDiff" in printed
    cfg = model.motion_config
    assert (cfg.version, cfg.max_seq_length, cfg.use_mid_block) == ("custom", 24, True)
    assert any(k.startswith("mid_block.motion_modules.0.") for k in model.state_dict())
    _parity(model, sd15_unet, adapter, frames=3)


def test_original_file_pe64_runs_past_the_release_length(sd15_unet, sd15_folder, ckpt_dir, capsys):
    adapter = _adapter(64, mid=False)
    path = ckpt_dir / "mm_long64.ckpt"
    save_single_file(adapter_to_original(adapter), path)
    model = load_video_unet(sd15_folder, path, norm="diffusers")
    assert "pe length 64, no mid block" in capsys.readouterr().out
    assert (model.motion_config.version, model.motion_config.max_seq_length) == ("custom", 64)
    _parity(model, sd15_unet, adapter, frames=3)
    _parity(model, sd15_unet, adapter, frames=40)       # beyond every release's 24 / 32 frames
    with pytest.raises(ValueError, match="max_seq_length=64"):
        with torch.no_grad():
            model(*video_inputs("sd15", frames=65)[:3])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_releases_keep_their_name_and_print_no_note(version, sd15_folder, ckpt_dir, capsys):
    path = ckpt_dir / f"mm_release_{version}.safetensors"
    save_single_file(adapter_to_original(make_adapter(version)), path)
    model = load_video_unet(sd15_folder, path)
    assert model.motion_config.version == version and "note:" not in capsys.readouterr().out


def test_release_totals_asserted_only_for_release_layouts():
    """At SD1.5 size a v1 layout must hold the release totals (a missing tensor is an error); the same tensors
    labelled custom (e.g. a 64-frame module) are not held to them."""
    from i2v.models.unet import build_video_unet

    with torch.device("meta"):
        ours = build_video_unet("sd15", "v1", device="meta")
    sd = ours.state_dict()
    check_release_counts(ours.config, sd, "meta", ours.motion_config)
    short = {k: v for k, v in sd.items() if k != "up_blocks.3.motion_modules.2.proj_out.bias"}
    with pytest.raises(CheckpointError, match=r"v1 motion module holds 519 tensors / 417,137,280 parameters"):
        check_release_counts(ours.config, short, "meta", ours.motion_config)
    check_release_counts(ours.config, short, "meta", ours.motion_config.replace(version="custom", max_seq_length=64))
