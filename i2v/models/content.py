"""Content-Adapter = pretrained IP-Adapter (Ye et al. 2023), frozen: image projection models, the decoupled
cross-attention processor on every spatial ``attn2``, and the CLIP image encoder wrapper (paper §3.2).

Image tokens ``(B, N, d)`` are appended after the text tokens of the context; the processor splits off the last
``N`` and returns ``to_out(Attn(q, K_txt, V_txt) + scale · Attn(q, K_ip, V_ip))`` with the same query and heads.
Projection variants (reference §5.3): base ``ImageProjModel`` (image_embeds → 4 tokens), Plus ``Resampler``
(penultimate hidden states → 16 tokens), full-face ``MLPProjModel`` (penultimate → 257 tokens).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from i2v.models.attention import Attention, spatial_attention_layers
from i2v.models.protocols import ImageFeatures

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------------------------- projection models
class ImageProjModel(nn.Module):
    """Base IP-Adapter: ``proj`` Linear(E → N·d) + ``norm`` LayerNorm(d). image_embeds ``(B, E)`` -> ``(B, N, d)``."""

    input_key, kind = "image_embeds", "base"

    def __init__(self, clip_dim: int = 1024, cross_dim: int = 768, num_tokens: int = 4):
        super().__init__()
        self.clip_dim, self.num_tokens = clip_dim, num_tokens
        self.proj = nn.Linear(clip_dim, num_tokens * cross_dim)
        self.norm = nn.LayerNorm(cross_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        x = self.proj(image_embeds.to(self.proj.weight.dtype))
        return self.norm(rearrange(x, "b (n d) -> b n d", n=self.num_tokens))


class MLPProjModel(nn.Module):
    """Full-face IP-Adapter: ``proj`` = Linear(W,W), GELU, Linear(W,d), LayerNorm(d). ``(B, T, W)`` -> ``(B, T, d)``."""

    input_key, kind = "penultimate", "full"

    def __init__(self, clip_dim: int = 1280, cross_dim: int = 768):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(clip_dim, clip_dim), nn.GELU(), nn.Linear(clip_dim, cross_dim),
                                  nn.LayerNorm(cross_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.to(self.proj[0].weight.dtype))


class PerceiverAttention(nn.Module):
    """Latents attend to concat(x, latents). x ``(B, T, D)``, latents ``(B, Q, D)`` -> ``(B, Q, D)``."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (rearrange(a, "b t (h d) -> b h t d", h=self.heads) for a in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h t d -> b t (h d)"))


class Resampler(nn.Module):
    """IP-Adapter Plus resampler (keys ``latents``, ``proj_in``, ``layers.k.{0,1}``, ``proj_out``, ``norm_out``).
    penultimate hidden states ``(B, T, E)`` -> ``(B, Q, d_out)``."""

    input_key, kind = "penultimate", "plus"

    def __init__(self, dim: int = 768, depth: int = 4, dim_head: int = 64, heads: int = 12, num_queries: int = 16,
                 embedding_dim: int = 1280, output_dim: int = 768, ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / math.sqrt(dim))
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, dim_head, heads),
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                              nn.Linear(dim * ff_mult, dim, bias=False)),
            ]) for _ in range(depth))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(hidden.to(self.proj_in.weight.dtype))
        latents = self.latents.expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


ImageProj = Union[ImageProjModel, MLPProjModel, Resampler]


def image_tokens(image_proj: ImageProj, features: ImageFeatures) -> torch.Tensor:
    """Image tokens ``(B, N, d)`` from encoder features (``image_embeds`` or ``penultimate`` per variant)."""
    return image_proj(features[image_proj.input_key])


def uncond_image_tokens(image_proj: ImageProj, encoder: Optional["ClipImageEncoder"], batch: int) -> torch.Tensor:
    """Unconditional image tokens ``(B, N, d)`` (reference §5.4, as the official IP-Adapter code): base =
    ``proj(zeros)``; Plus / full-face = the encoder run on an all-zero *preprocessed* image (``zeros_like(clip_image)``)."""
    p = next(image_proj.parameters())
    if isinstance(image_proj, ImageProjModel):
        return image_proj(torch.zeros(batch, image_proj.clip_dim, device=p.device, dtype=p.dtype))
    if encoder is None:
        raise ValueError(f"{type(image_proj).__name__} needs the image encoder for its unconditional tokens")
    return image_tokens(image_proj, encoder.uncond_features(batch, p.device))


# --------------------------------------------------------------------------------------- decoupled cross-attention
class IPAdapterProcessor:
    """attn2 processor: context ``(N, L_txt + n_img, d)``; the last ``num_tokens`` are image tokens."""

    def __init__(self, num_tokens: int, scale: float = 1.0):
        self.num_tokens, self.scale = num_tokens, scale

    def __call__(self, attn: Attention, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                 num_frames: Optional[int] = None) -> torch.Tensor:
        n = self.num_tokens
        if context is None or context.shape[1] <= n:
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"IP-Adapter attn2 expects text tokens followed by {n} image tokens, got context {got}")
        text, img = context[:, :-n], context[:, -n:]
        q = attn.to_q(x)
        h = attn.attend(q, attn.to_k(text), attn.to_v(text))
        if self.scale != 0:
            h = h + self.scale * attn.attend(q, attn.to_k_ip(img), attn.to_v_ip(img))
        return attn.project_out(h)


