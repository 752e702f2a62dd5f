"""``sample.py`` and ``train.py`` with ``backbone=sd15|sdxl`` end to end on tiny files in the real layouts: a
DreamBooth-style LDM/SGM single file (UNet + CLIP-L [+ OpenCLIP bigG] text encoders inside), an original AnimateDiff
motion file, a diffusers VAE folder, CLIP tokenizer folders, an I2V-Adapter checkpoint and a kohya LoRA with UNet
and text-encoder parts."""
from __future__ import annotations

import json

import torch
import pytest
from ckpt_layouts import (SD15_TINY, SDXL_TINY, TEXT_WIDTH, adapter_to_original, make_adapter, make_clip_l,
                          make_openclip_bigg, randomize_, save_single_file, sd15_text_file, sdxl_text_file,
                          to_ldm_single_file)
from diffusers import AutoencoderKL, UNet2DConditionModel
from hydra import compose, initialize_config_dir
from PIL import Image
from safetensors.torch import save_file

from i2v.cli.config import CONFIGS, quote_numeric_choices
from i2v.models.content import ImageProjModel
from i2v.models.text import write_clip_tokenizer


def _files(root, kind: str) -> list[str]:
    """Write every file of a tiny ``kind`` backbone under ``root``; return the backbone overrides."""
    torch.manual_seed(0)
    sdxl = kind == "sdxl"
    pooled = 16
    arch = {**SDXL_TINY, "cross_attention_dim": 2 * TEXT_WIDTH, "projection_class_embeddings_input_dim":
            pooled + 6 * 8} if sdxl else {**SD15_TINY, "cross_attention_dim": TEXT_WIDTH}
    unet = randomize_(UNet2DConditionModel(**arch))
    clip_l = make_clip_l(seed=3)
    text = sdxl_text_file(clip_l, make_openclip_bigg(seed=4, embed=pooled)) if sdxl else sd15_text_file(clip_l)
    ldm = {k: v for k, v in to_ldm_single_file(unet, sdxl=sdxl).items()
           if not k.startswith(("cond_stage_model.", "conditioner."))}
    save_single_file({**ldm, **text}, root / "dreambooth.safetensors")
    save_single_file(adapter_to_original(make_adapter("sdxl_beta" if sdxl else "v1")), root / "mm.ckpt")
    AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32).save_pretrained(root / "vae")
    write_clip_tokenizer(root / "tokenizer")
    write_clip_tokenizer(root / "tokenizer_2", pad_token="!")
    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(root / "cat.png")
    te, mid = ("lora_te1_", "lora_unet_middle_block_1_proj_in") if sdxl else \
        ("lora_te_", "lora_unet_mid_block_attentions_0_proj_in")
    width = arch["block_out_channels"][-1]
    shape = (width,) if sdxl else (width, 1, 1)          # SDXL: Linear proj_in, SD1.5: 1x1 conv
    lora = {f"{te}text_model_encoder_layers_1_self_attn_q_proj.lora_down.weight": torch.randn(2, TEXT_WIDTH),
            f"{te}text_model_encoder_layers_1_self_attn_q_proj.lora_up.weight": torch.randn(TEXT_WIDTH, 2),
            f"{mid}.lora_down.weight": torch.randn(2, *shape), f"{mid}.lora_up.weight": torch.randn(width, 2,
                                                                                                    *shape[1:])}
    save_file(lora, str(root / "style.safetensors"))
    # Content-Adapter: a tiny HF CLIP vision folder + an IP-Adapter file in the official layout (image_proj.* and
    # ip_adapter.<i>.to_k_ip/to_v_ip, i = position in diffusers' attn_processors, i.e. attn2 at odd indices)
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
        patch_size=14, projection_dim=20)).save_pretrained(str(root / "image_encoder"))
    cross = arch["cross_attention_dim"]
    proj = ImageProjModel(clip_dim=20, cross_dim=cross, num_tokens=4)
    ip = {f"image_proj.{k}": v for k, v in proj.state_dict().items()}
    for i, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            out = unet.get_submodule(name[: -len(".processor")]).to_k.out_features
            ip[f"ip_adapter.{i}.to_k_ip.weight"] = torch.randn(out, cross) * 0.05
            ip[f"ip_adapter.{i}.to_v_ip.weight"] = torch.randn(out, cross) * 0.05
    save_file(ip, str(root / "ip-adapter.safetensors"))
    hints = "{head_dim:16,norm_num_groups:8,addition_time_embed_dim:8}" if sdxl else "{norm_num_groups:8}"
    over = [f"backbone={kind}", f"backbone.unet={root / 'dreambooth.safetensors'}",
            f"backbone.motion={root / 'mm.ckpt'}", f"backbone.vae={root / 'vae'}",
            f"backbone.tokenizer={root / 'tokenizer'}", f"backbone.unet_hints={hints}",
            f"backbone.ip_adapter={root / 'ip-adapter.safetensors'}",
            f"backbone.image_encoder={root / 'image_encoder'}"]
    return over + ([f"backbone.tokenizer_2={root / 'tokenizer_2'}"] if sdxl else [])


