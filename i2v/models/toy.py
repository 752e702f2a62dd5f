"""Toy-world encoders and codecs (DESIGN.md "Toy world"): tiny CPU stand-ins for CLIP text/vision and the VAE.

* :class:`ToyTextEncoder` -- open_clip's offline BPE tokenizer (bundled vocab file, no hub) + a 2-layer width-64
  causal transformer. Implements ``TextEncoder``: ``context`` ``(B, L, 64)``, ``pooled`` = EOS-token state ``(B, 64)``.
* :class:`ToyImageEncoder` -- a 3-block ViT on 32x32 (patch 4 -> 64 tokens + CLS). Implements ``ImageEncoder`` with
  the same kinds of outputs as open_clip ViT-H/14, so the real IP-Adapter projections apply unchanged.
* :class:`IdentityCodec` (toy default, pixel space) and :class:`PatchCodec` (fixed invertible 2x2 space-to-depth)
  implement ``LatentCodec``.

Hashed vocabulary: CLIP's 49,408 BPE ids would need a 12.6 MB embedding, so the toy keeps ``vocab_rows`` (4,096)
rows: 0 = padding (every position after EOS), 1 = SOT, 2 = EOS, then two tables of prime sizes p < q (2,029 and
2,039 for 4,096 rows). An ordinary BPE id ``i`` embeds as ``E[3 + i % p] + E[3 + p + i % q]``; since p·q > 49,408 the
row pair is unique for every id (Chinese remainder theorem), so no two tokens share an embedding. (A single
``i % 4093`` table would merge e.g. "green" and "background".) Special rows are looked up twice, i.e. ``2·E[row]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .protocols import ImageFeatures, TextOutput


@dataclass
class ToyTextConfig:
    context_length: int = 16     # tokens incl. SOT/EOS; longer prompts are truncated (EOS kept last)
    vocab_rows: int = 4096       # hashed embedding rows (see module docstring)
    width: int = 64
    layers: int = 2
    heads: int = 4
    seed: int = 0


@dataclass
class ToyImageConfig:
    image_size: int = 32         # inputs are resized to image_size x image_size
    patch: int = 4
    width: int = 64
    layers: int = 3
    heads: int = 4
    embed_dim: int = 64          # size of ``image_embeds``
    seed: int = 0


class _Block(nn.Module):
    """Pre-LN transformer block (open_clip names: ln_1, attn.in_proj/out_proj, ln_2, mlp.c_fc/c_proj)."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.causal = heads, causal
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.ModuleDict({"in_proj": nn.Linear(width, 3 * width), "out_proj": nn.Linear(width, width)})
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(width, 4 * width), "c_proj": nn.Linear(4 * width, width)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(B, T, W)`` -> ``(B, T, W)``."""
        q, k, v = rearrange(self.attn["in_proj"](self.ln_1(x)), "b t (three h d) -> three b h t d",
                            three=3, h=self.heads)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.attn["out_proj"](rearrange(y, "b h t d -> b t (h d)"))
        return x + self.mlp["c_proj"](F.gelu(self.mlp["c_fc"](self.ln_2(x))))


def _seeded_init(module: nn.Module, seed: int, std: dict[str, float]) -> None:
    """Deterministic init independent of the global RNG: LayerNorm 1/0, biases 0, Linear/Conv weights
    N(0, 1/fan_in), and every parameter named in ``std`` N(0, std[name]). Parameters are visited by name."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            leaf = name.rsplit(".", 1)[-1]
            if name in std:
                p.copy_(torch.randn(p.shape, generator=g) * std[name])
            elif ".ln" in f".{name}" and leaf == "weight":
                p.fill_(1.0)
            elif leaf == "bias":
                p.zero_()
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def _two_primes(n: int) -> tuple[int, int]:
    """Primes p < q <= n // 2 (so p + q < n): the hash tables' sizes; (2029, 2039) for n = 4093."""
    primes = [k for k in range(n // 2, 1, -1) if all(k % d for d in range(2, int(k ** 0.5) + 1))][:2]
    if len(primes) < 2:
        raise ValueError(f"vocab table of {n} rows is too small for two hash tables")
    return primes[1], primes[0]


class ToyTextEncoder(nn.Module):
    """``__call__(prompts: list[str]) -> {"context": (B, L, W), "pooled": (B, W)}``; ``""`` (CFG) works."""

    def __init__(self, cfg: Optional[ToyTextConfig] = None):
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer  # bundled bpe_simple_vocab_16e6.txt.gz, no network

        self.cfg = cfg = cfg or ToyTextConfig()
        if cfg.context_length < 2:
            raise ValueError(f"ToyTextConfig needs context_length >= 2, got {cfg}")
        self.tokenizer = SimpleTokenizer(context_length=cfg.context_length)
        self.sot_id, self.eot_id = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        self.primes = _two_primes(cfg.vocab_rows - 3)
        if self.primes[0] * self.primes[1] < self.tokenizer.vocab_size:
            raise ValueError(f"vocab_rows={cfg.vocab_rows} too small for unique hashed pairs over "
                             f"{self.tokenizer.vocab_size} BPE ids (need about 450 or more)")
        self.token_embedding = nn.Embedding(cfg.vocab_rows, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.blocks = nn.ModuleList(_Block(cfg.width, cfg.heads, causal=True) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(cfg.width)
        _seeded_init(self, cfg.seed, {"token_embedding.weight": 0.7, "positional_embedding": 0.1})

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """BPE ids ``(B, L)`` (int64): SOT, tokens, EOS, zeros; truncated to L with EOS last."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"ToyTextEncoder expects a list of strings, got {type(prompts).__name__}")
        return self.tokenizer(list(prompts))

    def token_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding row pairs ``(..., 2)`` for BPE ids ``(...)``: SOT ``(1, 1)``, EOS ``(2, 2)``, any other id ``i``
        ``(3 + i % p, 3 + p + i % q)``. Padding (row 0) is applied by position in :meth:`forward`."""
        p, q = self.primes
        rows = torch.stack([3 + ids % p, 3 + p + ids % q], dim=-1)
        for tok, row in ((self.sot_id, 1), (self.eot_id, 2)):
            rows = torch.where((ids == tok)[..., None], torch.full_like(rows, row), rows)
        return rows

    def forward(self, prompts: list[str]) -> TextOutput:
        ids = self.tokenize(prompts).to(self.positional_embedding.device)
        eos_pos = (ids == self.eot_id).int().argmax(dim=-1)
        rows = self.token_rows(ids)
        after_eos = torch.arange(ids.shape[1], device=ids.device)[None, :, None] > eos_pos[:, None, None]
        rows = rows.masked_fill(after_eos, 0)
        x = self.token_embedding(rows).sum(dim=2) + self.positional_embedding
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eos_pos]
        return {"context": x, "pooled": pooled}


class ToyImageEncoder(nn.Module):
    """Tiny ViT. ``__call__(images (B, 3, H, W) in [-1, 1])`` -> ``{"image_embeds": (B, E), "penultimate":
    (B, 1 + (S/P)^2, W)}``: ``image_embeds`` = ``ln_post(CLS) @ proj``, ``penultimate`` = hidden states after the
    second-to-last block (no post-LN), as for open_clip ViT-H. Same surface as ``content.ClipImageEncoder``
    (``image_size``, ``dtype``, ``preprocess``, ``encode_preprocessed``, ``uncond_features``)."""

    def __init__(self, cfg: Optional[ToyImageConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or ToyImageConfig()
        if cfg.image_size % cfg.patch or cfg.layers < 2:
            raise ValueError(f"ToyImageConfig needs image_size % patch == 0 and layers >= 2, got {cfg}")
        n_tokens = 1 + (cfg.image_size // cfg.patch) ** 2
        self.conv1 = nn.Conv2d(3, cfg.width, cfg.patch, stride=cfg.patch, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.positional_embedding = nn.Parameter(torch.empty(n_tokens, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.blocks = nn.ModuleList(_Block(cfg.width, cfg.heads, causal=False) for _ in range(cfg.layers))
        self.ln_post = nn.LayerNorm(cfg.width)
        self.proj = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim))
        _seeded_init(self, cfg.seed, {"class_embedding": 1.0, "positional_embedding": 0.1,
                                      "proj": cfg.width ** -0.5})

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def dtype(self) -> torch.dtype:
        return self.proj.dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, 3, S, S)``: box average when shrinking (exact for integer factors),
        bilinear otherwise; no mean/std normalisation, so an all-zero preprocessed image is mid-grey."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"ToyImageEncoder expects pixels (B, 3, H, W), got {tuple(images.shape)}")
        s = self.cfg.image_size
        x = images.to(self.dtype)
        if x.shape[-2:] != (s, s):
            shrink = x.shape[-2] >= s and x.shape[-1] >= s
            x = F.interpolate(x, size=(s, s), mode="area") if shrink else \
                F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return x

    def encode_preprocessed(self, pixel_values: torch.Tensor) -> ImageFeatures:
        """``(B, 3, S, S)`` -> ImageFeatures (same entry point as ``content.ClipImageEncoder``)."""
        x = rearrange(self.conv1(pixel_values), "b w gh gw -> b (gh gw) w")
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        penultimate = x
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == len(self.blocks) - 2:
                penultimate = x
        return {"image_embeds": self.ln_post(x[:, 0]) @ self.proj, "penultimate": penultimate}

    def uncond_features(self, batch: int, device: Optional[torch.device] = None) -> ImageFeatures:
        """Features of an all-zero *preprocessed* image (IP-Adapter Plus' unconditional branch), ``batch`` rows."""
        s = self.cfg.image_size
        return self.encode_preprocessed(torch.zeros(batch, 3, s, s, device=device or self.proj.device,
                                                    dtype=self.dtype))

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        return self.encode_preprocessed(self.preprocess(images))


def _check_pixels(pixels: torch.Tensor, channels: int, who: str) -> None:
    if pixels.dim() != 4 or pixels.shape[1] != channels:
        raise ValueError(f"{who} expects (B, {channels}, H, W), got {tuple(pixels.shape)}")


class IdentityCodec(nn.Module):
    """Pixel-space "VAE" of the toy world (`backbone.codec=identity`): ``encode`` = x * scale, ``decode`` = z / scale.
    ``(B, 3, H, W)`` <-> ``(B, 3, H, W)``; deterministic (``generator`` ignored), no parameters."""

    latent_channels = 3
    downsample = 1

    def __init__(self, scale: float = 1.0):
        super().__init__()
        if scale == 0:
            raise ValueError("IdentityCodec scale must be non-zero")
        self.scale = float(scale)

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        _check_pixels(pixels, 3, "IdentityCodec.encode")
        return pixels * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        _check_pixels(latents, 3, "IdentityCodec.decode")
        return latents / self.scale


def _patch_mix() -> torch.Tensor:
    """Fixed orthonormal (12, 12) mix = kron(colour, haar): colour rows (1,1,1)/√3, (1,-1,0)/√2, (1,1,-2)/√6;
    2x2 Haar rows (1,1,1,1)/2, (1,1,-1,-1)/2, (1,-1,1,-1)/2, (1,-1,-1,1)/2. Channel 0 = mean luminance."""
    colour = torch.tensor([[1, 1, 1], [1, -1, 0], [1, 1, -2]], dtype=torch.float64)
    colour = colour / colour.norm(dim=1, keepdim=True)
    haar = torch.tensor([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=torch.float64) / 2
    return torch.kron(colour, haar).float()


def position_channels(n: int, h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    """``(n, h, w)`` fixed sin/cos codes of the latent grid position: for frequencies f = 1, 3, 5, … (n/4 of them),
    sin and cos of 2π·f·x/w and of 2π·f·y/h. Their dot product between two places is Σ cos(2π·f·Δ/size), largest
    at Δ = 0, so attention on them can find "the same place"."""
    if n < 0 or n % 4:
        raise ValueError(f"position channels come in groups of 4 (sin/cos of x and y), got {n}")
    ys = torch.arange(h, dtype=torch.float64).view(h, 1).expand(h, w)
    xs = torch.arange(w, dtype=torch.float64).view(1, w).expand(h, w)
    out = []
    for k in range(n // 4):
        f = 2 * k + 1
        ax, ay = 2 * math.pi * f * xs / w, 2 * math.pi * f * ys / h
        out += [torch.sin(ax), torch.cos(ax), torch.sin(ay), torch.cos(ay)]
    return (torch.stack(out) if out else torch.zeros(0, h, w, dtype=torch.float64)).to(dtype)


class PatchCodec(nn.Module):
    """Fixed invertible codec: 2x2 space-to-depth ``(B, 3, H, W) -> (B, 12, H/2, W/2)`` then the orthonormal
    :func:`_patch_mix`, times ``scale``. The toy backbone's default codec (`backbone.codec=patch`).

    ``position_channels`` > 0 appends that many fixed :func:`position_channels` codes (same in every image, times
    ``scale``) after the 12 image channels; ``decode`` drops them. They are the toy's stand-in for the absolute
    position that SD's features carry (zero padding through a deep UNet on 64² latents) and a 1.2M-parameter UNet
    on 16² latents does not learn: without it no attention, the base's or the I2V-Adapter's, can find the same
    place in another frame (README, toy world)."""

    image_channels = 12
    downsample = 2

    def __init__(self, scale: float = 1.0, position_channels: int = 0):
        super().__init__()
        if scale == 0:
            raise ValueError("PatchCodec scale must be non-zero")
        if position_channels < 0 or position_channels % 4:
            raise ValueError(f"PatchCodec position_channels must be a multiple of 4, got {position_channels}")
        self.scale = float(scale)
        self.position_channels = int(position_channels)
        self.latent_channels = self.image_channels + self.position_channels
        self.register_buffer("mix", _patch_mix(), persistent=False)

    def encode(self, pixels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        _check_pixels(pixels, 3, "PatchCodec.encode")
        if pixels.shape[-1] % 2 or pixels.shape[-2] % 2:
            raise ValueError(f"PatchCodec needs even H and W, got {tuple(pixels.shape[-2:])}")
        z = F.pixel_unshuffle(pixels, 2)  # channel index = c*4 + 2*row + col
        z = torch.einsum("oc,bchw->bohw", self.mix.to(z.dtype), z)
        if self.position_channels:
            b, _, h, w = z.shape
            pos = position_channels(self.position_channels, h, w, z.dtype).to(z.device)
            z = torch.cat([z, pos.unsqueeze(0).expand(b, -1, -1, -1)], dim=1)
        return z * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        _check_pixels(latents, self.latent_channels, "PatchCodec.decode")
        img = latents[:, :self.image_channels] / self.scale
        z = torch.einsum("oc,bohw->bchw", self.mix.to(latents.dtype), img)
        return F.pixel_shuffle(z, 2)


def toy_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Plain, contiguous, storage-disjoint copies of ``module.state_dict()`` (safe for ``safetensors.save_file``)."""
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def load_toy_state_dict(module: nn.Module, path: str) -> None:
    """Load a ``.safetensors`` file written from :func:`toy_state_dict` strictly; errors name the file and keys."""
    from safetensors.torch import load_file

    if not str(path).endswith(".safetensors"):
        raise ValueError(f"toy encoder weights must be a .safetensors file, got {path}")
    sd = load_file(str(path))
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise KeyError(f"{path}: missing keys {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} "
                       f"({len(unexpected)}) for {type(module).__name__}")
    module.load_state_dict(sd, strict=True)
