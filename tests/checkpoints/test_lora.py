"""LoRA merging: the merged VideoUNet equals the diffusers model running the *unmerged* LoRA, i.e. with
forward hooks adding ``scale * alpha/r * B(A x)`` on every targeted Linear/Conv2d."""
from __future__ import annotations

import contextlib
import json
import re

import pytest
import torch
import torch.nn.functional as F
from ckpt_layouts import (adapter_to_original, diffusers_key_to_ldm, diffusers_per_frame, make_adapter, make_clip_l,
                          randomize_, save_single_file, tolerance, video_inputs)
from diffusers import UNetMotionModel
from safetensors.torch import save_file
from torch import nn

from i2v.checkpoints.common import KeyMapError
from i2v.checkpoints.loader import load_video_unet
from i2v.checkpoints.lora import merge_lora, split_text_encoder_lora
from i2v.models.text import SD15TextEncoder, SDXLTextEncoder, load_tokenizer, write_clip_tokenizer

RANK = 4
# transformer Linear/1x1 layers (kohya default) + LoCon convs, time projections and resamplers
SD15_TARGETS = r"(attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\." \
               r"(attn[12]\.(to_[qkv]|to_out\.0)|ff\.net\.(0\.proj|2)))" \
               r"|resnets\.\d+\.(conv1|conv2|time_emb_proj|conv_shortcut)|downsamplers\.0\.conv|upsamplers\.0\.conv)$"


