"""Tiny random checkpoints in the real public layouts, written with diffusers' own classes or with a
test-side diffusers -> LDM / AnimateDiff inverse map transcribed from reference/checkpoints.md §1.3, §2 and
§4.1 (index rules), independent of the loaders' tables. A uniquely named module (not conftest.py), so that
test files import it reliably whichever other conftest pytest loaded last."""
from __future__ import annotations

import math
import re

import torch
from diffusers import MotionAdapter, UNet2DConditionModel
from safetensors.torch import save_file

SD15_TINY = dict(  # SD1.5 layout: 4 levels, attention at 0-2, 8 heads, conv proj_in/out
    sample_size=8, block_out_channels=(32, 32, 64, 64), layers_per_block=2, cross_attention_dim=16,
    attention_head_dim=8, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_TINY = dict(  # SDXL layout: 3 levels, attention at 1-2, depth (1,1,2) + mid 2, linear proj, text_time
    sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=2, cross_attention_dim=24,
    attention_head_dim=(2, 4, 4), norm_num_groups=8, transformer_layers_per_block=(1, 1, 2),
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=16 + 6 * 8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
SDXL_HINTS = dict(head_dim=16, norm_num_groups=8, addition_time_embed_dim=8)
SD15_HINTS = dict(norm_num_groups=8)
POOLED = 16

# ------------------------------------------------------------------ diffusers -> LDM (test-side, §1.3/§2)
RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP_TO_LDM = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
MID_TO_LDM = {"resnets.0": "middle_block.0", "attentions.0": "middle_block.1", "resnets.1": "middle_block.2"}


def diffusers_key_to_ldm(key: str, up_attn: tuple[bool, ...]) -> str:
    """One diffusers UNet key -> LDM key, for layers_per_block=2 (3 input blocks per level)."""
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        side, lvl, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "resnets":
            mod, leaf = rest.rsplit(".", 1)
            rest = f"{RESNET_TO_LDM[mod]}.{leaf}"
        if side == "down":
            if kind == "downsamplers":                       # input_blocks.3/6/9.0.op
                return f"input_blocks.{3 * (lvl + 1)}.0.op.{rest.removeprefix('conv.')}"
            return f"input_blocks.{3 * lvl + j + 1}.{0 if kind == 'resnets' else 1}.{rest}"
        if kind == "upsamplers":                             # output_blocks.2/5/8.{1|2}.conv
            return f"output_blocks.{3 * lvl + 2}.{2 if up_attn[lvl] else 1}.{rest}"
        return f"output_blocks.{3 * lvl + j}.{0 if kind == 'resnets' else 1}.{rest}"
    m = re.fullmatch(r"mid_block\.(resnets\.\d|attentions\.\d)\.(.+)", key)
    if m:
        rest = m.group(2)
        if m.group(1).startswith("resnets"):
            mod, leaf = rest.rsplit(".", 1)
            rest = f"{RESNET_TO_LDM[mod]}.{leaf}"
        return f"{MID_TO_LDM[m.group(1)]}.{rest}"
    mod, leaf = key.rsplit(".", 1)
    return f"{TOP_TO_LDM[mod]}.{leaf}"


def to_ldm_single_file(unet: UNet2DConditionModel, *, sdxl: bool, ema: bool = False) -> dict:
    """Full single-file dict: UNet under ``model.diffusion_model.``, plus VAE/text/schedule extras (+EMA)."""
    up_attn = tuple(t.startswith("CrossAttn") for t in unet.config.up_block_types)
    out = {"model.diffusion_model." + diffusers_key_to_ldm(k, up_attn): v.clone()
           for k, v in unet.state_dict().items()}
    out["first_stage_model.encoder.conv_in.weight"] = torch.randn(8, 3, 3, 3)
    out["first_stage_model.decoder.conv_out.bias"] = torch.randn(3)
    if sdxl:
        out["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = torch.randn(8)
        out["conditioner.embedders.1.model.ln_final.weight"] = torch.randn(8)
    else:
        out["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.randn(8)
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_mean_coef1"):
        out[name] = torch.rand(10)
    if ema:
        for k in [k for k in out if k.startswith("model.diffusion_model.")]:
            out["model_ema." + k[len("model."):].replace(".", "")] = torch.randn_like(out[k]) * 0.05
        out["model_ema.decay"] = torch.tensor(0.9999)
        out["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return out


def save_single_file(sd: dict, path, **extras) -> None:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({"state_dict": sd, "global_step": 123, **extras}, str(path))


# ------------------------------------------------------------------ diffusers -> AnimateDiff (§4.1, §4.4)
def reference_pe(length: int, dim: int) -> torch.Tensor:
    """AnimateDiff's PositionalEncoding table, written as in its source: pe[0, :, 0::2] = sin(pos * div_term)."""
    position = torch.arange(length).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


def adapter_to_original(adapter: MotionAdapter) -> dict:
    """diffusers MotionAdapter state dict -> original AnimateDiff keys, with both ``pos_encoder.pe`` per module."""
    L = adapter.config.motion_max_seq_length
    out = {}
    for key, val in adapter.state_dict().items():
        if key.endswith("pos_embed.pe"):
            continue
        m = re.fullmatch(r"(.+\.motion_modules\.\d+)\.(.+)", key)
        rest = m.group(2)
        for new, old in (("norm1.", "norms.0."), ("norm2.", "norms.1."), ("norm3.", "ff_norm."),
                         ("attn1.", "attention_blocks.0."), ("attn2.", "attention_blocks.1.")):
            rest = rest.replace(f"transformer_blocks.0.{new}", f"transformer_blocks.0.{old}")
        out[f"{m.group(1)}.temporal_transformer.{rest}"] = val.clone()
        if rest == "proj_in.weight":
            for a in (0, 1):
                pe_key = f"{m.group(1)}.temporal_transformer.transformer_blocks.0.attention_blocks.{a}.pos_encoder.pe"
                out[pe_key] = reference_pe(L, val.shape[0])
    return out


# ------------------------------------------------------------------ builders
def randomize_(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Add noise to every parameter, so that a swapped or zero tensor changes the output."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def make_unet(kind: str) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return randomize_(UNet2DConditionModel(**(SD15_TINY if kind == "sd15" else SDXL_TINY)))


VERSIONS = {"v1": (24, False), "v2": (32, True), "v3": (32, False), "sdxl_beta": (32, False)}


def make_adapter(version: str) -> MotionAdapter:
    torch.manual_seed(1)
    L, mid = VERSIONS[version]
    cfg = SDXL_TINY if version == "sdxl_beta" else SD15_TINY
    return randomize_(MotionAdapter(block_out_channels=cfg["block_out_channels"], motion_layers_per_block=2,
                                    motion_num_attention_heads=8, motion_norm_num_groups=8,
                                    motion_max_seq_length=L, use_motion_mid_block=mid))


def unet_inputs(kind: str, batch: int = 2, tokens: int = 5):
    """(sample (B,4,8,8), timestep (B,), context (B,L,d), added_cond or None)."""
    g = torch.Generator().manual_seed(7)
    cfg = SD15_TINY if kind == "sd15" else SDXL_TINY
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.tensor([10, 700][:batch] + [500] * max(0, batch - 2))
    ctx = torch.randn(batch, tokens, cfg["cross_attention_dim"], generator=g)
    added = None
    if kind == "sdxl":
        added = {"text_embeds": torch.randn(batch, POOLED, generator=g),
                 "time_ids": torch.tensor([[8.0, 8, 0, 0, 8, 8]]).repeat(batch, 1)}
    return x, t, ctx, added


def tolerance(ref: torch.Tensor) -> float:
    return 1e-4 * max(1.0, ref.abs().max().item())


def video_inputs(kind: str, frames: int = 3, batch: int = 1):
    """(x (B,4,F,8,8), t (B,), context (B,L,d), added_cond or None) for VideoUNet / UNetMotionModel."""
    _, t, ctx, added = unet_inputs(kind, batch=batch)
    x = torch.randn(batch, 4, frames, 8, 8, generator=torch.Generator().manual_seed(11))
    return x, t, ctx, added


@torch.no_grad()
def diffusers_per_frame(unet: UNet2DConditionModel, x, t, ctx, added) -> torch.Tensor:
    """Reference for a motion-less VideoUNet: the 2-D UNet on every frame. Returns (B, C, F, H, W)."""
    b, _, f = x.shape[:3]
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, *x.shape[1:2], *x.shape[3:])
    rep = None if added is None else {k: v.repeat_interleave(f, 0) for k, v in added.items()}
    out = unet(frames, t.repeat_interleave(f, 0), ctx.repeat_interleave(f, 0), added_cond_kwargs=rep).sample
    return out.reshape(b, f, *out.shape[1:]).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def diffusers_motion_reference(unet: UNet2DConditionModel, adapter: MotionAdapter, x, t, ctx, added):
    """diffusers UNetMotionModel.from_unet2d(unet, adapter) on x (B,C,F,H,W).

    Two diffusers 0.42 quirks are handled here, not in the code under test: from_unet2d does not copy
    ``add_embedding`` (SDXL), and UNetMotionModel expects the text context already repeated per frame.
    """
    from diffusers import UNetMotionModel

    ref = UNetMotionModel.from_unet2d(unet, adapter).eval()
    if getattr(unet, "add_embedding", None) is not None:
        ref.add_embedding.load_state_dict(unet.add_embedding.state_dict())
    return ref(x, t, ctx.repeat_interleave(x.shape[2], 0), added_cond_kwargs=added).sample


# ------------------------------------------------------------------ CLIP text encoders (§1.1, §2)
TEXT_WIDTH = 128     # head dim 64 (2 heads): the release rule that config inference relies on
TEXT_LAYERS = 3


def make_clip_l(seed: int = 0, width: int = TEXT_WIDTH):
    """A random transformers CLIPTextModel in the CLIP-L layout (quick-GELU, full 49408 vocabulary, 77 positions)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=TEXT_LAYERS, num_attention_heads=width // 64, max_position_embeddings=77,
                         hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return randomize_(CLIPTextModel(cfg), std=0.02)


def hf_text_keys(model: torch.nn.Module) -> dict:
    """State dict in the hub's names (``text_model.*``), whichever way transformers names its own keys."""
    return {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v.clone()
            for k, v in model.state_dict().items()}


def make_openclip_bigg(seed: int = 0, width: int = TEXT_WIDTH, embed: int = 96):
    """A random open_clip CLIP model whose text tower has the bigG layout (GELU, argmax pooling, ``text_projection``
    [width, embed]); the SGM file holds its non-visual keys under ``conditioner.embedders.1.model.``."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(embed_dim=embed, quick_gelu=False,
                 vision_cfg=CLIPVisionCfg(layers=1, width=64, head_width=32, patch_size=16, image_size=32),
                 text_cfg=CLIPTextCfg(width=width, heads=width // 64, layers=TEXT_LAYERS))
    return randomize_(model, std=0.02)


def openclip_text_keys(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("visual.")}


def sd15_text_file(clip_l, old_merge: bool = False) -> dict:
    """``cond_stage_model.transformer.[text_model.]*`` plus a corrupted ``position_ids`` as old files carry."""
    prefix = "cond_stage_model.transformer."
    sd = {prefix + (k[len("text_model."):] if old_merge else k): v for k, v in hf_text_keys(clip_l).items()}
    ids = prefix + ("" if old_merge else "text_model.") + "embeddings.position_ids"
    sd[ids] = torch.arange(77)[None].float() * 0.999           # float, off by rounding: must be regenerated
    return sd


def sdxl_text_file(clip_l, bigg) -> dict:
    sd = {"conditioner.embedders.0.transformer." + k: v for k, v in hf_text_keys(clip_l).items()}
    sd.update({"conditioner.embedders.1.model." + k: v for k, v in openclip_text_keys(bigg).items()})
    sd["conditioner.embedders.1.model.attn_mask"] = torch.full((77, 77), float("-inf")).triu(1)  # older files
    return sd


# ------------------------------------------------------------------ official I2V-Adapter release (reference §7)
# KwaiVGI/I2V-Adapter src/models: UNet3DConditionModel(unet_use_cross_frame_attention="mixed_cross",
# unet_use_ipadapter=True, motion modules v1). Its spatial names are diffusers' (0.11), so a diffusers UNet2D state
# dict gives them; the motion modules keep AnimateDiff's original names; IPAdapterAttention adds attn2.to_k_ip/to_v_ip.
SD15_ATTN_BLOCKS = ([f"down_blocks.{i}.attentions.{j}" for i in (0, 1, 2) for j in (0, 1)] + ["mid_block.attentions.0"]
                    + [f"up_blocks.{i}.attentions.{j}" for i in (1, 2, 3) for j in (0, 1, 2)])


def official_merged_base(unet: UNet2DConditionModel, adapter: MotionAdapter, seed: int = 3) -> dict:
    """``animatediff_v15_v1_ipplus.pth`` in miniature: UNet + original motion modules (+ pe) + ip layers."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.clone() for k, v in unet.state_dict().items()}
    sd.update(adapter_to_original(adapter))
    ctx = unet.config.cross_attention_dim
    for name, mod in unet.named_modules():
        if name.endswith("attn2"):
            for w in ("to_k_ip", "to_v_ip"):
                sd[f"{name}.{w}.weight"] = torch.randn(mod.to_k.out_features, ctx, generator=g) * 0.05
    return sd


def official_adapter(widths: dict[str, int], seed: int = 4, dtype=torch.float32) -> dict:
    """``i2v_module.pth`` in miniature: ``<block>.transformer_blocks.0.attn1.{to_q_ff.weight, to_out_ff.weight,
    to_out_ff.bias}`` for the 16 SD1.5 blocks; ``widths`` maps a block to its channel count."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for block in SD15_ATTN_BLOCKS:
        c, p = widths[block], f"{block}.transformer_blocks.0.attn1"
        out[f"{p}.to_q_ff.weight"] = torch.randn(c, c, generator=g).to(dtype)
        out[f"{p}.to_out_ff.weight"] = torch.randn(c, c, generator=g).to(dtype)
        out[f"{p}.to_out_ff.bias"] = torch.randn(c, generator=g).to(dtype)
    return out
