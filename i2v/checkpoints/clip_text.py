"""Text encoders inside original single-file SD1.5 / SDXL checkpoints (reference/checkpoints.md §1.1, §2).

A DreamBooth-style single file carries its own (often fine-tuned) text encoder(s) next to the UNet and VAE:

- SD1.5: ``cond_stage_model.transformer.text_model.*`` = CLIP ViT-L/14 text in Hugging Face names (old merges
  lack the ``text_model.`` level; it is inserted). ``…embeddings.position_ids`` is dropped and regenerated.
- SDXL: ``conditioner.embedders.0.transformer.text_model.*`` = CLIP-L (HF names) -> ``text_encoder``;
  ``conditioner.embedders.1.model.*`` = OpenCLIP bigG text in open_clip names -> ``text_encoder_2``
  (``in_proj`` split by rows into q/k/v, ``text_projection.weight = text_projection.T``; ``logit_scale`` and
  ``attn_mask`` ignored).

:func:`single_file_text_to_hf` turns the split-off tensors into HF ``CLIPTextModel`` /
``CLIPTextModelWithProjection`` state dicts (canonical ``text_model.*`` names), :func:`infer_clip_text_config`
reads a config off their shapes (release rules: head dim 64, quick-GELU for CLIP-L, GELU for bigG), and
:func:`load_clip_text_state` loads one strictly into a transformers model.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import nn

from .common import CheckpointError, KeyMapError, check_keys, read_checkpoint
from .ldm import TEXT_PREFIXES

SD15_CLIP = "cond_stage_model.transformer."
SDXL_CLIP_L = "conditioner.embedders.0.transformer."
SDXL_BIGG = "conditioner.embedders.1.model."
SD2_OPENCLIP = "cond_stage_model.model."
POSITION_IDS = "text_model.embeddings.position_ids"
OPENCLIP_IGNORED = ("logit_scale", "attn_mask")
_BIGG_RENAMES = (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
                 ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))
# the activation of each role (not visible in shapes): CLIP ViT-L/14 quick-GELU, OpenCLIP bigG GELU
ROLE_ACT = {"text_encoder": "quick_gelu", "text_encoder_2": "gelu"}


def _hf_clip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF-named CLIP text tensors under ``prefix`` -> canonical ``text_model.*`` keys (position_ids dropped)."""
    out = {}
    for key, val in sd.items():
        rest = key[len(prefix):]
        rest = rest if rest.startswith("text_model.") else "text_model." + rest      # old merges: §1.1
        if rest != POSITION_IDS:
            out[rest] = val
    return out


def openclip_text_to_hf(sd: Mapping[str, torch.Tensor], source: object = None) -> dict[str, torch.Tensor]:
    """open_clip text-tower tensors (prefix stripped: ``token_embedding.weight``, ``transformer.resblocks.N.*``,
    ``ln_final.*``, ``text_projection``) -> ``CLIPTextModelWithProjection`` names (reference §2)."""
    out, bad = {}, []
    for key, val in sd.items():
        if key in OPENCLIP_IGNORED:
            continue
        if key == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = val
        elif key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = val
        elif key == "text_projection":
            out["text_projection.weight"] = val.t().contiguous()                  # [width, proj] -> [proj, width]
        elif key.startswith("ln_final."):
            out["text_model.final_layer_norm." + key[len("ln_final."):]] = val
        elif m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key):
            layer, rest = f"text_model.encoder.layers.{m.group(1)}.", m.group(2)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                if val.shape[0] % 3:
                    bad.append(f"{key} {tuple(val.shape)} (rows not divisible by 3)")
                    continue
                for name, part in zip(("q_proj", "k_proj", "v_proj"), val.chunk(3, dim=0)):
                    out[f"{layer}self_attn.{name}.{kind}"] = part.contiguous()
                continue
            for old, new in _BIGG_RENAMES:
                if rest.startswith(old):
                    out[layer + new + rest[len(old):]] = val
                    break
            else:
                bad.append(key)
        else:
            bad.append(key)
    if bad:
        raise KeyMapError("OpenCLIP text keys outside the known layout", fmt="sgm text (open_clip)", source=source,
                          unexpected=sorted(bad))
    return out


