"""Content-Adapter (IP-Adapter): processor parity with diffusers, projection models, key numbering, image encoder."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from i2v.checkpoints.diffusers_config import unet_config_to_diffusers
from i2v.checkpoints.ip_adapter import (build_image_proj, ip_adapter_key_map, ip_adapter_numbering, load_ip_adapter,
                                        read_ip_adapter_file)
from i2v.models.attention import Attention
from i2v.models.content import (ClipImageEncoder, ImageProjModel, IPAdapterProcessor, MLPProjModel, Resampler,
                                attach_ip_adapter, detach_ip_adapter, image_tokens, set_ip_scale, uncond_image_tokens)


def _close(a, b, tol=1e-4):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err


def _randomise(module: nn.Module, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


# ----------------------------------------------------------------------------------------------- processor parity
def test_ip_processor_matches_diffusers():
    from diffusers.models.attention_processor import Attention as DAttention, IPAdapterAttnProcessor2_0

    C, d, heads, n_img = 32, 24, 4, 4
    ref = DAttention(query_dim=C, cross_attention_dim=d, heads=heads, dim_head=C // heads, out_bias=True)
    proc = IPAdapterAttnProcessor2_0(hidden_size=C, cross_attention_dim=d, num_tokens=(n_img,), scale=0.7)
    _randomise(ref, 1), _randomise(proc, 2)
    ref.set_processor(proc)

    holder = nn.Module()
    holder.attn2 = Attention(C, d, heads=heads, dim_head=C // heads)
    holder.attn2.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("processor")})
    assert attach_ip_adapter(holder, n_img, scale=0.7) == ["attn2"]
    holder.attn2.to_k_ip.weight.data.copy_(proc.to_k_ip[0].weight)
    holder.attn2.to_v_ip.weight.data.copy_(proc.to_v_ip[0].weight)

    x, text, img = torch.randn(3, 10, C), torch.randn(3, 7, d), torch.randn(3, n_img, d)
    expected = ref(x, encoder_hidden_states=(text, [img]))
    _close(holder.attn2(x, context=torch.cat([text, img], dim=1)), expected)

    set_ip_scale(holder, 0.0)  # image branch off == plain text cross-attention
    _close(holder.attn2(x, context=torch.cat([text, img], dim=1)), holder.attn2.default_forward(x, text))
    with pytest.raises(ValueError, match="image tokens"):
        holder.attn2(x, context=img)
    detach_ip_adapter(holder)
    assert holder.attn2.processor is None and not hasattr(holder.attn2, "to_k_ip")


# ----------------------------------------------------------------------------------------------- projection models
def _official_proj_sd(kind: str) -> dict[str, torch.Tensor]:
    if kind == "base":
        m = ImageProjModel(clip_dim=20, cross_dim=16, num_tokens=4)
    elif kind == "full":
        m = MLPProjModel(clip_dim=24, cross_dim=16)
    else:  # diffusers' converter assumes depth 4 and head dim 64
        m = Resampler(dim=32, depth=4, dim_head=64, heads=2, num_queries=4, embedding_dim=24, output_dim=16)
    return _randomise(m, 3).state_dict()


@pytest.mark.parametrize("kind,cls,inp", [("base", ImageProjModel, (2, 20)), ("full", MLPProjModel, (2, 9, 24)),
                                          ("plus", Resampler, (2, 9, 24))])
def test_image_proj_matches_diffusers(kind, cls, inp):
    from diffusers import UNet2DConditionModel

    sd = _official_proj_sd(kind)
    ours = build_image_proj(sd)
    assert isinstance(ours, cls)
    ref = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(None, sd, low_cpu_mem_usage=False)
    x = torch.randn(*inp)
    _close(ours(x), ref(x))
    assert ours(x).shape[-1] == 16


def test_build_image_proj_errors():
    with pytest.raises(ValueError, match="FaceID"):
        build_image_proj({"perceiver_resampler.proj_in.weight": torch.zeros(2, 2)})
    sd = _official_proj_sd("base")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="unexpected"):
        build_image_proj(sd)


# --------------------------------------------------------------------------------------------------- key numbering
def _tiny_diffusers_unet(device="cpu"):
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(
            block_out_channels=(16, 32, 32), down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2, layers_per_block=1, cross_attention_dim=12,
            norm_num_groups=8, attention_head_dim=4, transformer_layers_per_block=(1, 2, 1), sample_size=8)


def _diffusers_numbering(unet) -> dict[str, int]:
    """diffusers' loader walk (loaders/unet.py): key_id starts at 1 and advances by 2 per cross-attention processor."""
    out, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor") and "motion_modules" not in name:
            out[name[: -len(".processor")]] = key_id
            key_id += 2
    return out