def random_lora(unet: nn.Module, pattern: str, seed: int, alpha_every: int = 2) -> dict:
    """{module path: (down, up, alpha or None)} for every Linear/Conv2d whose path matches ``pattern``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (path, mod) in enumerate((p, m) for p, m in unet.named_modules()
                                    if isinstance(m, (nn.Linear, nn.Conv2d)) and re.search(pattern, p)):
        w = mod.weight
        down_shape = (RANK, *w.shape[1:]) if w.ndim == 4 else (RANK, w.shape[1])
        up_shape = (w.shape[0], RANK, 1, 1) if w.ndim == 4 else (w.shape[0], RANK)
        alpha = float(1 + i % 3) if i % alpha_every == 0 else None
        out[path] = (torch.randn(down_shape, generator=g) * 0.3, torch.randn(up_shape, generator=g) * 0.3, alpha)
    assert out, pattern
    return out


@contextlib.contextmanager
def hooked(model: nn.Module, lora: dict, factor_of, scale: float):
    """While active, forward hooks add ``scale * factor * B(A x)`` to every LoRA target (the unmerged reference)."""
    mods = dict(model.named_modules())
    handles = []
    for path, (down, up, alpha) in lora.items():
        mod, f = mods[path], scale * factor_of(alpha)

        def hook(m, args, out, down=down, up=up, f=f):
            x = args[0]
            if isinstance(m, nn.Linear):
                return out + f * F.linear(F.linear(x, down), up)
            return out + f * F.conv2d(F.conv2d(x, down, stride=m.stride, padding=m.padding), up)
        handles.append(mod.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def kohya_factor(alpha):
    return 1.0 if alpha is None else alpha / RANK


def kohya_file(lora: dict, name_of, prefix: str = "lora_unet_") -> dict:
    sd = {}
    for path, (down, up, alpha) in lora.items():
        name = prefix + name_of(path).replace(".", "_")
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


def _check(merged_out, ref_out, base_out):
    err = (merged_out - ref_out).abs().max().item()
    assert err <= tolerance(ref_out), f"merged vs hooked reference: {err:.3g}"
    assert (merged_out - base_out).abs().max() > 100 * tolerance(ref_out)  # the LoRA really changed the output


@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_kohya_sd1_diffusers_paths(sd15_unet, sd15_folder, tmp_path, scale, capsys):
    lora = random_lora(sd15_unet, SD15_TARGETS, seed=1)
    sd = kohya_file(lora, lambda p: p)
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    sd.update({f"{te}.lora_down.weight": torch.zeros(RANK, 8), f"{te}.lora_up.weight": torch.zeros(8, RANK),
               f"{te}.alpha": torch.tensor(1.0)})
    save_file(sd, str(tmp_path / "kohya_sd1.safetensors"))
    model = load_video_unet(sd15_folder, verbose=False)
    x, t, ctx, _ = video_inputs("sd15", frames=2)
    with torch.no_grad():
        base = model(x, t, ctx)
    assert merge_lora(model, tmp_path / "kohya_sd1.safetensors", scale=scale) == len(lora)
    assert "skipped 3 text-encoder LoRA tensors" in capsys.readouterr().out
    with hooked(sd15_unet, lora, kohya_factor, scale):
        ref = diffusers_per_frame(sd15_unet, x, t, ctx, None)
    with torch.no_grad():
        _check(model(x, t, ctx), ref, base)


def test_kohya_sdxl_sgm_paths(sdxl_unet, sdxl_folder, tmp_path):
    pattern = SD15_TARGETS.replace("|upsamplers", "|add_embedding\\.linear_1|upsamplers")
    lora = random_lora(sdxl_unet, pattern, seed=2)
    up_attn = tuple(t.startswith("CrossAttn") for t in sdxl_unet.config.up_block_types)
    names = {p: diffusers_key_to_ldm(p + ".weight", up_attn)[: -len(".weight")] for p in lora}
    assert "input_blocks.4.1.transformer_blocks.0.attn1.to_q" in names.values()       # §6 examples
    assert "input_blocks.3.0.op" in names.values() and "middle_block.1.proj_in" in names.values()
    assert "output_blocks.0.0.in_layers.2" in names.values() and "label_emb.0.0" in names.values()
    save_file(kohya_file(lora, names.__getitem__), str(tmp_path / "kohya_sdxl.safetensors"))
    model = load_video_unet(sdxl_folder, verbose=False)
    x, t, ctx, added = video_inputs("sdxl", frames=2)
    with torch.no_grad():
        base = model(x, t, ctx, added)
    assert merge_lora(model, tmp_path / "kohya_sdxl.safetensors", verbose=False) == len(lora)
    with hooked(sdxl_unet, lora, kohya_factor, 1.0):
        ref = diffusers_per_frame(sdxl_unet, x, t, ctx, added)
    with torch.no_grad():
        _check(model(x, t, ctx, added), ref, base)


@pytest.mark.parametrize("layout", ["peft", "old_diffusers"])
def test_peft_and_old_diffusers(sd15_unet, sd15_folder, tmp_path, layout):
    attn_only = r"attn[12]\.(to_[qkv]|to_out\.0)$"
    lora = random_lora(sd15_unet, attn_only if layout == "old_diffusers" else SD15_TARGETS, seed=3)
    sd, meta = {}, None
    for path, (down, up, _) in lora.items():
        if layout == "peft":
            sd[f"unet.{path}.lora_A.weight"], sd[f"unet.{path}.lora_B.weight"] = down, up
        else:
            head, proj = re.match(r"(.+)\.(to_[qkv]|to_out)(?:\.0)?$", path).groups()
            sd[f"unet.{head}.processor.{proj}_lora.down.weight"] = down
            sd[f"unet.{head}.processor.{proj}_lora.up.weight"] = up
    # PEFT: lora_alpha 8 (factor 2), alpha_pattern attn2.to_k -> 2 (factor 0.5); old format: factor 1
    factor = {p: 1.0 for p in lora}
    if layout == "peft":
        meta = {"lora_adapter_metadata": json.dumps({"unet.r": RANK, "unet.lora_alpha": 8,
                                                     "unet.alpha_pattern": {"attn2.to_k": 2}})}
        factor = {p: (0.5 if p.endswith("attn2.to_k") else 2.0) for p in lora}
    sd["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(RANK, 8)
    save_file(sd, str(tmp_path / "lora.safetensors"), metadata=meta)
    model = load_video_unet(sd15_folder, verbose=False)
    x, t, ctx, _ = video_inputs("sd15", frames=2)
    with torch.no_grad():
        base = model(x, t, ctx)
    assert merge_lora(model, tmp_path / "lora.safetensors", verbose=False) == len(lora)
    lora_f = {p: (d, u, factor[p]) for p, (d, u, _) in lora.items()}
    with hooked(sd15_unet, lora_f, lambda f: f, 1.0):
        ref = diffusers_per_frame(sd15_unet, x, t, ctx, None)
    with torch.no_grad():
        _check(model(x, t, ctx), ref, base)


def test_motion_lora(sd15_unet, sd15_folder, tmp_path):
    """AnimateDiff MotionLoRA (original motion paths, processor keys, no alpha) on a v2 motion model."""
    adapter = make_adapter("v2")
    save_single_file(adapter_to_original(adapter), tmp_path / "mm_v2.ckpt")
    ref_model = UNetMotionModel.from_unet2d(sd15_unet, adapter).eval()
    lora = random_lora(ref_model, r"motion_modules\.\d+\.transformer_blocks\.0\.attn[12]\.(to_[qkv]|to_out\.0)$", 4)
    sd = {}
    for path, (down, up, _) in lora.items():
        m = re.match(r"(.+\.motion_modules\.\d+)\.transformer_blocks\.0\.attn([12])\.(to_[qkv]|to_out)", path)
        orig = (f"{m.group(1)}.temporal_transformer.transformer_blocks.0.attention_blocks.{int(m.group(2)) - 1}"
                f".processor.{m.group(3)}_lora")
        sd[f"{orig}.down.weight"], sd[f"{orig}.up.weight"] = down, up
    save_single_file(sd, tmp_path / "v2_lora_PanLeft.ckpt")
    model = load_video_unet(sd15_folder, tmp_path / "mm_v2.ckpt", norm="diffusers", verbose=False)
    x, t, ctx, _ = video_inputs("sd15", frames=3)
    with torch.no_grad():
        base = model(x, t, ctx)
    assert merge_lora(model, tmp_path / "v2_lora_PanLeft.ckpt", scale=0.8, verbose=False) == len(lora) == 21 * 8
    with hooked(ref_model, lora, lambda a: 1.0, 0.8):
        with torch.no_grad():
            ref = ref_model(x, t, ctx.repeat_interleave(3, 0)).sample
    with torch.no_grad():
        _check(model(x, t, ctx), ref, base)


def test_unknown_target_raises_and_merges_nothing(sd15_unet, sd15_folder):
    lora = random_lora(sd15_unet, r"down_blocks\.0\.attentions\.0\.proj_in$", seed=5)
    sd = kohya_file(lora, lambda p: p)
    sd["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"] = torch.zeros(RANK, 32, 1, 1)
    sd["lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight"] = torch.zeros(32, RANK, 1, 1)
    model = load_video_unet(sd15_folder, verbose=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyMapError, match=r"1 LoRA layer\(s\) match no module") as e:
        merge_lora(model, sd)
    assert e.value.unexpected == ["down_blocks_7_attentions_0_proj_in"] and "lora_kohya" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrong_shape_and_unknown_kind(sd15_unet, sd15_folder):
    model = load_video_unet(sd15_folder, verbose=False)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    bad = {f"{name}.lora_down.weight": torch.zeros(RANK, 99), f"{name}.lora_up.weight": torch.zeros(32, RANK)}
    with pytest.raises(KeyMapError, match="do not fit the UNet's modules"):
        merge_lora(model, bad)
    with pytest.raises(KeyMapError, match="unknown kind"):
        merge_lora(model, {**bad, f"{name}.hada_w1_a": torch.zeros(2)})
    with pytest.raises(KeyMapError, match="without both down/A and up/B"):
        merge_lora(model, {f"{name}.lora_down.weight": torch.zeros(RANK, 16)})


def test_split_text_encoder_lora():
    sd = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(1),
          "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha": torch.zeros(1),
          "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(1),
          "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(1)}
    unet, text = split_text_encoder_lora(sd)
    assert list(unet) == ["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"]
    assert len(text) == 3


# ------------------------------------------------------------------------------------- text-encoder LoRA
TEXT_TARGETS = r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc[12])$"       # kohya's CLIPAttention/CLIPMLP
PROMPTS = ["a watercolor fox in the snow", ""]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(write_clip_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer"))


def hub_path(model: nn.Module):
    """module path -> the hub's name (``text_model.*``), whichever way transformers names its own modules."""
    wrapped = any(n == "text_model" for n, _ in model.named_children())
    return lambda p: p if wrapped else f"text_model.{p}"