def attach_ip_adapter(unet: nn.Module, num_tokens: int, scale: float = 1.0) -> list[str]:
    """Register frozen ``to_k_ip``/``to_v_ip`` (Linear d→C, no bias, initialised as copies of ``to_k``/``to_v``)
    on every spatial ``attn2`` and set the processor. Returns the attn2 names in ``named_modules`` order."""
    names = []
    for qual, attn in spatial_attention_layers(unet, "attn2"):
        for src, dst in (("to_k", "to_k_ip"), ("to_v", "to_v_ip")):
            w = getattr(attn, src).weight
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
            lin.requires_grad_(False)
            setattr(attn, dst, lin)
        attn.processor = IPAdapterProcessor(num_tokens, scale)
        names.append(qual)
    if not names:
        raise ValueError("attach_ip_adapter: the model has no spatial attn2 layers")
    return names


def _ip_processors(unet: nn.Module) -> list[IPAdapterProcessor]:
    procs = [a.processor for _, a in spatial_attention_layers(unet, "attn2") if isinstance(a.processor, IPAdapterProcessor)]
    if not procs:
        raise ValueError("no IP-Adapter attached (call attach_ip_adapter or load_ip_adapter first)")
    return procs


def set_ip_scale(unet: nn.Module, scale: float) -> None:
    """Set the image-branch scale of every IP-Adapter processor (0 = text-only output)."""
    for p in _ip_processors(unet):
        p.scale = float(scale)


def detach_ip_adapter(unet: nn.Module) -> None:
    """Remove ``to_k_ip``/``to_v_ip`` and the processors (restores plain cross-attention)."""
    _ip_processors(unet)
    for _, attn in spatial_attention_layers(unet, "attn2"):
        if isinstance(attn.processor, IPAdapterProcessor):
            del attn.to_k_ip, attn.to_v_ip
            attn.processor = None


# ------------------------------------------------------------------------------------------------- image encoder
_ENCODER_HINT = ("an IP-Adapter image encoder: h94/IP-Adapter `models/image_encoder/` (ViT-H-14, config.json + "
                 "model.safetensors) or `sdxl_models/image_encoder/` (bigG), or an open_clip weights file such as "
                 "laion/CLIP-ViT-H-14-laion2B-s32B-b79K `open_clip_pytorch_model.bin`")


class ClipImageEncoder(nn.Module):
    """Frozen CLIP vision tower (transformers ``CLIPVisionModelWithProjection`` folder or open_clip ``visual``).

    ``forward(images (B, 3, H, W) in [-1, 1]) -> ImageFeatures``: ``image_embeds (B, E)`` (projected, not normalised),
    ``penultimate (B, 1 + P, W)`` = ``hidden_states[-2]`` (output of the second-to-last block, no post-LN)."""

    def __init__(self, model: nn.Module, backend: str, image_size: int = 224):
        super().__init__()
        if backend not in ("hf", "open_clip"):
            raise ValueError(f"backend must be 'hf' or 'open_clip', got {backend!r}")
        self.model, self.backend, self.image_size = model, backend, image_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @classmethod
    def from_local(cls, path: Optional[Union[str, Path]], arch: str = "ViT-H-14", device: str = "cpu",
                   dtype: torch.dtype = torch.float32) -> "ClipImageEncoder":
        """A transformers folder (``config.json`` inside) or an open_clip weights file for ``arch``
        (``ViT-H-14`` / ``ViT-bigG-14``). ``path=None`` with ``device="meta"`` builds the open_clip tower empty."""
        if path is None:
            if device != "meta":
                raise ValueError("ClipImageEncoder.from_local: path=None is only allowed with device='meta'")
            import open_clip

            with torch.device("meta"):
                model = open_clip.create_model(arch, pretrained=None, device="meta")
            return cls(model.visual, "open_clip", model.visual.image_size[0])
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"image encoder not found at {path}; expected {_ENCODER_HINT}")
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path} has no config.json; expected {_ENCODER_HINT}")
            from transformers import CLIPVisionModelWithProjection

            model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True, dtype=dtype)
            return cls(model.to(device), "hf", model.config.image_size)
        import open_clip

        model = open_clip.create_model(arch, pretrained=str(path), device=device, precision="fp32")
        return cls(model.visual.to(dtype), "open_clip", model.visual.image_size[0])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP preprocessing: ``(B, 3, H, W)`` in [-1, 1] -> short side to ``image_size`` (bicubic), center crop,
        mean/std normalisation -> ``(B, 3, S, S)``."""
        s = self.image_size
        x = (images.float() + 1) / 2
        h, w = x.shape[-2:]
        nh, nw = (s, max(s, int(s * w / h))) if h <= w else (max(s, int(s * h / w)), s)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - s) // 2, (nw - s) // 2
        x = x[..., top:top + s, left:left + s]
        return ((x - self.mean) / self.std).to(self.dtype)

    @torch.no_grad()
    def encode_preprocessed(self, pixel_values: torch.Tensor) -> ImageFeatures:
        """Already normalised ``(B, 3, S, S)`` -> ImageFeatures."""
        if self.backend == "hf":
            out = self.model(pixel_values=pixel_values, output_hidden_states=True)
            return ImageFeatures(image_embeds=out.image_embeds, penultimate=out.hidden_states[-2])
        vis = self.model
        n = len(vis.transformer.resblocks)
        out = vis.forward_intermediates(pixel_values, indices=[n - 2], output_fmt="NLC", output_extra_tokens=True)
        pen = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
        return ImageFeatures(image_embeds=out["image_features"], penultimate=pen)

    def uncond_features(self, batch: int, device: Optional[torch.device] = None) -> ImageFeatures:
        """Features of an all-zero *preprocessed* image (official IP-Adapter ``zeros_like(clip_image)``)."""
        s = self.image_size
        return self.encode_preprocessed(torch.zeros(batch, 3, s, s, device=device, dtype=self.dtype))

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        return self.encode_preprocessed(self.preprocess(images))
