"""Bad input: one clear error each, naming the format and the offending keys or file."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from ckpt_layouts import SD15_HINTS, adapter_to_original, make_adapter, save_single_file, to_ldm_single_file
from safetensors.torch import load_file, save_file

from i2v.checkpoints.common import CheckpointError, KeyMapError, UnknownFormatError, read_checkpoint
from i2v.checkpoints.loader import load_video_unet

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


class NotATensor:
    """A picklable object that torch.load(weights_only=True) must refuse."""

    def __init__(self):
        self.payload = "x"


@pytest.fixture
def edited_folder(sd15_folder, tmp_path):
    """Copy of the SD1.5 pipeline folder and a function that rewrites its weight file."""
    root = tmp_path / "pipe"
    shutil.copytree(sd15_folder, root)

    def edit(fn):
        sd = load_file(str(root / WEIGHTS))
        fn(sd)
        save_file(sd, str(root / WEIGHTS))
        return root
    return edit


def test_missing_key(edited_folder):
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    root = edited_folder(lambda sd: sd.pop(key))
    with pytest.raises(KeyMapError, match="1 missing key") as e:
        load_video_unet(root)
    assert key in str(e.value) and "diffusers folder" in str(e.value) and e.value.missing == [key]


def test_extra_key(edited_folder):
    key = "down_blocks.0.resnets.0.extra_conv.weight"
    root = edited_folder(lambda sd: sd.__setitem__(key, torch.zeros(3)))
    with pytest.raises(KeyMapError, match="1 unexpected key") as e:
        load_video_unet(root)
    assert key in str(e.value) and e.value.unexpected == [key]


def test_wrong_shape(edited_folder):
    key = "up_blocks.1.attentions.2.proj_out.weight"          # (64, 64, 1, 1)
    root = edited_folder(lambda sd: sd.__setitem__(key, torch.zeros(64, 32, 1, 1)))
    with pytest.raises(KeyMapError, match="wrong shape") as e:
        load_video_unet(root)
    assert f"{key}: file (64, 32, 1, 1) vs model (64, 64, 1, 1)" in str(e.value)


def test_unknown_format(tmp_path):
    path = tmp_path / "random.safetensors"
    save_file({"foo.bar": torch.zeros(2), "baz": torch.ones(3)}, str(path))
    with pytest.raises(UnknownFormatError, match="no known format") as e:
        load_video_unet(path)
    assert "random.safetensors" in str(e.value) and "baz" in str(e.value)


def test_pickle_with_a_non_tensor_object_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"conv_in.weight": torch.zeros(1)}, "hook": NotATensor()}, str(path))
    with pytest.raises(CheckpointError, match="refused to unpickle") as e:
        read_checkpoint(path)
    assert "weights_only=True" in str(e.value) and "evil.ckpt" in str(e.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="UNet checkpoint not found"):
        load_video_unet(tmp_path / "nope.safetensors")


def test_ldm_unknown_top_level_key(sd15_unet, tmp_path):
    sd = to_ldm_single_file(sd15_unet, sdxl=False)
    sd["mystery.weight"] = torch.zeros(2)
    path = tmp_path / "bad_top.safetensors"
    save_single_file(sd, path)
    with pytest.raises(KeyMapError, match=r"format: ldm\] unknown top-level keys") as e:
        load_video_unet(path, unet_hints=SD15_HINTS)
    assert e.value.unexpected == ["mystery.weight"]


def test_ldm_key_outside_the_block_layout(sd15_unet, tmp_path):
    sd = to_ldm_single_file(sd15_unet, sdxl=False)
    sd["model.diffusion_model.input_blocks.1.0.bogus.weight"] = torch.zeros(2)
    path = tmp_path / "bad_block.safetensors"
    save_single_file(sd, path)
    with pytest.raises(KeyMapError, match="outside the SD UNet block layout") as e:
        load_video_unet(path, unet_hints=SD15_HINTS)
    assert e.value.unexpected == ["input_blocks.1.0.bogus.weight"]


def test_use_ema_without_ema_copy(sd15_unet, tmp_path):
    path = tmp_path / "no_ema.safetensors"
    save_single_file(to_ldm_single_file(sd15_unet, sdxl=False), path)
    with pytest.raises(KeyMapError, match="model_ema copy does not match"):
        load_video_unet(path, unet_hints=SD15_HINTS, use_ema=True)


def test_tiny_sdxl_needs_hints(sdxl_unet, tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_single_file(to_ldm_single_file(sdxl_unet, sdxl=True), path)
    with pytest.raises(CheckpointError, match="addition_time_embed_dim"):
        load_video_unet(path, unet_hints={"norm_num_groups": 8})
    with pytest.raises(CheckpointError, match="not multiples of head dim 24; pass the hint num_heads"):
        load_video_unet(path, unet_hints={"norm_num_groups": 8, "addition_time_embed_dim": 8, "head_dim": 24})
    with pytest.raises(CheckpointError, match=r"unknown config hints \['heads'\]"):
        load_video_unet(path, unet_hints={"heads": 4})


@pytest.fixture(scope="module")
def v2_original():
    return adapter_to_original(make_adapter("v2"))


def test_motion_missing_key(sd15_folder, v2_original, tmp_path):
    sd = dict(v2_original)
    sd.pop("up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.ff_norm.bias")
    save_single_file(sd, tmp_path / "mm.safetensors")
    with pytest.raises(KeyMapError, match=r"v2 animatediff\] checkpoint does not match") as e:
        load_video_unet(sd15_folder, tmp_path / "mm.safetensors")
    assert e.value.missing == ["up_blocks.3.motion_modules.2.transformer_blocks.0.norm3.bias"]


def test_motion_unknown_key(sd15_folder, v2_original, tmp_path):
    sd = dict(v2_original)
    sd["down_blocks.0.motion_modules.0.temporal_transformer.extra.weight"] = torch.zeros(2)
    save_single_file(sd, tmp_path / "mm.safetensors")
    with pytest.raises(KeyMapError, match="not an AnimateDiff motion-module key"):
        load_video_unet(sd15_folder, tmp_path / "mm.safetensors")


def test_motion_pe_not_sinusoid(sd15_folder, v2_original, tmp_path):
    sd = dict(v2_original)
    key = "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    sd[key] = sd[key] + 0.1
    save_single_file(sd, tmp_path / "mm.safetensors")
    with pytest.raises(CheckpointError, match="differs from the standard sinusoid"):
        load_video_unet(sd15_folder, tmp_path / "mm.safetensors")


def test_motion_pe_lengths_disagree(sd15_folder, tmp_path):
    """Any consistent layout loads (test_motion_layouts.py); tables of two lengths in one file do not."""
    sd = adapter_to_original(make_adapter("v3"))                  # pe 32 ...
    key = "down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
    sd[key] = sd[key][:, :24]                                     # ... but one table of 24
    save_single_file(sd, tmp_path / "mm.ckpt")
    with pytest.raises(CheckpointError, match=r"positional tables of different lengths \[24, 32\]"):
        load_video_unet(sd15_folder, tmp_path / "mm.ckpt")


def test_motion_adapter_config_contradicts_tensors(sd15_folder, tmp_path):
    make_adapter("v2").save_pretrained(tmp_path / "ma")
    cfg = json.loads((tmp_path / "ma" / "config.json").read_text())
    (tmp_path / "ma" / "config.json").write_text(json.dumps({**cfg, "use_motion_mid_block": False}))
    with pytest.raises(CheckpointError, match="mid block True.*use_motion_mid_block=False"):
        load_video_unet(sd15_folder, tmp_path / "ma")


def test_sdxl_motion_on_sd15_unet(sd15_folder, tmp_path):
    save_single_file(adapter_to_original(make_adapter("sdxl_beta")), tmp_path / "mm.safetensors")
    with pytest.raises(CheckpointError, match=r"widths \[32, 64, 64\] per level but the UNet has \[32, 32, 64, 64\]"):
        load_video_unet(sd15_folder, tmp_path / "mm.safetensors")


def test_motion_lora_given_as_motion_module(sd15_folder, tmp_path):
    key = ("down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0."
           "processor.to_q_lora.down.weight")
    save_single_file({key: torch.zeros(4, 32)}, tmp_path / "v2_lora_ZoomIn.ckpt")
    with pytest.raises(CheckpointError, match="MotionLoRA.*merge_lora"):
        load_video_unet(sd15_folder, tmp_path / "v2_lora_ZoomIn.ckpt")
