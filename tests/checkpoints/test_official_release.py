"""The official I2V-Adapter release: ``i2v_module.pth`` (adapter) and ``animatediff_v15_v1_ipplus.pth`` (merged
base) in miniature, written test-side in the official layouts (ckpt_layouts.py); export back to the official
layout with ``scripts/export_adapter.py``."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from ckpt_layouts import SD15_ATTN_BLOCKS, adapter_to_original, make_adapter, official_adapter, official_merged_base
from safetensors.torch import save_file

from i2v.checkpoints.adapter_io import load_adapter, read_adapter, save_adapter
from i2v.checkpoints.common import KeyMapError
from i2v.checkpoints.loader import load_video_unet
from i2v.models.adapters import i2v_adapter_parameters

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import export_adapter  # noqa: E402  (a script, not a package module)


@pytest.fixture(scope="module")
def widths(sd15_unet):
    return {b: sd15_unet.get_submodule(b).transformer_blocks[0].attn1.to_q.in_features for b in SD15_ATTN_BLOCKS}


@pytest.fixture(scope="module")
def merged(sd15_unet, ckpt_dir):
    sd = official_merged_base(sd15_unet, make_adapter("v1"))
    path = ckpt_dir / "animatediff_v15_v1_ipplus.pth"
    torch.save(sd, str(path))                     # a plain state dict, as from_pretrained_ip loads it
    return path, sd


def test_merged_base_is_split_into_unet_motion_and_ip_layers(merged, sd15_unet, sd15_folder, ckpt_dir, capsys):
    path, sd = merged
    model = load_video_unet(path, unet_hints={"norm_num_groups": 8})
    printed = capsys.readouterr().out
    n_unet, n_ip = len(sd15_unet.state_dict()), 2 * len(SD15_ATTN_BLOCKS)
    n_motion = len(adapter_to_original(make_adapter("v1"))) - 2 * 20     # 20 modules, 2 pe buffers each
    assert f"loaded {n_unet} UNet tensors (sd15, merged UNet3D file), {n_motion} motion tensors + 40 pe" in printed
    assert f"{n_ip} IP-Adapter to_k_ip/to_v_ip tensors from the same file" in printed and "note:" not in printed
    got = model.state_dict()
    assert len(got) == n_unet + n_motion + n_ip == len(sd) - 40
    ip = [k for k in sd if k.endswith("_ip.weight")]
    assert len(ip) == n_ip and all(torch.equal(got[k], sd[k]) for k in ip)
    assert all(torch.equal(got[k], v) for k, v in sd15_unet.state_dict().items())
    # the motion part equals the same v1 module given as its own file (same key map, v1 release norms)
    mm = ckpt_dir / "mm_v1_alone.ckpt"
    torch.save(adapter_to_original(make_adapter("v1")), str(mm))
    separate = load_video_unet(sd15_folder, mm, verbose=False)
    assert separate.motion_config == model.motion_config and model.motion_config.version == "v1"
    assert model.motion_config.spatial_norm == "across_frames"          # official: use_inflated_groupnorm false
    assert all(torch.equal(got[k], v) for k, v in separate.state_dict().items())


@pytest.mark.parametrize("edit,match", [("rename", "unexpected key"), ("shape", "wrong shape"),
                                        ("adapter", "ckpt=<i2v_module.pth>")])
def test_merged_base_bad_keys(edit, match, merged, tmp_path):
    sd = dict(merged[1])
    key = "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_v_ip.weight"
    if edit == "rename":
        sd[key.replace("to_v_ip", "to_v_img")] = sd.pop(key)
    elif edit == "shape":
        sd[key] = sd[key][:, :-1]
    else:
        sd["mid_block.attentions.0.transformer_blocks.0.attn1.to_out_ff.bias"] = torch.zeros(64)
    torch.save(sd, str(tmp_path / "bad.pth"))
    with pytest.raises(KeyMapError, match=match):
        load_video_unet(tmp_path / "bad.pth", unet_hints={"norm_num_groups": 8}, verbose=False)


@pytest.mark.parametrize("layout", ["plain_fp32", "state_dict_fp16", "module_prefix", "safetensors"])
def test_official_adapter_loads(layout, widths, sd15_folder, tmp_path):
    dtype = torch.float16 if layout == "state_dict_fp16" else torch.float32
    tensors = official_adapter(widths, dtype=dtype)
    path = tmp_path / ("i2v_module.safetensors" if layout == "safetensors" else "i2v_module.pth")
    if layout == "safetensors":
        save_file(tensors, str(path))
    elif layout == "state_dict_fp16":
        torch.save({"state_dict": tensors, "epoch": 3}, str(path))
    else:
        torch.save({("module." if layout == "module_prefix" else "") + k: v for k, v in tensors.items()}, str(path))
    got, info = read_adapter(path)
    assert (len(got), info["num_layers"], info["backbone"], info["format"]) == (48, 16, "sd15", "official")
    assert all(torch.equal(got[k], v) and got[k].dtype == dtype for k, v in tensors.items())
    unet = load_video_unet(sd15_folder, verbose=False)
    load_adapter(unet, path, backbone="sd15")
    params = i2v_adapter_parameters(unet)
    assert len(params) == 48 and all(torch.equal(params[k], v.float()) for k, v in tensors.items())
    with pytest.raises(ValueError, match=r"'sd15'.*'sdxl'"):
        load_adapter(unet, path, backbone="sdxl")


def test_official_adapter_bad_keys_one_error(widths, sd15_folder, tmp_path):
    tensors = official_adapter(widths)
    renamed = dict(tensors)
    key = "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out_ff.weight"
    renamed[key.replace("to_out_ff", "to_out_f")] = renamed.pop(key)
    torch.save(renamed, str(tmp_path / "renamed.pth"))
    with pytest.raises(KeyMapError, match="official layout") as e:
        read_adapter(tmp_path / "renamed.pth")
    assert e.value.missing == [key] and e.value.unexpected == [key.replace("to_out_ff", "to_out_f")]
    wrong = {**tensors, key: tensors[key][:, :-1]}
    torch.save(wrong, str(tmp_path / "shape.pth"))
    with pytest.raises(ValueError, match=f"{key} has shape"):
        load_adapter(load_video_unet(sd15_folder, verbose=False), tmp_path / "shape.pth", backbone="sd15")


def test_export_round_trip_is_bit_exact(widths, tmp_path, capsys):
    ours = save_adapter(tmp_path / "adapter.safetensors", official_adapter(widths, seed=9), backbone="sd15",
                        config={"lr": 1e-4})
    official = tmp_path / "i2v_module.pth"
    assert export_adapter.main([f"ckpt={ours}", "to=official", f"out={official}"]) == 0
    assert "16 I2V-Adapter layers (48 tensors)" in capsys.readouterr().out
    raw = torch.load(str(official), map_location="cpu", weights_only=True)   # what the official loader reads
    written, _ = read_adapter(ours)
    assert set(raw) == set(written) and all(torch.equal(raw[k], written[k]) for k in written)
    back = tmp_path / "back.safetensors"
    export_adapter.main([f"ckpt={official}", "to=ours", f"out={back}"])
    again, info = read_adapter(back)
    assert info["backbone"] == "sd15" and info["format"] == "i2v-adapter"
    assert set(again) == set(written) and all(torch.equal(again[k], written[k]) for k in written)
    with pytest.raises(FileExistsError):
        export_adapter.main([f"ckpt={ours}", "to=official", f"out={official}"])
    export_adapter.main([f"ckpt={ours}", "to=official", f"out={official}", "dtype=float16", "overwrite=true"])
    half = torch.load(str(official), weights_only=True)
    assert all(v.dtype == torch.float16 and torch.equal(v, written[k].half()) for k, v in half.items())


def test_export_names_the_backbone_given_for_layer_names_of_no_release(tmp_path, capsys):
    """The toy's layer names are no release backbone's: to=ours needs backbone=, and the line says it was given
    (was: 'backbone None' while the file was written for the given one)."""
    from i2v.cli.config import ASSETS

    official = tmp_path / "toy.pth"
    export_adapter.main([f"ckpt={ASSETS / 'toy' / 'adapter.safetensors'}", "to=official", f"out={official}"])
    back = tmp_path / "toy.safetensors"
    export_adapter.main([f"ckpt={official}", "to=ours", f"out={back}", "backbone=toy"])
    assert "(official layout, backbone toy (given)) -> ours layout" in capsys.readouterr().out
    assert read_adapter(back)[1]["backbone"] == "toy"