def _adapter(root, overrides):
    """An I2V-Adapter checkpoint for this backbone with non-zero W'_O (a trained one, not the zero init)."""
    from i2v.pipeline.bundle import build_bundle
    from i2v.checkpoints.adapter_io import save_adapter

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=overrides)
    bundle = build_bundle(cfg.backbone, cfg.adapter)
    with torch.no_grad():
        for p in bundle.trainable.values():
            p.add_(torch.randn_like(p) * 0.05)
    save_adapter(root / "adapter.safetensors", bundle.unet, backbone=cfg.backbone.name)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_sample_py_on_a_tiny_real_backbone(tmp_path, capsys, kind):
    from i2v.metrics.video_io import read_video
    from i2v.sampling import sample

    backbone = _files(tmp_path, kind) + ["adapter=full"]        # I2V-Adapter + Content-Adapter (IP-Adapter)
    _adapter(tmp_path, backbone)
    capsys.readouterr()
    run = backbone + [f"ckpt={tmp_path / 'adapter.safetensors'}", f"image={tmp_path / 'cat.png'}",
                      "prompt=a cat turning its head", f"out={tmp_path / 'out'}", "sampling.steps=3",
                      "sampling.num_frames=5", "sampling.height=32", "sampling.width=48", "sampling.t0=0.8",
                      "sampling.p=0.5", "device=cpu",
                      f"lora=[{{path:{tmp_path / 'style.safetensors'},scale:0.8}}]"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=run)
    res = sample(cfg)
    printed = capsys.readouterr().out
    roles = ["text_encoder", "text_encoder_2"] if kind == "sdxl" else ["text_encoder"]
    assert all(f"{r}: " in printed for r in roles) and "tensors from the single file" in printed
    assert "merged 1 LoRA layers" in printed and "1 text_encoder layers" in printed
    assert "[ip_adapter] loaded ImageProjModel (4 tokens)" in printed
    video = read_video(res[0]["video"])
    assert video.shape == (5, 3, 32, 48)
    meta = json.loads((tmp_path / "out" / "cat_42.json").read_text())
    assert (meta["num_frames"], meta["steps"], meta["t0"], meta["nfe"], meta["height"], meta["width"]) == \
        (5, 3, 0.8, 2, 32, 48)
    assert meta["i2v_min_t"] == 0
    # adapter.i2v_min_t on a real layout (SDXL: its added conditions pass through the gate): the branch runs at the
    # first of the three steps only (t0 = 0.8 starts near t = 800), so the video differs from the ungated one
    gated = [o for o in run if not o.startswith("out=")] + ["adapter.i2v_min_t=700", f"out={tmp_path / 'gated'}"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        res_gated = sample(compose(config_name="sample", overrides=gated))
    assert json.loads((tmp_path / "gated" / "cat_42.json").read_text())["i2v_min_t"] == 700
    assert not torch.equal(read_video(res_gated[0]["video"]), video)


@pytest.mark.parametrize("kind,adapter", [("sd15", "full"), ("sdxl", "no_content")])
def test_train_py_on_a_tiny_real_backbone(tmp_path, kind, adapter):
    """``python train.py backbone=<kind> stage=2`` (data swapped for synthetic clips): two steps train the adapter;
    the checkpoint holds adapter tensors only; ``trainer.enable_checkpointing=false`` writes no Lightning files."""
    from i2v.checkpoints.adapter_io import read_adapter, trained_i2v_min_t
    from i2v.train import train

    backbone = _files(tmp_path, kind) + [f"adapter={adapter}"]
    run = backbone + ["stage=2", "data=synthetic", "trainer=cpu", "logger=none", "data.size=32",
                      "data.num_frames=4", "data.batch_size=2", "data.dataset.n_items=8", "data.val_fraction=0",
                      "trainer.max_steps=2", "trainer.enable_checkpointing=false", f"out_dir={tmp_path / 'run'}"]
    min_t = 500 if kind == "sdxl" else None          # adapter.i2v_min_t (not the paper's) on one real layout
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=quote_numeric_choices(
            run + ([f"adapter.i2v_min_t={min_t}"] if min_t else [])))
    result = train(cfg)
    assert result["steps"] == 2
    tensors, info = read_adapter(result["adapter"])
    assert info["backbone"] == kind
    assert trained_i2v_min_t(info) == (min_t or 0)                  # the file records it for sampling
    out_ff = [v for k, v in tensors.items() if k.endswith("to_out_ff.weight")]
    assert out_ff and all(v.abs().sum() > 0 for v in out_ff)          # W'_O left its zero init
    assert all(".to_q_ff." in k or ".to_out_ff." in k for k in tensors)
    assert not (tmp_path / "run" / "lightning").exists()


def test_noised_kv_trains_and_samples_on_a_tiny_sdxl_backbone(tmp_path):
    """``adapter.noised_kv=true`` end to end on the SDXL layout (two text encoders, micro-conditioning, guidance):
    ``train.py`` writes a file that says so, and ``sample.py`` with that file (no flag given) runs the one-frame pass
    at every step (two network calls per step)."""
    from i2v.checkpoints.adapter_io import read_adapter, trained_with_noised_kv
    from i2v.sampling import sample
    from i2v.train import train

    backbone = _files(tmp_path, "sdxl") + ["adapter=no_content"]
    run = backbone + ["adapter.noised_kv=true", "stage=2", "data=synthetic", "trainer=cpu", "logger=none",
                      "data.size=32", "data.num_frames=4", "data.batch_size=2", "data.dataset.n_items=8",
                      "data.val_fraction=0", "trainer.max_steps=2", "trainer.enable_checkpointing=false",
                      f"out_dir={tmp_path / 'run'}"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=quote_numeric_choices(run))
    result = train(cfg)
    assert trained_with_noised_kv(read_adapter(result["adapter"])[1])
    run = backbone + [f"ckpt={result['adapter']}", f"image={tmp_path / 'cat.png'}", "prompt=a cat",
                      f"out={tmp_path / 'out'}", "sampling.steps=3", "sampling.num_frames=4", "sampling.height=32",
                      "sampling.width=32", "sampling.t0=0.8", "device=cpu"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=run)
    sample(cfg)
    meta = json.loads((tmp_path / "out" / "cat_42.json").read_text())
    assert meta["noised_kv"] is True and (meta["steps"], meta["nfe"]) == (3, 4)
