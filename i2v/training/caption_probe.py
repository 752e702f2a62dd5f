"""Does the model use its caption, and its Content-Adapter's image? The learning diagnostic's caption probe
(``scripts/diagnose_adapter.py captions=true``).

The ε-loss of :func:`i2v.training.diagnose.eps_loss_by_timestep`'s "adapter on" column (frame 1 clean, the same
noise, the model as attached) with the caption, with no caption, and with each direction word of the caption
(left/right/up/down) replaced by its opposite. A model whose loss does not move when "moving left" becomes "moving
right" has not learnt the caption's direction: in its samples the motion's direction comes from the starting noise,
not from the text, and no adapter that reads frame 1 (a still frame) can add it.

With a Content-Adapter (IP-Adapter) the same loss is also taken with its image prompt dropped (the unconditional
image tokens, what guidance contrasts), beside the caption and without it. A Content-Adapter whose image can be
dropped at no cost, even where no caption says what the image shows, does not read its image: it acts as a fixed set
of extra tokens (the toy world's, docs/toy_world.md "Conditioning").
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import torch

from i2v.training.diagnose import (DEFAULT_TIMESTEPS, check_clips, check_timesteps, clip_noise, frames_mse,
                                   predict_eps)
from i2v.training.module import first_frame_clean_noising

DIRECTION_WORDS = {"left": "right", "right": "left", "up": "down", "down": "up"}
_DIRECTION_RE = re.compile(r"\b(" + "|".join(DIRECTION_WORDS) + r")\b", re.IGNORECASE)


def swap_directions(text: str) -> Optional[str]:
    """``text`` with each direction word (left, right, up, down: whole words, any case) replaced by its opposite;
    None when it has none. ``"a red circle moving left"`` -> ``"a red circle moving right"``."""
    if not _DIRECTION_RE.search(text):
        return None

    def opposite(m: re.Match) -> str:
        word = DIRECTION_WORDS[m.group(0).lower()]
        return word.capitalize() if m.group(0)[0].isupper() else word
    return _DIRECTION_RE.sub(opposite, text)


@torch.no_grad()
def caption_probe(bundle, videos: torch.Tensor, texts: Sequence[str], timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
                  seed: int = 0, batch_size: int = 8) -> dict[int, dict[str, float]]:
    """Does the model use its caption? ε-MSE on frames 2..F, frame 1 clean, the bundle as it is (its I2V-Adapter on
    if attached, off at t below ``bundle.i2v_min_t`` as in sampling), on the noise of :func:`eps_loss_by_timestep`
    (so ``caption`` equals its ``adapter_on``, or ``adapter_off`` without an adapter), with three captions per clip:

    * ``caption`` -- the clip's own; ``no_caption`` -- the empty caption (what classifier-free guidance contrasts);
    * ``swapped`` -- each direction word replaced by its opposite (:func:`swap_directions`), on the ``n_direction``
      clips whose caption has one; ``caption_direction`` is the own caption's loss on those same clips (the swap's
      reference). NaN where no caption has a direction word;
    * with a Content-Adapter (``bundle.content_enabled``): ``no_image`` -- the own caption, the image prompt dropped
      (:meth:`~i2v.pipeline.bundle.Bundle.condition`'s ``drop_image``); ``no_caption_no_image`` -- neither (to set
      against ``no_caption``: the image's worth where no caption tells what it shows). NaN without one.
    """
    check_clips(videos, texts)
    check_timesteps(bundle, timesteps)
    param = next(bundle.unet.parameters())
    swapped_all = [swap_directions(t) for t in texts]
    n_dir = sum(s is not None for s in swapped_all)
    image = bool(getattr(bundle, "content_enabled", False))
    keys = ("caption", "no_caption", "caption_direction", "swapped", "no_image", "no_caption_no_image")
    sums = {int(t): {k: 0.0 for k in keys} for t in timesteps}
    for start in range(0, videos.shape[0], batch_size):
        video = videos[start:start + batch_size].to(param.device, param.dtype)
        caps = list(texts[start:start + batch_size])
        swapped = swapped_all[start:start + batch_size]
        has_dir = torch.tensor([s is not None for s in swapped], device=param.device)
        z = bundle.encode_video(video, generator=torch.Generator().manual_seed(seed))
        hw = tuple(video.shape[-2:])
        conds = {"caption": bundle.condition(caps, video[:, 0], hw=hw),
                 "no_caption": bundle.condition([""] * len(caps), video[:, 0], hw=hw)}
        if image:
            drop = torch.ones(len(caps), dtype=torch.bool, device=param.device)
            conds["no_image"] = bundle.condition(caps, video[:, 0], drop_image=drop, hw=hw)
            conds["no_caption_no_image"] = bundle.condition([""] * len(caps), video[:, 0], drop_image=drop, hw=hw)
        if bool(has_dir.any()):
            conds["swapped"] = bundle.condition([s if s is not None else c for s, c in zip(swapped, caps)],
                                                video[:, 0], hw=hw)
        for t in timesteps:
            eps = clip_noise(z, seed, t, start)
            tt = torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device)
            z_t = first_frame_clean_noising(z, eps, tt, bundle.schedule)
            row = sums[int(t)]
            for name, cond in conds.items():   # (predict_eps: the branch off below adapter.i2v_min_t)
                mse, _ = frames_mse(predict_eps(bundle, z, z_t, eps, tt, cond, noised_kv=bundle.noised_kv), eps)
                if name == "swapped":
                    row["swapped"] += float(mse[has_dir].sum())
                else:
                    row[name] += float(mse.sum())
                if name == "caption":
                    row["caption_direction"] += float(mse[has_dir].sum())
    n = videos.shape[0]
    out = {}
    for t, row in sums.items():
        out[t] = {"caption": row["caption"] / n, "no_caption": row["no_caption"] / n, "n_direction": n_dir,
                  "caption_direction": row["caption_direction"] / n_dir if n_dir else float("nan"),
                  "swapped": row["swapped"] / n_dir if n_dir else float("nan"),
                  "no_image": row["no_image"] / n if image else float("nan"),
                  "no_caption_no_image": row["no_caption_no_image"] / n if image else float("nan")}
    return out


def format_captions(table: dict[int, dict[str, float]]) -> str:
    """Markdown table of :func:`caption_probe`, each edit also as a multiple of the loss it is set against (the own
    caption's; for the image dropped without a caption, the no-caption loss). Image columns with a Content-Adapter
    only."""
    image = any(not math.isnan(r.get("no_image", float("nan"))) for r in table.values())
    head = "| t | own caption | no caption | x own | direction words swapped | x own (same clips) |"
    rule = "|---|---|---|---|---|---|"
    if image:
        head += " image dropped | x own | neither | x no caption |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    for t, row in table.items():
        swap = (f"{row['swapped']:.4g} ({row['n_direction']} clips) | {row['swapped'] / row['caption_direction']:.4f}"
                if row["n_direction"] else "– (no caption names a direction) | –")
        line = (f"| {t} | {row['caption']:.4g} | {row['no_caption']:.4g} | "
                f"{row['no_caption'] / row['caption']:.4f} | {swap} |")
        if image:
            line += (f" {row['no_image']:.4g} | {row['no_image'] / row['caption']:.4f} | "
                     f"{row['no_caption_no_image']:.4g} | {row['no_caption_no_image'] / row['no_caption']:.4f} |")
        lines.append(line)
    return "\n".join(lines)


def caption_findings(table: dict[int, dict[str, float]], tol: float = 0.005, image_tol: float = 0.01) -> list[str]:
    """Lines for a model that ignores its caption (no caption within ``tol`` of the own caption's loss at every t),
    the caption's direction words (swapping them moves the loss by less than ``tol`` at every t) or its
    Content-Adapter's image (dropping it moves the loss by less than ``image_tol`` at every t, beside the caption
    and without it)."""
    out = []
    if table and all(abs(r["no_caption"] / r["caption"] - 1) < tol for r in table.values()):
        out.append(f"dropping the caption changes the loss by < {100 * tol:g}% at every t: the model does not use "
                   f"its text, and classifier-free guidance has nothing to amplify")
    rows = [r for r in table.values() if r["n_direction"]]
    if rows and all(abs(r["swapped"] / r["caption_direction"] - 1) < tol for r in rows):
        top = max(abs(r["swapped"] / r["caption_direction"] - 1) for r in rows)
        out.append(f"swapping the caption's direction words (left/right, up/down) changes the loss by at most "
                   f"{100 * top:.2f}% at any t: the model has not learnt them, so the direction of the motion it "
                   f"samples comes from the starting noise, not from the caption")
    rows = [r for r in table.values() if not math.isnan(r.get("no_image", float("nan")))]
    if rows:
        top = max(max(abs(r["no_image"] / r["caption"] - 1), abs(r["no_caption_no_image"] / r["no_caption"] - 1))
                  for r in rows)
        if top < image_tol:
            out.append(f"dropping the Content-Adapter's image changes the loss by at most {100 * top:.2f}% at any t, "
                       f"with or without the caption: it does not read its image (it acts as a fixed set of extra "
                       f"tokens); whatever of frame 1 reaches frames 2..F does not come through it")
    return out