def _mirror(unet, order=("down_blocks", "mid_block", "up_blocks")) -> nn.Module:
    """Our Attention at every attn2 path of a diffusers UNet, registered in ``order`` (not diffusers' order)."""
    root = nn.Module()
    names = [n for n, m in unet.named_modules() if n.endswith("attn2")]
    for group in order:
        for name in (n for n in names if n.startswith(group)):
            ref = unet.get_submodule(name)
            node = root
            for part in name.split(".")[:-1]:
                if not hasattr(node, part):
                    node.add_module(part, nn.Module())
                node = getattr(node, part)
            node.add_module("attn2", Attention(ref.to_q.in_features, ref.to_k.in_features, heads=ref.heads,
                                               dim_head=ref.to_q.out_features // ref.heads))
    return root


def test_numbering_matches_diffusers_order_tiny():
    unet = _tiny_diffusers_unet()
    expected = _diffusers_numbering(unet)
    names = [n for n, _ in _mirror(unet).named_modules() if n.endswith("attn2")]
    assert names[-1].startswith("up_blocks")  # mirror registered mid before up
    assert ip_adapter_numbering(names) == expected
    assert ip_adapter_key_map(_mirror(unet))["1.to_k_ip.weight"] == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_ip.weight"


@pytest.mark.parametrize("backbone", ["sd15", "sdxl"])
def test_numbering_full_size_meta(backbone):
    from diffusers import UNet2DConditionModel

    if backbone == "sd15":
        cfg = dict(cross_attention_dim=768, attention_head_dim=8)
    else:
        cfg = dict(block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                   "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                   use_linear_projection=True)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    expected = _diffusers_numbering(unet)
    names = sorted(expected, key=lambda n: ("down_blocks", "mid_block", "up_blocks").index(n.split(".")[0]))
    got = ip_adapter_numbering(names)
    assert got == expected
    # reference §5.2 table
    if backbone == "sd15":
        assert len(got) == 16 and got["mid_block.attentions.0.transformer_blocks.0.attn2"] == 31
        assert got["up_blocks.1.attentions.0.transformer_blocks.0.attn2"] == 13
    else:
        assert len(got) == 70 and got["mid_block.attentions.0.transformer_blocks.0.attn2"] == 121
        assert got["up_blocks.0.attentions.0.transformer_blocks.0.attn2"] == 49
        assert got["down_blocks.2.attentions.1.transformer_blocks.0.attn2"] == 29


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_load_ip_adapter_matches_diffusers_loader(tmp_path, fmt):
    unet = _tiny_diffusers_unet()
    numbering = _diffusers_numbering(unet)
    ip = {}
    for name, i in numbering.items():
        a = unet.get_submodule(name)
        ip[f"{i}.to_k_ip.weight"] = torch.randn(a.to_k.out_features, 12)
        ip[f"{i}.to_v_ip.weight"] = torch.randn(a.to_v.out_features, 12)
    proj = ImageProjModel(clip_dim=20, cross_dim=12, num_tokens=4).state_dict()
    path = tmp_path / f"ip.{fmt}"
    if fmt == "bin":
        torch.save({"image_proj": proj, "ip_adapter": ip}, path)
    else:
        from safetensors.torch import save_file

        save_file({**{f"image_proj.{k}": v for k, v in proj.items()}, **{f"ip_adapter.{k}": v for k, v in ip.items()}},
                  str(path))
    unet._load_ip_adapter_weights([{"image_proj": proj, "ip_adapter": ip}], low_cpu_mem_usage=False)
    ours = _mirror(unet)
    image_proj = load_ip_adapter(ours, path, scale=0.5)
    assert isinstance(image_proj, ImageProjModel) and image_proj.num_tokens == 4
    for name in numbering:
        dproc = unet.attn_processors[name + ".processor"]
        mine = ours.get_submodule(name)
        assert torch.equal(mine.to_k_ip.weight, dproc.to_k_ip[0].weight), name
        assert torch.equal(mine.to_v_ip.weight, dproc.to_v_ip[0].weight), name
        assert isinstance(mine.processor, IPAdapterProcessor) and mine.processor.scale == 0.5

    del ip["1.to_k_ip.weight"]
    torch.save({"image_proj": proj, "ip_adapter": ip}, tmp_path / "bad.bin")
    with pytest.raises(KeyError, match="1.to_k_ip.weight"):
        load_ip_adapter(_mirror(unet), tmp_path / "bad.bin")
    with pytest.raises(FileNotFoundError, match="IP-Adapter"):
        read_ip_adapter_file(tmp_path / "missing.bin")


# --------------------------------------------------------------------------------------------------- image encoder
def _tiny_hf_encoder(folder):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           image_size=28, patch_size=14, projection_dim=20, hidden_act="gelu")
    CLIPVisionModelWithProjection(cfg).save_pretrained(str(folder))
    return CLIPVisionModelWithProjection.from_pretrained(str(folder)).eval()


def test_hf_image_encoder_features_and_preprocessing(tmp_path):
    ref = _tiny_hf_encoder(tmp_path / "image_encoder")
    enc = ClipImageEncoder.from_local(tmp_path / "image_encoder")
    assert enc.image_size == 28
    captured = {}

    def hook(module, args, out):  # returns None: does not alter the output
        captured.setdefault("h", out[0] if isinstance(out, tuple) else out)

    ref.vision_model.encoder.layers[-2].register_forward_hook(hook)
    pv = torch.randn(2, 3, 28, 28)
    feats = enc.encode_preprocessed(pv)
    with torch.no_grad():
        out = ref(pixel_values=pv)
    _close(feats["image_embeds"], out.image_embeds)
    _close(feats["penultimate"], captured["h"])
    assert feats["penultimate"].shape == (2, 5, 32)

    # preprocessing vs transformers' CLIPImageProcessor on a non-square uint8 image
    from transformers import CLIPImageProcessor

    img = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    proc = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    expected = proc(images=img.permute(1, 2, 0).numpy(), return_tensors="pt").pixel_values
    got = enc.preprocess(img[None].float() / 127.5 - 1)
    assert got.shape == expected.shape
    assert (got - expected).abs().mean() < 0.01, (got - expected).abs().mean()  # uint8 rounding ≈ 0.004

    # unconditional Plus tokens = projection of the encoder run on an all-zero normalised image
    res = Resampler(dim=16, depth=1, dim_head=8, heads=2, num_queries=3, embedding_dim=32, output_dim=12)
    with torch.no_grad():
        zeros_pen = ref(pixel_values=torch.zeros(2, 3, 28, 28), output_hidden_states=True).hidden_states[-2]
    _close(uncond_image_tokens(res, enc, 2), res(zeros_pen))
    _close(image_tokens(res, feats), res(captured["h"]))


def test_base_uncond_tokens_are_projected_zeros():
    proj = _randomise(ImageProjModel(clip_dim=20, cross_dim=16, num_tokens=4), 5)
    expected = torch.nn.functional.layer_norm(proj.proj.bias.view(4, 16), (16,), proj.norm.weight, proj.norm.bias)
    _close(uncond_image_tokens(proj, None, 3), expected.expand(3, 4, 16))


def test_open_clip_encoder(tmp_path):
    import open_clip

    cfg = {"embed_dim": 20, "vision_cfg": {"image_size": 28, "layers": 3, "width": 32, "patch_size": 14, "head_width": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "i2v-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / "i2v-tiny-clip.json"))
    model = open_clip.create_model("i2v-tiny-clip").eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    enc = ClipImageEncoder.from_local(tmp_path / "tiny.pt", arch="i2v-tiny-clip")
    captured = {}

    def hook(module, args, out):
        captured["h"] = out

    model.visual.transformer.resblocks[-2].register_forward_hook(hook)
    pv = torch.randn(2, 3, 28, 28)
    feats = enc.encode_preprocessed(pv)
    with torch.no_grad():
        _close(feats["image_embeds"], model.encode_image(pv))
    _close(feats["penultimate"], captured["h"])
    assert feats["penultimate"].shape == (2, 5, 32)


def test_encoder_meta_size_and_missing_file(tmp_path):
    enc = ClipImageEncoder.from_local(None, arch="ViT-H-14", device="meta")
    assert sum(p.numel() for p in enc.parameters()) == 632_076_800  # reference §5.5: 632.08M
    with pytest.raises(FileNotFoundError, match="image_encoder"):
        ClipImageEncoder.from_local(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ on our VideoUNet
@pytest.mark.parametrize("backbone,motion", [("sd15", "v1"), ("sdxl", None)])
def test_key_map_on_video_unet_matches_diffusers(backbone, motion):
    from diffusers import UNet2DConditionModel

    from i2v.models import build_video_unet
    from i2v.models.config import UNetConfig

    ours = build_video_unet(backbone, motion=motion, device="meta")
    with torch.device("meta"):
        ref = UNet2DConditionModel(**unet_config_to_diffusers(getattr(UNetConfig, backbone)()))
    expected = _diffusers_numbering(ref)
    key_map = ip_adapter_key_map(ours)
    assert len(key_map) == 2 * len(expected) == 2 * {"sd15": 16, "sdxl": 70}[backbone]
    for name, i in expected.items():
        assert key_map[f"{i}.to_k_ip.weight"] == f"{name}.to_k_ip.weight"
        assert key_map[f"{i}.to_v_ip.weight"] == f"{name}.to_v_ip.weight"


def test_video_unet_with_ip_adapter_matches_diffusers(tmp_path):
    """Whole-UNet parity: our VideoUNet + load_ip_adapter vs diffusers UNet2DConditionModel + its own IP loader
    (run frame by frame), same weights, same IP file."""
    from diffusers import UNet2DConditionModel
    from einops import rearrange

    from i2v.models.config import UNetConfig
    from i2v.models.unet import VideoUNet

    cfg = UNetConfig(block_out_channels=(16, 32), attention_levels=(True, True), layers_per_block=1,
                     transformer_layers_per_block=(1, 2), num_attention_heads=(2, 4), cross_attention_dim=24,
                     norm_num_groups=8, mid_transformer_layers=2, sample_size=8)
    ref = _randomise(UNet2DConditionModel(**unet_config_to_diffusers(cfg)).eval(), 7)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.25)
    ours = VideoUNet(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    numbering = _diffusers_numbering(ref)
    ip = {f"{i}.to_{w}_ip.weight": torch.randn(ref.get_submodule(n).to_k.out_features, 24) * 0.2
          for n, i in numbering.items() for w in "kv"}
    proj = _randomise(ImageProjModel(clip_dim=20, cross_dim=24, num_tokens=4), 8).state_dict()
    torch.save({"image_proj": proj, "ip_adapter": ip}, tmp_path / "ip.bin")
    ref._load_ip_adapter_weights([{"image_proj": proj, "ip_adapter": ip}], low_cpu_mem_usage=False)
    image_proj = load_ip_adapter(ours, tmp_path / "ip.bin")

    b, f = 2, 2
    x, t = torch.randn(b, 4, f, 8, 8), torch.tensor([3, 700])
    text, emb = torch.randn(b, 6, 24), torch.randn(b, 20)
    with torch.no_grad():
        got = ours(x, t, torch.cat([text, image_proj(emb)], dim=1))
        exp = ref(rearrange(x, "b c f h w -> (b f) c h w"), t.repeat_interleave(f), text.repeat_interleave(f, 0),
                  added_cond_kwargs={"image_embeds": [emb.repeat_interleave(f, 0)[:, None]]}).sample
        exp = rearrange(exp, "(b f) c h w -> b c f h w", f=f)
        _close(got, exp)
        set_ip_scale(ours, 0.0)  # the image branch matters: without it the outputs differ
        assert (ours(x, t, torch.cat([text, image_proj(emb)], dim=1)) - exp).abs().max() > 1e-3
