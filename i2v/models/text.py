"""CLIP text encoders (frozen) implementing the ``TextEncoder`` protocol, from local diffusers-style folders (or,
through :mod:`i2v.pipeline.sd`, from a single-file checkpoint's own text-encoder weights).

SD1.5 (reference §1.7): CLIP ViT-L/14 text, context = ``last_hidden_state`` ``(B, 77, 768)``.
SDXL (reference §2): context = CLIP-L ``hidden_states[-2]`` ⊕ OpenCLIP bigG ``hidden_states[-2]`` =
``(B, 77, 2048)``, pooled = bigG ``text_embeds`` ``(B, 1280)``; plus :func:`sdxl_time_ids` for the ``time_ids``
micro-conditioning.
:func:`write_clip_tokenizer` writes the real CLIP BPE tokenizer files from open_clip's bundled vocabulary (offline).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from i2v.models.protocols import TextOutput

PathLike = Union[str, Path]
_HINT = ("a diffusers pipeline folder's `text_encoder/` (config.json + model.safetensors) and `tokenizer/` "
         "(vocab.json + merges.txt), e.g. from stable-diffusion-v1-5 or stable-diffusion-xl-base-1.0 "
         "(SDXL adds `text_encoder_2/` and `tokenizer_2/`)")


def write_clip_tokenizer(folder: PathLike, max_length: int = 77, pad_token: str = "<|endoftext|>") -> Path:
    """Write ``vocab.json`` (49408 entries), ``merges.txt`` and ``tokenizer_config.json`` of the CLIP BPE tokenizer,
    built from open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz`` exactly as CLIP's ``SimpleTokenizer`` does."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length, "pad_token": pad_token}))
    return folder


def _check_folder(folder: PathLike, needs: Sequence[str], role: str) -> Path:
    folder = Path(folder)
    missing = [n for n in needs if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{role}: {folder} lacks {missing}; expected {_HINT}")
    return folder


def load_tokenizer(folder: PathLike):
    """transformers ``CLIPTokenizer`` from a local folder (``vocab.json`` + ``merges.txt``)."""
    from transformers import CLIPTokenizer

    folder = _check_folder(folder, ["vocab.json", "merges.txt"], "tokenizer")
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def load_text_model(folder: PathLike, with_projection: bool, dtype: torch.dtype) -> nn.Module:
    """``CLIPTextModel`` (or ``CLIPTextModelWithProjection``) from a diffusers ``text_encoder*/`` folder."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = _check_folder(folder, ["config.json"], "text encoder")
    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    if not any((folder / n).is_file() for n in weights):
        raise FileNotFoundError(f"text encoder: {folder} has no model.safetensors / pytorch_model.bin; "
                                f"expected {_HINT}")
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype)


def _tokenize(tokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(device)


class SD15TextEncoder(nn.Module):
    """SD1.5 text encoder: ``prompts`` -> ``{"context": (B, 77, 768), "pooled": None}``."""

    def __init__(self, tokenizer, text_model: nn.Module):
        super().__init__()
        self.tokenizer, self.text_model = tokenizer, text_model
        self.requires_grad_(False).eval()

    @classmethod
    def from_folders(cls, text_encoder: PathLike, tokenizer: PathLike,
                     dtype: torch.dtype = torch.float32) -> "SD15TextEncoder":
        return cls(load_tokenizer(tokenizer), load_text_model(text_encoder, False, dtype))

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> TextOutput:
        ids = _tokenize(self.tokenizer, prompts, self.text_model.device)
        return TextOutput(context=self.text_model(input_ids=ids).last_hidden_state, pooled=None)


class SDXLTextEncoder(nn.Module):
    """SDXL: ``prompts`` -> ``{"context": (B, 77, 768 + 1280), "pooled": (B, 1280)}`` (penultimate layers, no
    final LayerNorm; pooled = bigG ``text_embeds``)."""

    def __init__(self, tokenizer, text_model: nn.Module, tokenizer_2, text_model_2: nn.Module):
        super().__init__()
        self.tokenizer, self.text_model = tokenizer, text_model
        self.tokenizer_2, self.text_model_2 = tokenizer_2, text_model_2
        self.requires_grad_(False).eval()

    @classmethod
    def from_folders(cls, text_encoder: PathLike, tokenizer: PathLike, text_encoder_2: PathLike,
                     tokenizer_2: PathLike, dtype: torch.dtype = torch.float32) -> "SDXLTextEncoder":
        return cls(load_tokenizer(tokenizer), load_text_model(text_encoder, False, dtype),
                   load_tokenizer(tokenizer_2), load_text_model(text_encoder_2, True, dtype))

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> TextOutput:
        out1 = self.text_model(input_ids=_tokenize(self.tokenizer, prompts, self.text_model.device),
                               output_hidden_states=True)
        out2 = self.text_model_2(input_ids=_tokenize(self.tokenizer_2, prompts, self.text_model_2.device),
                                 output_hidden_states=True)
        context = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2].to(out1.hidden_states[-2].device)], dim=-1)
        return TextOutput(context=context, pooled=out2.text_embeds.to(context.device))


def load_text_encoder(backbone: str, root: PathLike, dtype: torch.dtype = torch.float32) -> nn.Module:
    """From a diffusers pipeline folder ``root`` (``text_encoder/``, ``tokenizer/`` [+ ``_2``]); backbone sd15|sdxl."""
    root = Path(root)
    if backbone == "sd15":
        return SD15TextEncoder.from_folders(root / "text_encoder", root / "tokenizer", dtype)
    if backbone == "sdxl":
        return SDXLTextEncoder.from_folders(root / "text_encoder", root / "tokenizer", root / "text_encoder_2",
                                            root / "tokenizer_2", dtype)
    raise ValueError(f"load_text_encoder: backbone must be 'sd15' or 'sdxl', got {backbone!r}")


def _as_pairs(v: Union[Sequence[int], torch.Tensor], batch: Optional[int]) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32)
    if t.ndim == 1:
        if t.shape[0] != 2:
            raise ValueError(f"expected an (h, w) pair, got {tuple(t.shape)}")
        t = t.unsqueeze(0).expand(batch or 1, 2)
    if t.ndim != 2 or t.shape[1] != 2:
        raise ValueError(f"expected (2,) or (B, 2), got {tuple(t.shape)}")
    return t


def sdxl_time_ids(orig_hw: Union[Sequence[int], torch.Tensor], crop_tl: Union[Sequence[int], torch.Tensor],
                  target_hw: Union[Sequence[int], torch.Tensor], batch: Optional[int] = None,
                  device: Optional[torch.device] = None) -> torch.Tensor:
    """SDXL micro-conditioning ``(B, 6)`` = (orig_h, orig_w, crop_top, crop_left, target_h, target_w), float32.
    Each argument is an ``(h, w)`` pair (broadcast to ``batch``) or a ``(B, 2)`` tensor."""
    parts = [_as_pairs(v, batch) for v in (orig_hw, crop_tl, target_hw)]
    b = max(p.shape[0] for p in parts)
    if any(p.shape[0] not in (1, b) for p in parts):
        raise ValueError(f"sdxl_time_ids: batch sizes {[p.shape[0] for p in parts]} do not broadcast")
    return torch.cat([p.expand(b, 2) for p in parts], dim=1).to(device)
