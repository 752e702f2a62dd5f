"""Can the I2V-Adapter's branch find *where* in frame 1 to read? (``scripts/diagnose_adapter.py focus_t=``)

The I2V-Adapter's query projection starts as a copy of the base's ``to_q`` (eq. 5-6), so its attention to frame 1
starts as sharp as the base's own self-attention. A base whose spatial self-attention is close to uniform gives a
branch that averages frame 1 over all positions: it can carry a frame-wide mean and nothing placed.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from i2v.training.diagnose import check_clips
from i2v.training.module import first_frame_clean_noising


@torch.no_grad()
def attention_focus(bundle, videos: torch.Tensor, texts: Sequence[str], t: int, seed: int = 0
                    ) -> dict[str, dict[str, float]]:
    """How focused the spatial self-attentions (attn1) are, per layer, on clips noised to ``t`` with frame 0 clean.

    Returns ``{layer: {"self_entropy", "self_diag", "cross_entropy", "cross_same_place"}}``:

    * ``self_entropy`` -- entropy of the base's own attention rows, divided by log(tokens): 1 = uniform (a global
      average), 0 = one token per query; ``self_diag`` -- the weight a query gives its own position, x tokens
      (1 = no preference);
    * ``cross_entropy`` / ``cross_same_place`` -- the same for the I2V-Adapter branch's attention of frames 2..F
      to frame 1 (queries ``to_q_ff``, keys ``to_k`` of frame 1), the weight at the query's own position in
      frame 1 x tokens. NaN without an attached adapter.

    Averaged over heads, queries, frames and clips. Only ``videos`` ``(N, F, 3, H, W)`` in [-1, 1] with captions.
    """
    from einops import rearrange

    from i2v.models.adapters import i2v_adapter_layers
    from i2v.models.attention import spatial_attention_layers

    check_clips(videos, texts)
    num_frames = videos.shape[1]
    adapters = {n for n, _ in i2v_adapter_layers(bundle.unet)}
    sums: dict[str, dict[str, float]] = {}

    def rows(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
        """(N, T, h·d), (N, S, h·d) -> attention (N, h, T, S)."""
        q, k = (rearrange(a, "n t (h d) -> n h t d", h=heads) for a in (q, k))
        return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)

    def stats(a: torch.Tensor) -> tuple[float, float]:
        n_tok = a.shape[-1]
        ent = -(a * a.clamp_min(1e-12).log()).sum(-1).mean() / math.log(n_tok)
        return float(ent), float(a.diagonal(dim1=-2, dim2=-1).mean() * n_tok)

    def hook(name: str):
        def pre(mod, args, kwargs):
            x = args[0]
            row = sums.setdefault(name, {"self_entropy": 0.0, "self_diag": 0.0, "cross_entropy": float("nan"),
                                         "cross_same_place": float("nan")})
            row["self_entropy"], row["self_diag"] = stats(rows(mod.to_q(x), mod.to_k(x), mod.heads))
            if name in adapters:
                xf = rearrange(x, "(b f) t c -> b f t c", f=num_frames)
                k1 = mod.to_k(xf[:, 0]).repeat_interleave(num_frames - 1, 0)
                q = mod.to_q_ff(rearrange(xf[:, 1:], "b f t c -> (b f) t c"))
                row["cross_entropy"], row["cross_same_place"] = stats(rows(q, k1, mod.heads))
        return pre

    handles = [a.register_forward_pre_hook(hook(n), with_kwargs=True)
               for n, a in spatial_attention_layers(bundle.unet, "attn1")]
    param = next(bundle.unet.parameters())
    try:
        video = videos.to(param.device, param.dtype)
        z = bundle.encode_video(video, generator=torch.Generator().manual_seed(seed))
        cond = bundle.condition(list(texts), video[:, 0], hw=tuple(video.shape[-2:]))
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(t))
        eps = torch.randn(z.shape, generator=g, dtype=torch.float32).to(z.device, z.dtype)
        tt = torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device)
        bundle.unet(first_frame_clean_noising(z, eps, tt, bundle.schedule), tt, cond["context"],
                    added_cond=cond.get("added_cond"))
    finally:
        for h in handles:
            h.remove()
    return sums


def _short(name: str) -> str:
    """``down_blocks.0.attentions.0.transformer_blocks.1.attn1`` -> ``down_blocks.0.attentions.0 (layer 1)``."""
    stem = name.removesuffix(".attn1")
    head, _, layer = stem.rpartition(".transformer_blocks.")
    return head if layer == "0" or not head else f"{head} (layer {layer})"


def format_focus(focus: dict[str, dict[str, float]]) -> str:
    """Markdown table of :func:`attention_focus`."""
    lines = ["| attn1 layer | self: entropy (1 = uniform) | self: own position x | adapter: entropy "
             "| adapter: same place in frame 1 x |", "|---|---|---|---|---|"]
    for name, r in focus.items():
        lines.append(f"| {_short(name)} | {r['self_entropy']:.3f} | "
                     f"{r['self_diag']:.2f} | {r['cross_entropy']:.3f} | {r['cross_same_place']:.2f} |")
    return "\n".join(lines)


def focus_findings(focus: dict[str, dict[str, float]], diffuse: float = 0.9) -> list[str]:
    """A line when at least half of the attn1 layers attend almost uniformly (normalised entropy above ``diffuse``)."""
    flat = [_short(n) for n, r in focus.items() if r["self_entropy"] > diffuse]
    if not focus or 2 * len(flat) < len(focus):
        return []
    return [f"the base's spatial self-attention is close to uniform in {len(flat)} of {len(focus)} layers "
            f"(entropy > {diffuse} of the maximum: {', '.join(flat)}): the I2V-Adapter's branch, which starts as a "
            f"copy of it, averages frame 1 over all positions there and cannot read what sits where"]
