"""Adapter-only checkpoints: exact tensor set, config metadata, round trip, overwrite refusal, backbone check."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from i2v.checkpoints.adapter_io import load_adapter, read_adapter, save_adapter
from i2v.models import build_video_unet
from i2v.models.adapters import attach_i2v_adapter, i2v_adapter_parameters


def _adapted_toy(seed: int):
    torch.manual_seed(0)  # same frozen backbone every time
    unet = build_video_unet("toy", motion="v2").eval()
    params = attach_i2v_adapter(unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return unet, params


def test_round_trip_exact_tensors_and_config(tmp_path):
    unet, params = _adapted_toy(seed=1)
    cfg = {"backbone": {"name": "toy", "resolution": 32}, "lr": 1e-4, "stage": 1}
    path = save_adapter(tmp_path / "run" / "adapter.safetensors", unet, backbone="toy", config=cfg)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    # exactly the official names: <block>.attn1.to_q_ff.weight, <block>.attn1.to_out_ff.{weight,bias}
    layers = ["down_blocks.0.attentions.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
              "mid_block.attentions.0"]
    expected = {f"{b}.transformer_blocks.0.attn1.{s}" for b in layers
                for s in ("to_q_ff.weight", "to_out_ff.weight", "to_out_ff.bias")}
    assert keys == expected
    assert meta["backbone"] == "toy" and meta["num_layers"] == "4"
    assert not [p for p in os.listdir(path.parent) if p != "adapter.safetensors"]  # no temp file left

    fresh, fresh_params = _adapted_toy(seed=2)
    assert not torch.equal(fresh_params[next(iter(expected))], params[next(iter(expected))])
    info = load_adapter(fresh, path, backbone="toy")
    assert info["config"] == cfg and info["backbone"] == "toy"
    for k in expected:
        assert torch.equal(i2v_adapter_parameters(fresh)[k], params[k]), k
    x, ctx = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, 5, ctx), unet(x, 5, ctx), rtol=0, atol=0)

    # a UNet without the adapter attached gets it attached by load_adapter
    torch.manual_seed(0)
    bare = build_video_unet("toy", motion="v2")
    load_adapter(bare, path, backbone="toy")
    assert torch.equal(i2v_adapter_parameters(bare)[next(iter(expected))], params[next(iter(expected))])


def test_overwrite_refused_unless_asked(tmp_path):
    unet, params = _adapted_toy(seed=1)
    path = save_adapter(tmp_path / "a.safetensors", unet, backbone="toy")
    before = path.read_bytes()
    other, _ = _adapted_toy(seed=3)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_adapter(path, other, backbone="toy")
    assert path.read_bytes() == before
    save_adapter(path, other, backbone="toy", overwrite=True)
    assert path.read_bytes() != before
    with pytest.raises(ValueError, match=".safetensors"):
        save_adapter(tmp_path / "a.pt", unet, backbone="toy")


def test_backbone_mismatch_names_both(tmp_path):
    unet, _ = _adapted_toy(seed=1)
    path = save_adapter(tmp_path / "a.safetensors", unet, backbone="sd15")
    with pytest.raises(ValueError, match=r"'sd15'.*'toy'"):
        load_adapter(unet, path, backbone="toy")


def test_state_dict_input_keeps_only_adapter_tensors(tmp_path):
    unet, params = _adapted_toy(seed=1)
    path = save_adapter(tmp_path / "a.safetensors", unet.state_dict(), backbone="toy")
    tensors, info = read_adapter(path)
    assert set(tensors) == set(params) and info["num_layers"] == 4


def test_bad_files(tmp_path):
    unet, params = _adapted_toy(seed=1)
    # wrong key set (a layer missing)
    sd = {k: v.detach() for k, v in params.items() if not k.startswith("mid_block")}
    path = save_adapter(tmp_path / "partial.safetensors", sd, backbone="toy")
    with pytest.raises(KeyError, match="missing"):
        load_adapter(unet, path, backbone="toy")
    # not an adapter file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an I2V-Adapter"):
        read_adapter(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        read_adapter(tmp_path / "missing.safetensors")
    # shape mismatch (an adapter trained on a wider UNet)
    wide = {k: torch.zeros(*(2 * s for s in v.shape)) for k, v in params.items()}
    path = save_adapter(tmp_path / "wide.safetensors", wide, backbone="toy")
    with pytest.raises(ValueError, match="shape"):
        load_adapter(unet, path, backbone="toy")
