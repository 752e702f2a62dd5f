"""Classifier-free guidance: batch the unconditional and conditional branches, combine their ε.

ε̂ = ε_u + w (ε_c − ε_u)   (w = ``cfg``; w = 1 is the conditional model alone, so no unconditional pass is run).

The unconditional branch is whatever context the caller gives as ``uncond``: the empty-prompt text embedding
(or a **negative prompt**'s embedding — a negative prompt simply replaces "" in the unconditional context) with
the Content-Adapter's image tokens of an all-zero image appended, exactly as the official pipeline builds it.
SDXL's ``added_cond`` (pooled text embedding, time ids) follows the same rule: the caller passes the negative /
empty-prompt version as ``added_uncond``; by default the conditional one is reused for both branches.
Batches are ordered ``[uncond, cond]`` like diffusers pipelines. :func:`negative_prompt` resolves named presets
(``official``: the text of the official ``infer.sh``).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch


# KwaiVGI/I2V-Adapter infer.sh --neg_prompt (its inference.py default is None, i.e. "")
NEGATIVE_PRESETS = {"official": "worst quality, low quality, normal quality, lowres, bad anatomy, bad hands, "
                                "watermark, moles"}


def negative_prompt(value: Optional[str]) -> str:
    """The negative-prompt text for a setting: a preset name from :data:`NEGATIVE_PRESETS` or the text itself
    (``None`` -> "")."""
    value = "" if value is None else str(value)
    return NEGATIVE_PRESETS.get(value, value)


def uses_uncond(cfg: float) -> bool:
    """True when guidance needs the unconditional branch (any scale other than exactly 1)."""
    return float(cfg) != 1.0


def _batch_to(x: torch.Tensor, b: int, name: str) -> torch.Tensor:
    if x.shape[0] == b:
        return x
    if x.shape[0] == 1:
        return x.expand(b, *x.shape[1:])
    raise ValueError(f"{name} has batch {x.shape[0]}, expected {b} (or 1 to broadcast)")


def guidance_context(cond: torch.Tensor, uncond: Optional[torch.Tensor], cfg: float, batch: int) -> torch.Tensor:
    """UNet context for one guided call.

    Args:
        cond, uncond: ``(B, L, d)`` (or batch 1, broadcast to ``batch``); ``uncond`` may be ``None`` when cfg == 1.
    Returns:
        ``(2B, L, d)`` = ``[uncond; cond]`` when guidance is on, else ``(B, L, d)`` = cond.
    """
    if cond.dim() != 3:
        raise ValueError(f"cond context must be (B, L, d), got shape {tuple(cond.shape)}")
    cond = _batch_to(cond, batch, "cond")
    if not uses_uncond(cfg):
        return cond
    if uncond is None:
        raise ValueError(f"cfg={cfg} needs an unconditional context (uncond=None given)")
    uncond = _batch_to(uncond, batch, "uncond")
    if uncond.shape[1:] != cond.shape[1:]:
        raise ValueError(f"uncond {tuple(uncond.shape)} and cond {tuple(cond.shape)} must share (L, d); pad the "
                         "negative prompt to the same token count")
    return torch.cat([uncond, cond], dim=0)


def guidance_added_cond(added_cond: Optional[Dict[str, torch.Tensor]],
                        added_uncond: Optional[Dict[str, torch.Tensor]], cfg: float,
                        batch: int) -> Optional[Dict[str, torch.Tensor]]:
    """Extra conditioning dict (SDXL ``text_embeds (B,1280)``, ``time_ids (B,6)``) batched like the context."""
    if added_cond is None:
        if added_uncond is not None:
            raise ValueError("added_uncond given without added_cond")
        return None
    cond = {k: _batch_to(v, batch, f"added_cond[{k!r}]") for k, v in added_cond.items()}
    if not uses_uncond(cfg):
        return cond
    unc = added_uncond if added_uncond is not None else added_cond
    if set(unc) != set(cond):
        raise ValueError(f"added_uncond keys {sorted(unc)} differ from added_cond keys {sorted(cond)}")
    return {k: torch.cat([_batch_to(unc[k], batch, f"added_uncond[{k!r}]"), cond[k]], dim=0) for k in cond}


def duplicate_for_guidance(x: torch.Tensor, cfg: float) -> torch.Tensor:
    """``(B, ...)`` → ``(2B, ...)`` (the same tensor for both branches) when guidance is on, else unchanged."""
    return torch.cat([x, x], dim=0) if uses_uncond(cfg) else x


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, cfg: float) -> torch.Tensor:
    """ε_u + cfg·(ε_c − ε_u) for tensors of equal shape."""
    return eps_uncond + cfg * (eps_cond - eps_uncond)


def split_guided(eps: torch.Tensor, cfg: float) -> torch.Tensor:
    """Network output of a guided call → guided ε.

    Args:
        eps: ``(2B, ...)`` ordered ``[uncond; cond]`` when guidance is on, else ``(B, ...)`` (returned as is).
    """
    if not uses_uncond(cfg):
        return eps
    if eps.shape[0] % 2:
        raise ValueError(f"guided output must have an even batch [uncond; cond], got {eps.shape[0]}")
    eps_u, eps_c = eps.chunk(2, dim=0)
    return cfg_combine(eps_u, eps_c, cfg)