def clip_bigg_hf(seed: int) -> nn.Module:
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return randomize_(CLIPTextModelWithProjection(make_clip_l().config), std=0.02)


def _context(model, tokenizer, last: bool = True):
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    if last:
        return out.last_hidden_state
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return torch.cat([out.hidden_states[-2].flatten(1), pooled], 1)      # SDXL uses the penultimate + pooled


def test_kohya_sd1_text_encoder_lora(sd15_unet, sd15_folder, tokenizer, capsys):
    import copy

    clip = make_clip_l(seed=11)
    ref = copy.deepcopy(clip)
    enc = SD15TextEncoder(tokenizer, clip)
    lora_t = random_lora(ref, TEXT_TARGETS, seed=12)
    lora_u = random_lora(sd15_unet, r"attn2\.to_k$", seed=13)
    sd = {**kohya_file(lora_t, hub_path(ref), prefix="lora_te_"), **kohya_file(lora_u, lambda p: p)}
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in sd       # §6 example name
    model = load_video_unet(sd15_folder, verbose=False)
    base = enc(PROMPTS)["context"]
    assert merge_lora(model, sd, scale=0.7, text_encoder=enc) == len(lora_u)
    assert f"{len(lora_t)} text_encoder layers" in capsys.readouterr().out
    with hooked(ref, lora_t, kohya_factor, 0.7):
        want = _context(ref, tokenizer)
    _check(enc(PROMPTS)["context"], want, base)