def single_file_text_to_hf(text: Mapping[str, torch.Tensor],
                           source: object = None) -> dict[str, dict[str, torch.Tensor]]:
    """The ``cond_stage_model.*`` / ``conditioner.*`` tensors of a single file (full names, as in
    :attr:`i2v.checkpoints.ldm.LdmParts.text`) -> ``{"text_encoder": sd[, "text_encoder_2": sd]}`` in HF names.
    Empty input gives ``{}``. SD2.x OpenCLIP-H and unknown embedders are refused by name."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    bad = []
    for key, val in text.items():
        for prefix in (SD15_CLIP, SDXL_CLIP_L, SDXL_BIGG):
            if key.startswith(prefix):
                groups.setdefault(prefix, {})[key] = val
                break
        else:
            bad.append(key)
    if any(k.startswith(SD2_OPENCLIP) for k in bad):
        raise CheckpointError(f"{source}: the text encoder is SD2.x OpenCLIP-H ({SD2_OPENCLIP}*), which this "
                              f"project does not load; only SD1.5 and SDXL single files are supported")
    if bad:
        raise KeyMapError("text-encoder keys outside the SD1.5 / SDXL layouts", fmt="ldm text", source=source,
                          unexpected=sorted(bad))
    if SD15_CLIP in groups and len(groups) > 1:
        raise CheckpointError(f"{source}: holds both SD1.5 ({SD15_CLIP}*) and SDXL (conditioner.*) text encoders")
    out = {}
    if SD15_CLIP in groups:
        out["text_encoder"] = _hf_clip(groups[SD15_CLIP], SD15_CLIP)
    if SDXL_CLIP_L in groups:
        out["text_encoder"] = _hf_clip(groups[SDXL_CLIP_L], SDXL_CLIP_L)
    if SDXL_BIGG in groups:
        bigg = {k[len(SDXL_BIGG):]: v for k, v in groups[SDXL_BIGG].items()}
        out["text_encoder_2"] = openclip_text_to_hf(bigg, source)
    return out


def read_single_file_text(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Only the text-encoder tensors of a single file (a ``.safetensors`` file reads just those; a pickle is
    read whole with ``torch.load(weights_only=True)`` and filtered)."""
    return read_checkpoint(path, TEXT_PREFIXES).tensors


def infer_clip_text_config(sd: Mapping[str, torch.Tensor], role: str, source: object = None):
    """``CLIPTextConfig`` from canonical HF tensors: sizes from shapes, heads = width / 64 (CLIP-L 12, bigG 20),
    activation by role (:data:`ROLE_ACT`), ``eos_token_id=2`` (the hub configs' value: pool at the argmax id)."""
    from transformers import CLIPTextConfig

    try:
        vocab, width = sd["text_model.embeddings.token_embedding.weight"].shape
        positions = sd["text_model.embeddings.position_embedding.weight"].shape[0]
        inter = sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise KeyMapError(f"{role}: cannot infer the CLIP text config", fmt="ldm text", source=source,
                          missing=[e.args[0]]) from None
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)))
    if width % 64:
        raise CheckpointError(f"{source}: {role} width {width} is not a multiple of 64 (the CLIP head size); "
                              f"set backbone.{role}=<folder with config.json> to give its config")
    proj = sd["text_projection.weight"].shape[0] if "text_projection.weight" in sd else width
    return CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=inter, num_hidden_layers=layers,
                          num_attention_heads=width // 64, max_position_embeddings=positions,
                          hidden_act=ROLE_ACT[role], projection_dim=proj, bos_token_id=0, eos_token_id=2,
                          pad_token_id=1)


def load_clip_text_state(model: nn.Module, sd: Mapping[str, torch.Tensor], *, fmt: str, source: object) -> int:
    """Load canonical tensors into a transformers CLIP text model strictly (every tensor used, every weight
    filled). transformers versions differ in whether ``CLIPTextModel``'s own keys carry ``text_model.``; the
    names are matched to the model's. A persistent ``position_ids`` buffer is regenerated as ``arange``."""
    own = model.state_dict()
    sd = dict(sd)
    if not any(k.startswith("text_model.") for k in own):
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    for key in [k for k in own if k.endswith("embeddings.position_ids")]:
        sd[key] = torch.arange(own[key].shape[-1]).expand_as(own[key]).clone()
    check_keys(own, sd, fmt=fmt, source=source)
    model.load_state_dict(sd, strict=True)
    return len(sd)


def clip_text_model_from_state(sd: Mapping[str, torch.Tensor], role: str, *, config=None,
                               source: object = None) -> nn.Module:
    """A frozen ``CLIPTextModel`` (``text_encoder``) or ``CLIPTextModelWithProjection`` (``text_encoder_2``)
    holding ``sd``; ``config`` (a ``CLIPTextConfig``) defaults to :func:`infer_clip_text_config`."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if role not in ROLE_ACT:
        raise ValueError(f"role must be one of {list(ROLE_ACT)}, got {role!r}")
    config = config if config is not None else infer_clip_text_config(sd, role, source)
    cls = CLIPTextModelWithProjection if role == "text_encoder_2" else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device="cpu")
    for name, buf in model.named_buffers():        # non-persistent buffers are not in any state dict
        if name.endswith("position_ids"):
            buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
    load_clip_text_state(model, sd, fmt=f"single-file {role}", source=source)
    return model.requires_grad_(False).eval()


def read_text_config(folder: Union[str, Path, None]):
    """``CLIPTextConfig`` from ``folder/config.json``, or ``None`` when ``folder`` is ``None``."""
    if folder is None:
        return None
    from transformers import CLIPTextConfig

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text encoder config: {folder} has no config.json")
    return CLIPTextConfig.from_pretrained(str(folder), local_files_only=True)


__all__ = ["single_file_text_to_hf", "openclip_text_to_hf", "read_single_file_text", "infer_clip_text_config",
           "load_clip_text_state", "clip_text_model_from_state", "read_text_config", "ROLE_ACT"]
