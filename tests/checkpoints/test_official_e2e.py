"""A user of the official repository points ``backbone.unet`` at ``animatediff_v15_v1_ipplus.pth`` and ``ckpt`` at
``i2v_module.pth`` (plus the SD1.5 VAE / text encoder / tokenizer folders and the IP-Adapter files they already
have, as in the official ``infer.sh``): no ``backbone.motion`` is needed, the merged base's IP-Adapter layers are
used, and the adapter loads -- all through the real configs and :func:`i2v.pipeline.bundle.build_bundle`."""
from __future__ import annotations

import pytest
import torch
from ckpt_layouts import (SD15_ATTN_BLOCKS, SD15_TINY, TEXT_WIDTH, make_adapter, make_clip_l, official_adapter,
                          official_merged_base, randomize_)
from diffusers import AutoencoderKL, UNet2DConditionModel
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file

from i2v.pipeline.bundle import build_bundle, check_paths
from i2v.checkpoints.adapter_io import load_adapter
from i2v.cli.config import CONFIGS
from i2v.models.adapters import i2v_adapter_parameters
from i2v.models.content import ImageProjModel
from i2v.models.text import write_clip_tokenizer


def _official_files(root) -> tuple[list[str], dict, dict]:
    torch.manual_seed(0)
    unet = randomize_(UNet2DConditionModel(**{**SD15_TINY, "cross_attention_dim": TEXT_WIDTH}))
    merged = official_merged_base(unet, make_adapter("v1"))
    torch.save(merged, str(root / "animatediff_v15_v1_ipplus.pth"))
    widths = {b: unet.get_submodule(b).transformer_blocks[0].attn1.to_q.in_features for b in SD15_ATTN_BLOCKS}
    adapter = official_adapter(widths, dtype=torch.float16)
    torch.save({"state_dict": adapter}, str(root / "i2v_module.pth"))
    make_clip_l(seed=3).save_pretrained(str(root / "text_encoder"))
    write_clip_tokenizer(root / "tokenizer")
    AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32).save_pretrained(root / "vae")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
        patch_size=14, projection_dim=20)).save_pretrained(str(root / "image_encoder"))
    ip = {f"image_proj.{k}": v for k, v in ImageProjModel(20, TEXT_WIDTH, 4).state_dict().items()}
    ip.update({f"ip_adapter.{2 * g + 1}.to_{w}_ip.weight": torch.zeros(1) for g in range(16) for w in "kv"})
    save_file(ip, str(root / "ip-adapter.safetensors"))  # its ip_adapter part is not used: the base's layers are
    over = ["backbone=sd15", f"backbone.unet={root / 'animatediff_v15_v1_ipplus.pth'}", f"backbone.vae={root / 'vae'}",
            f"backbone.text_encoder={root / 'text_encoder'}", f"backbone.tokenizer={root / 'tokenizer'}",
            "backbone.unet_hints={norm_num_groups:8}", f"backbone.ip_adapter={root / 'ip-adapter.safetensors'}",
            f"backbone.image_encoder={root / 'image_encoder'}", "adapter=full"]
    return over, merged, adapter


def _compose(over):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="sample", overrides=over)


def test_official_two_files_build_the_model(tmp_path, capsys):
    over, merged, adapter = _official_files(tmp_path)
    bundle = build_bundle(_compose(over).backbone, _compose(over).adapter)
    printed = capsys.readouterr().out
    assert "merged UNet3D file" in printed and "(v1, animatediff;" in printed
    assert "kept the 32 ip tensors already in the UNet (merged base)" in printed
    load_adapter(bundle.unet, tmp_path / "i2v_module.pth", backbone="sd15")
    state = bundle.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in merged.items() if k.endswith("_ip.weight"))
    params = i2v_adapter_parameters(bundle.unet)
    assert len(params) == 48 and all(torch.equal(params[k], v.float()) for k, v in adapter.items())
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    cond = bundle.condition(["a cat turning its head"], image)
    assert cond["context"].shape == (1, 77 + 4, TEXT_WIDTH)          # text + the image projection's 4 tokens
    with torch.no_grad():
        out = bundle.unet(torch.randn(1, 4, 3, 4, 4), torch.tensor([500]), cond["context"])
    assert out.shape == (1, 4, 3, 4, 4) and torch.isfinite(out).all()


def test_official_base_needs_vae_and_text_folders_not_motion(tmp_path):
    over, _, _ = _official_files(tmp_path)
    cfg = _compose(over)
    check_paths(cfg.backbone, cfg.adapter)                            # no backbone.motion needed
    cfg = _compose(over + ["backbone.vae=null", "backbone.text_encoder=null"])
    with pytest.raises(FileNotFoundError) as e:
        check_paths(cfg.backbone, cfg.adapter)
    assert "backbone.vae" in str(e.value) and "backbone.text_encoder" in str(e.value)
    assert "backbone.motion" not in str(e.value)
    no_content = build_bundle(_compose(over + ["adapter=no_content"]).backbone,
                              _compose(over + ["adapter=no_content"]).adapter)
    assert not any(k.endswith("_ip.weight") for k in no_content.unet.state_dict())


def test_sample_py_with_the_official_files_and_preprocessing(tmp_path, monkeypatch):
    """``sample.py`` as the official infer.sh runs it: the two official files, a 3:2 image kept whole
    (``resize=fit``, here a 1:2 one), the official negative prompt, colour matching to the decoded frame 0."""
    from PIL import Image

    from i2v.pipeline.bundle import Bundle
    from i2v.metrics.video_io import read_video
    from i2v.sampling import sample

    over, _, _ = _official_files(tmp_path)
    Image.fromarray((torch.rand(48, 96, 3) * 255).byte().numpy()).save(tmp_path / "wide.png")
    texts = []
    condition = Bundle.condition
    monkeypatch.setattr(Bundle, "condition", lambda self, t, *a, **k: texts.extend(t) or condition(self, t, *a,
                                                                                                    **k))
    run = over + [f"ckpt={tmp_path / 'i2v_module.pth'}", f"image={tmp_path / 'wide.png'}", "prompt=a cat",
                  f"out={tmp_path / 'out'}", "device=cpu", "write_gif=false", "sampling.steps=2",
                  "sampling.num_frames=3", "sampling.height=64", "sampling.width=64", "sampling.resize=fit",
                  "sampling.negative_prompt=official", "sampling.post.color_match.enabled=true",
                  "sampling.post.color_match.reference=decoded_frame0"]
    res = sample(_compose(run))
    assert read_video(res[0]["video"]).shape == (3, 3, 64, 128)     # short side 64, nothing cropped
    assert texts == ["a cat", "worst quality, low quality, normal quality, lowres, bad anatomy, bad hands, "
                                "watermark, moles"]