@pytest.mark.parametrize("layout", ["kohya", "peft", "old_diffusers"])
def test_sdxl_text_encoder_lora(tokenizer, tmp_path, layout):
    import copy

    models = {"text_encoder": make_clip_l(seed=21), "text_encoder_2": clip_bigg_hf(seed=22)}
    refs = {role: copy.deepcopy(m) for role, m in models.items()}
    enc = SDXLTextEncoder(tokenizer, models["text_encoder"], tokenizer, models["text_encoder_2"])
    loras = {role: random_lora(refs[role], TEXT_TARGETS, seed=23 + i) for i, role in enumerate(refs)}
    sd, meta = {}, None
    factor_of = {"text_encoder": kohya_factor, "text_encoder_2": kohya_factor}
    for role, lora in loras.items():
        name_of = hub_path(refs[role])
        if layout == "kohya":
            prefix = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[role]
            sd.update(kohya_file(lora, name_of, prefix=prefix))
            continue
        for path, (down, up, _) in lora.items():
            a, b = ("lora_A.weight", "lora_B.weight") if layout == "peft" else \
                ("lora_linear_layer.down.weight", "lora_linear_layer.up.weight")
            sd[f"{role}.{name_of(path)}.{a}"], sd[f"{role}.{name_of(path)}.{b}"] = down, up
    if layout == "peft":   # per-component lora_alpha: factor 2 for CLIP-L, 0.5 for bigG
        meta = {"lora_adapter_metadata": json.dumps({"text_encoder.r": RANK, "text_encoder.lora_alpha": 8,
                                                     "text_encoder_2.r": RANK, "text_encoder_2.lora_alpha": 2})}
        factor_of = {"text_encoder": lambda a: 2.0, "text_encoder_2": lambda a: 0.5}
    elif layout == "old_diffusers":
        factor_of = {role: (lambda a: 1.0) for role in refs}
    save_file(sd, str(tmp_path / "te.safetensors"), metadata=meta)
    base = {role: _context(m, tokenizer, last=False) for role, m in models.items()}
    assert merge_lora(nn.Linear(1, 1), tmp_path / "te.safetensors", text_encoder=enc, verbose=False) == 0
    for role, ref in refs.items():
        with hooked(ref, loras[role], factor_of[role], 1.0):
            want = _context(ref, tokenizer, last=False)
        _check(_context(models[role], tokenizer, last=False), want, base[role])


def test_text_lora_errors_merge_nothing(sd15_unet, sd15_folder, tokenizer, capsys):
    from i2v.models.toy import ToyTextEncoder

    clip = make_clip_l(seed=31)
    enc = SD15TextEncoder(tokenizer, clip)
    lora_u = random_lora(sd15_unet, r"attn2\.to_k$", seed=32)
    te2 = kohya_file(random_lora(clip, r"layers\.0\.mlp\.fc1$", seed=33), hub_path(clip), prefix="lora_te2_")
    model = load_video_unet(sd15_folder, verbose=False)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (model, clip)]
    with pytest.raises(KeyMapError, match=r"text_encoder_2 \(lora_te2_\*\) but the text encoder has "
                                          r"\['text_encoder'\]"):
        merge_lora(model, {**kohya_file(lora_u, lambda p: p), **te2}, text_encoder=enc)
    unknown = {"lora_te_text_model_encoder_layers_9_mlp_fc1.lora_down.weight": torch.zeros(RANK, 128),
               "lora_te_text_model_encoder_layers_9_mlp_fc1.lora_up.weight": torch.zeros(512, RANK)}
    with pytest.raises(KeyMapError, match="match no module of the text_encoder"):
        merge_lora(model, {**kohya_file(lora_u, lambda p: p), **unknown}, text_encoder=enc)
    for m, b in zip((model, clip), before):
        assert all(torch.equal(b[k], v) for k, v in m.state_dict().items())
    merge_lora(model, {**kohya_file(lora_u, lambda p: p), **unknown}, text_encoder=ToyTextEncoder())
    assert "skipped 2 text-encoder LoRA tensors (no CLIP text encoder given)" in capsys.readouterr().out
