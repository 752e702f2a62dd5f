"""Full-size architecture checks on the meta device: parameter/tensor counts and key sets equal diffusers'
(reference only) and the published numbers (reference/checkpoints.md §1.2, §2, §4.2)."""
from __future__ import annotations

import pytest
import torch

from i2v.models.config import MotionConfig, UNetConfig
from i2v.models.unet import build_video_unet
from i2v.checkpoints.diffusers_config import (motion_config_from_diffusers, motion_config_to_diffusers,
                                              unet_config_from_diffusers, unet_config_to_diffusers)

diffusers = pytest.importorskip("diffusers")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def n_transformer_blocks(model: torch.nn.Module) -> int:
    return sum(1 for name, _ in model.named_modules()
               if name.endswith(".attn1") and "motion_modules" not in name)


@pytest.mark.parametrize("name,params,tensors,blocks", [
    ("sd15", 859_520_964, 686, 16),
    ("sdxl", 2_567_463_684, 1680, 70),
])
def test_spatial_unet_matches_published_counts_and_diffusers(name, params, tensors, blocks):
    ours = build_video_unet(name, device="meta")
    assert next(ours.parameters()).is_meta
    cfg = getattr(UNetConfig, name)()
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**unet_config_to_diffusers(cfg))
    assert n_params(ours) == params == n_params(ref)
    assert len(ours.state_dict()) == tensors
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert n_transformer_blocks(ours) == blocks


@pytest.mark.parametrize("version,base,params,keys", [
    ("v1", "sd15", 417_137_600, 520),
    ("v2", "sd15", 453_209_280, 546),
    ("v3", "sd15", 417_137_600, 520),
    ("sdxl_beta", "sdxl", 236_779_200, 390),
])
def test_motion_modules_match_published_counts_and_motion_adapter(version, base, params, keys):
    ours = build_video_unet(base, version, device="meta")
    motion = {k: v for k, v in ours.state_dict().items() if "motion_modules" in k}
    with torch.device("meta"):
        adapter = diffusers.MotionAdapter(**motion_config_to_diffusers(ours.motion_config))
    assert sum(v.numel() for v in motion.values()) == params == n_params(adapter)
    # published files hold 2 pe tensors per module besides these (560 / 588 / 560 / 420 keys)
    assert len(motion) == keys
    ref_keys = {k for k in adapter.state_dict() if not k.endswith("pos_embed.pe")}
    assert len(ref_keys) == keys
    assert ours.motion_config.max_seq_length == (24 if version == "v1" else 32)


def test_motion_unet_keys_equal_unet_motion_model_without_pe():
    ours = build_video_unet("sd15", "v2", device="meta")
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**unet_config_to_diffusers(UNetConfig.sd15()))
        adapter = diffusers.MotionAdapter(**motion_config_to_diffusers(MotionConfig.for_version("v2")))
        ref = diffusers.UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    ref_sd = ref.state_dict()
    pe = {k for k in ref_sd if k.endswith("pos_embed.pe")}
    assert len(pe) == 21 and not any(k.endswith("pos_embed.pe") for k in ours.state_dict())
    assert set(ours.state_dict()) == set(ref_sd) - pe
    assert n_params(ours) == n_params(ref) == 859_520_964 + 453_209_280
    # the PE tables are (non-persistent) buffers of the right length
    pes = [b for k, b in ours.named_buffers() if k.endswith("pos_embed.pe")]
    assert len(pes) == 21 and all(b.shape[1] == 32 for b in pes)


def test_config_round_trip_and_presets():
    for cfg in (UNetConfig.sd15(), UNetConfig.sdxl(), UNetConfig.toy()):
        assert unet_config_from_diffusers(unet_config_to_diffusers(cfg)) == cfg
    for cfg, version in ((UNetConfig.sd15(), "v2"), (UNetConfig.sdxl(), "sdxl_beta"), (UNetConfig.toy(), "v1")):
        with torch.device("meta"):  # full diffusers config dicts (all defaults spelled out) parse back
            unet = diffusers.UNet2DConditionModel(**unet_config_to_diffusers(cfg))
            adapter = diffusers.MotionAdapter(**motion_config_to_diffusers(MotionConfig.for_version(version, cfg)))
            motion_unet = diffusers.UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
        assert unet_config_from_diffusers(dict(unet.config)) == cfg
        assert unet_config_from_diffusers(dict(motion_unet.config)) == cfg
        parsed = motion_config_from_diffusers(dict(adapter.config), version=version)
        assert parsed == MotionConfig.for_version(version, cfg).diffusers_norms()
    with pytest.raises(ValueError, match="class_embed_type"):
        unet_config_from_diffusers({**unet_config_to_diffusers(UNetConfig.sd15()), "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match="unknown key"):
        unet_config_from_diffusers({**unet_config_to_diffusers(UNetConfig.sd15()), "frobnicate": 1})
    v1, sdxl = MotionConfig.for_version("v1"), MotionConfig.for_version("sdxl_beta")
    assert (v1.max_seq_length, v1.use_mid_block, v1.spatial_norm, v1.motion_norm) == \
        (24, False, "across_frames", "per_frame")
    assert (sdxl.block_out_channels, sdxl.spatial_norm, sdxl.motion_norm) == \
        ((320, 640, 1280), "per_frame", "across_frames")
    d = MotionConfig.for_version("v2").diffusers_norms()
    assert (d.spatial_norm, d.motion_norm, d.use_mid_block) == ("per_frame", "across_frames", True)
    assert motion_config_from_diffusers(motion_config_to_diffusers(d), version="v2") == d


def test_build_overrides_dtype_and_errors():
    m = build_video_unet("toy", "v1", in_channels=3, cross_attention_dim=32, motion_max_seq_length=16,
                         dtype=torch.float16)
    assert m.conv_in.weight.shape[1] == 3 and m.conv_in.weight.dtype == torch.float16
    assert m.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.shape == (32, 32)
    assert m.motion_config.max_seq_length == 16 and m.motion_config.spatial_norm == "across_frames"
    pe = m.down_blocks[0].motion_modules[0].transformer_blocks[0].pos_embed.pe
    assert pe.shape == (1, 16, 32) and pe.dtype == torch.float16
    assert torch.get_default_dtype() == torch.float32
    with pytest.raises(TypeError, match="unknown override"):
        build_video_unet("toy", bogus=1)
    with pytest.raises(ValueError, match="without a motion version"):
        build_video_unet("toy", motion_max_seq_length=16)
    with pytest.raises(ValueError, match="unknown UNet preset"):
        build_video_unet("sd21")
