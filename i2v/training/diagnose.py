"""Does the I2V-Adapter read frame 1? ε-loss per timestep against two predictors with no network at all.

For held-out clips, every frame noised to one timestep ``t`` and frame 0 put back clean (exactly the training
input), the ε-MSE on frames 2..F (0-based 1..F-1) of four predictors on the *same* noise (a v-prediction network's
output is turned into the ε it stands for, ``schedule.to_eps``, so every backbone is scored alike):

* ``adapter_on``  -- the bundle's UNet with the I2V-Adapter branch active (NaN when the bundle has none; through
  :func:`~i2v.models.noised_kv.with_noised_first_frame_kv` when ``bundle.noised_kv``);
* ``adapter_off`` -- the same UNet with the branch switched off (the frozen base + Content-Adapter);
* ``copy_frame1`` -- ε̂ = (z_t − √ᾱ_t·z_1) / √(1−ᾱ_t): "every frame equals frame 1", no network;
* ``signal_zero`` -- ε̂ = z_t / √(1−ᾱ_t): "there is no signal", no network;
* ``static_oracle`` -- ``copy_frame1`` on the latent elements where frame i's clean latent equals frame 1's (within
  ``static_tol`` × the clip's latent RMS), ``adapter_off`` everywhere else: a base plus a perfect reader of frame 1
  that knows what did not change. Its ratio to ``adapter_off`` is how far frame 1 *can* take this base on these
  clips, the yardstick for ``adapter_on`` (on the toy world a static background makes it small; on real video,
  where few pixels stay exactly equal, it stays near ``adapter_off`` and says little).

Each predictor also gets ``<name>_frame_mean``: the part of its ε-MSE carried by each frame's spatial mean (a
colour shift of the whole frame; see :func:`_frames_mse`). On the toy world this part is a constant floor of the base
at every t (the per-frame colour drift seen in its samples) and no attention-side adapter moves it.

A base that does not beat ``signal_zero`` is badly trained at that t (it does worse than ignoring its input's
signal); an adapter that reads frame 1 should move ``adapter_on`` towards (or below) ``copy_frame1`` wherever the
frames of a clip resemble frame 1. Used by ``scripts/diagnose_adapter.py`` and the toy-world tests.

:func:`attention_focus` asks the question behind that one: can the branch find *where* in frame 1 to read? The
I2V-Adapter's query projection starts as a copy of the base's ``to_q`` (eq. 5-6), so its attention to frame 1 starts
as sharp as the base's own self-attention. A base whose spatial self-attention is close to uniform gives a branch
that averages frame 1 over all positions: it can carry a frame-wide mean and nothing placed.

The attention probes (``probes=True``) ask whether the branch has a route at all, with the adapter off:

* ``attn_zero``   -- every spatial self-attention (attn1) output set to zero. Barely above ``adapter_off``: the
  base does not use its self-attention to move content, so nothing added beside it reaches the output;
* ``cross_frame`` -- every frame's attn1 reads frame 1's keys and values (``Attn(Q_i, K_1, V_1)``, the branch of
  eq. 6 in place of the self-attention, zero-shot). Far above ``adapter_off``: the base's frame-1 keys/values
  (a clean frame at a noisy timestep) mislead it, and the branch reads exactly those;
* ``cross_frame_noisy`` -- the same swap with frame 1 noised to ``t`` like the other frames (zero-shot cross-frame
  attention as in text-to-video editing). Near ``adapter_off`` while ``cross_frame`` is far above: it is the clean
  frame, not the swap, that misleads the base.

:func:`caption_probe` asks whether the model uses its caption at all: the same loss (the adapter as attached) with
the caption, with no caption, and with each direction word of the caption (left/right/up/down) replaced by its
opposite. A model whose loss does not move when "moving left" becomes "moving right" has not learnt the caption's
direction: in its samples the motion's direction comes from the starting noise, not from the text.
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import torch

from i2v.toy.oracle import static_mask
from i2v.training.module import first_frame_clean_noising

PREDICTORS = ("adapter_on", "adapter_off", "copy_frame1", "signal_zero", "static_oracle")
PROBES = ("attn_zero", "cross_frame", "cross_frame_noisy")
DEFAULT_TIMESTEPS = (200, 500, 800, 950)
DIRECTION_WORDS = {"left": "right", "right": "left", "up": "down", "down": "up"}
_DIRECTION_RE = re.compile(r"\b(" + "|".join(DIRECTION_WORDS) + r")\b", re.IGNORECASE)


def _probe_processor(mode: str):
    """attn1 processor of the probes: ``zero`` -> no self-attention output; ``cross_frame`` -> every frame attends
    to frame 0's keys/values through the base's own ``to_q``/``to_out`` (eq. 5 with W_Q in place of W'_Q)."""
    from i2v.models.adapters import attend_first_frame

    def run(attn, x, context=None, num_frames=None):
        if mode == "zero":
            return torch.zeros_like(x)
        return attn.project_out(attend_first_frame(attn, attn.to_q(x), attn.to_k(x), attn.to_v(x), num_frames))
    return run


def probe_attn1(unet, mode: str):
    """Context manager: every spatial attn1 of ``unet`` runs :func:`_probe_processor` (``mode``: ``zero`` |
    ``cross_frame``) inside the block, restored after (also used by :class:`i2v.toy.oracle.FirstFrameAttention`)."""
    from i2v.models.attention import swapped_processors

    return swapped_processors(unet, lambda attn, own: _probe_processor(mode))


def _frames_mse(eps_hat: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video ε-MSE over frames 1..F-1 of ``(B, C, F, h, w)`` tensors -> ``(total (B,), frame_mean (B,))``.

    ``frame_mean`` is the part of ``total`` carried by each frame's spatial mean per channel (the error's mean over
    h, w, squared, averaged over channels and frames): a per-frame colour/brightness shift. ``total - frame_mean``
    is the error of everything else (shapes, positions, texture)."""
    err = eps_hat[:, :, 1:].float() - eps[:, :, 1:].float()
    return err.pow(2).flatten(1).mean(1), err.mean(dim=(-2, -1)).pow(2).flatten(1).mean(1)


def _check_clips(videos: torch.Tensor, texts: Sequence[str]) -> None:
    if videos.dim() != 5 or videos.shape[1] < 2 or len(texts) != videos.shape[0]:
        raise ValueError(f"videos must be (N, F>=2, 3, H, W) with one caption each, got {tuple(videos.shape)} "
                         f"and {len(texts)} captions")


def _check_timesteps(bundle, timesteps: Sequence[int]) -> None:
    n_train = bundle.schedule.num_train_timesteps
    bad = [t for t in timesteps if not 0 <= int(t) < n_train]
    if bad:
        raise ValueError(f"timesteps {bad} outside [0, {n_train})")


def _noise(z: torch.Tensor, seed: int, t: int, start: int) -> torch.Tensor:
    """The ε of the clips ``start..`` at ``t``: a function of (seed, t, start), the same for every predictor."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + int(t) * 1009 + start)
    return torch.randn(z.shape, generator=g, dtype=torch.float32).to(z.device, z.dtype)


def _predict_eps(bundle, z: torch.Tensor, z_t: torch.Tensor, eps: torch.Tensor, tt: torch.Tensor, cond: dict,
                 noised_kv: bool = False) -> torch.Tensor:
    """The UNet's prediction on ``z_t`` as the ε it stands for; ``noised_kv``: through the adapter.noised_kv forward
    (frame 1 noised with its own ε for the keys/values pass)."""
    from i2v.models.noised_kv import with_noised_first_frame_kv

    def run(x: torch.Tensor) -> torch.Tensor:
        return bundle.unet(x, tt, cond["context"], added_cond=cond.get("added_cond"))
    if noised_kv:
        x1 = bundle.schedule.add_noise(z[:, :, :1], eps[:, :, :1], tt)
        out = with_noised_first_frame_kv(bundle.unet, run, z_t, x1)
    else:
        out = run(z_t)
    return bundle.schedule.to_eps(out, z_t, tt)


@torch.no_grad()
def eps_loss_by_timestep(bundle, videos: torch.Tensor, texts: Sequence[str],
                         timesteps: Sequence[int] = DEFAULT_TIMESTEPS, seed: int = 0,
                         batch_size: int = 8, probes: bool = False,
                         static_tol: float = 1e-3) -> dict[int, dict[str, float]]:
    """``{t: {predictor: mean ε-MSE over the clips}}`` for the predictors in :data:`PREDICTORS` (and, with
    ``probes``, the attention probes in :data:`PROBES`, see the module docstring).

    Args:
        bundle: a :class:`~i2v.pipeline.bundle.Bundle` (any backbone); its I2V-Adapter, if attached, is switched on and off
            here and left as it was found.
        videos: ``(N, F, 3, H, W)`` pixels in [-1, 1]; ``texts``: their N captions.
        timesteps: DDPM indices in ``[0, num_train_timesteps)``.
        seed: the noise of clip ``n`` at timestep ``t`` is a function of (seed, t, n), the same for every predictor.
        static_tol: a latent element of frame i counts as unchanged (``static_oracle``) when it differs from frame
            1's by at most this times the clip's latent RMS.
    """
    from i2v.models.adapters import i2v_adapter_layers, set_i2v_adapter_enabled

    _check_clips(videos, texts)
    _check_timesteps(bundle, timesteps)
    layers = i2v_adapter_layers(bundle.unet)
    was_on = [a.processor.enabled for _, a in layers]
    param = next(bundle.unet.parameters())
    dev, dtype = param.device, param.dtype
    names = PREDICTORS + (PROBES if probes else ())
    keys = names + tuple(f"{k}_frame_mean" for k in names)
    sums = {int(t): {k: 0.0 for k in keys} for t in timesteps}
    try:
        for start in range(0, videos.shape[0], batch_size):
            video = videos[start:start + batch_size].to(dev, dtype)
            caps = list(texts[start:start + batch_size])
            b = video.shape[0]
            z = bundle.encode_video(video, generator=torch.Generator().manual_seed(seed))
            cond = bundle.condition(caps, video[:, 0], hw=tuple(video.shape[-2:]))
            static = static_mask(z, static_tol)     # frame 0 all True, never scored
            for t in timesteps:
                eps = _noise(z, seed, t, start)
                tt = torch.full((b,), int(t), dtype=torch.long, device=dev)
                z_t = first_frame_clean_noising(z, eps, tt, bundle.schedule)
                abar = float(bundle.schedule.alphas_cumprod[int(t)])
                a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
                row = sums[int(t)]
                def add(name: str, eps_hat: torch.Tensor) -> None:
                    total, frame_mean = _frames_mse(eps_hat, eps)
                    row[name] += float(total.sum())
                    row[f"{name}_frame_mean"] += float(frame_mean.sum())

                copy = (z_t - a * z[:, :, :1]) / s
                add("copy_frame1", copy)
                add("signal_zero", z_t / s)
                for name, on in (("adapter_on", True), ("adapter_off", False)):
                    if not layers:
                        if on:
                            row[name] = row[f"{name}_frame_mean"] = float("nan")
                            continue
                    else:
                        set_i2v_adapter_enabled(bundle.unet, on)
                    eps_hat = _predict_eps(bundle, z, z_t, eps, tt, cond, noised_kv=on and bundle.noised_kv)
                    add(name, eps_hat)
                    if not on:
                        add("static_oracle", torch.where(static, copy, eps_hat))
                probe_inputs = (z_t, z_t, bundle.schedule.add_noise(z, eps, tt))   # the last: frame 1 noised too
                for name, mode, x_in in zip(PROBES if probes else (), ("zero", "cross_frame", "cross_frame"),
                                            probe_inputs):
                    with probe_attn1(bundle.unet, mode):
                        out = bundle.unet(x_in, tt, cond["context"], added_cond=cond.get("added_cond"))
                    add(name, bundle.schedule.to_eps(out, x_in, tt))
    finally:
        for (_, attn), on in zip(layers, was_on):
            attn.processor.enabled = on
    n = videos.shape[0]
    return {t: {k: v / n for k, v in row.items()} for t, row in sums.items()}


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
    if attached), on the noise of :func:`eps_loss_by_timestep` (so ``caption`` equals its ``adapter_on``, or
    ``adapter_off`` without an adapter), with three captions per clip:

    * ``caption`` -- the clip's own; ``no_caption`` -- the empty caption (what classifier-free guidance contrasts);
    * ``swapped`` -- each direction word replaced by its opposite (:func:`swap_directions`), on the ``n_direction``
      clips whose caption has one; ``caption_direction`` is the own caption's loss on those same clips (the swap's
      reference). NaN where no caption has a direction word.
    """
    _check_clips(videos, texts)
    _check_timesteps(bundle, timesteps)
    param = next(bundle.unet.parameters())
    swapped_all = [swap_directions(t) for t in texts]
    n_dir = sum(s is not None for s in swapped_all)
    keys = ("caption", "no_caption", "caption_direction", "swapped")
    sums = {int(t): {k: 0.0 for k in keys} for t in timesteps}
    for start in range(0, videos.shape[0], batch_size):
        video = videos[start:start + batch_size].to(param.device, param.dtype)
        caps = list(texts[start:start + batch_size])
        swapped = swapped_all[start:start + batch_size]
        has_dir = torch.tensor([s is not None for s in swapped], device=param.device)
        z = bundle.encode_video(video, generator=torch.Generator().manual_seed(seed))
        conds = {"caption": bundle.condition(caps, video[:, 0], hw=tuple(video.shape[-2:])),
                 "no_caption": bundle.condition([""] * len(caps), video[:, 0], hw=tuple(video.shape[-2:]))}
        if bool(has_dir.any()):
            conds["swapped"] = bundle.condition([s if s is not None else c for s, c in zip(swapped, caps)],
                                                video[:, 0], hw=tuple(video.shape[-2:]))
        for t in timesteps:
            eps = _noise(z, seed, t, start)
            tt = torch.full((z.shape[0],), int(t), dtype=torch.long, device=z.device)
            z_t = first_frame_clean_noising(z, eps, tt, bundle.schedule)
            row = sums[int(t)]
            for name, cond in conds.items():
                mse, _ = _frames_mse(_predict_eps(bundle, z, z_t, eps, tt, cond, noised_kv=bundle.noised_kv), eps)
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
                  "swapped": row["swapped"] / n_dir if n_dir else float("nan")}
    return out


def format_captions(table: dict[int, dict[str, float]]) -> str:
    """Markdown table of :func:`caption_probe`, each edit also as a multiple of the own caption's loss."""
    lines = ["| t | own caption | no caption | x own | direction words swapped | x own (same clips) |",
             "|---|---|---|---|---|---|"]
    for t, row in table.items():
        swap = (f"{row['swapped']:.4g} ({row['n_direction']} clips) | {row['swapped'] / row['caption_direction']:.4f}"
                if row["n_direction"] else "– (no caption names a direction) | –")
        lines.append(f"| {t} | {row['caption']:.4g} | {row['no_caption']:.4g} | "
                     f"{row['no_caption'] / row['caption']:.4f} | {swap} |")
    return "\n".join(lines)


def caption_findings(table: dict[int, dict[str, float]], tol: float = 0.005) -> list[str]:
    """Lines for a model that ignores its caption (no caption within ``tol`` of the own caption's loss at every t)
    or the caption's direction words (swapping them moves the loss by less than ``tol`` at every t)."""
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
    return out


def format_table(table: dict[int, dict[str, float]]) -> str:
    """Markdown table with the on/off ratio and the two network-free baselines."""
    lines = ["| t | adapter on | adapter off | on / off | \"copy frame 1\" | \"signal is zero\" "
             "| off: per-frame mean part | frame-1 oracle / off |",
             "|---|---|---|---|---|---|---|---|"]
    for t, row in table.items():
        ratio = row["adapter_on"] / row["adapter_off"] if row["adapter_off"] > 0 else float("nan")
        share = row["adapter_off_frame_mean"] / row["adapter_off"] if row["adapter_off"] > 0 else float("nan")
        oracle = row["static_oracle"] / row["adapter_off"] if row["adapter_off"] > 0 else float("nan")
        lines.append(f"| {t} | {row['adapter_on']:.4g} | {row['adapter_off']:.4g} | {ratio:.3f} | "
                     f"{row['copy_frame1']:.4g} | {row['signal_zero']:.4g} | "
                     f"{row['adapter_off_frame_mean']:.3g} ({100 * share:.0f}%) | {oracle:.3f} |")
    return "\n".join(lines)


def format_probes(table: dict[int, dict[str, float]]) -> str:
    """Markdown table of the attention probes (adapter off), each also as a multiple of ``adapter_off``."""
    lines = ["| t | base (adapter off) | attn1 output zeroed | x base | attn1 reads frame 1's K/V | x base "
             "| same, frame 1 noised too | x base |", "|---|---|---|---|---|---|---|---|"]
    for t, row in table.items():
        off = row["adapter_off"]
        lines.append(f"| {t} | {off:.4g} | " + " | ".join(
            f"{row[k]:.4g} | {row[k] / off:.2f}" for k in PROBES) + " |")
    return "\n".join(lines)


def probe_findings(table: dict[int, dict[str, float]], unused: float = 1.1, misled: float = 1.5) -> list[str]:
    """Lines for timesteps >= 500 where the base ignores its self-attention (zeroing it costs < ``unused`` x) or
    where frame 1's keys/values mislead it (``cross_frame`` > ``misled`` x the base)."""
    rows = {t: r for t, r in table.items() if int(t) >= 500 and "attn_zero" in r and r["adapter_off"] > 0}
    out = []
    idle = [t for t, r in rows.items() if r["attn_zero"] < unused * r["adapter_off"]]
    if idle:
        out.append(f"zeroing every spatial self-attention costs the base < {unused:g}x at t={idle}: it does not use "
                   f"its self-attention there, so a branch beside it has almost no route to the output")
    bad = {t: r["cross_frame"] / r["adapter_off"] for t, r in rows.items()
           if r["cross_frame"] > misled * r["adapter_off"]}
    if bad:
        shown = ", ".join(f"t={t}: {v:.1f}x" for t, v in bad.items())
        noisy_ok = all(rows[t]["cross_frame_noisy"] < misled * rows[t]["adapter_off"] for t in bad)
        out.append(f"reading frame 1's keys/values in place of its own makes the base worse ({shown})"
                   + (": the same swap with frame 1 noised like the others does not, so the clean frame's features "
                      "at a noisy timestep mislead the base" if noisy_ok else "")
                   + "; the I2V-Adapter's branch reads exactly those keys/values")
    return out


def findings(table: dict[int, dict[str, float]]) -> list[str]:
    """Plain-language reading of the table (what to fix first)."""
    out = []
    weak_base = [t for t, r in table.items() if r["adapter_off"] >= r["signal_zero"]]
    if weak_base:
        out.append(f"base worse than 'signal is zero' at t={weak_base}: the frozen base is badly trained there")
    drift = {t: r["adapter_off_frame_mean"] / r["adapter_off"] for t, r in table.items()
             if r.get("adapter_off_frame_mean", 0.0) > 0.25 * r["adapter_off"] > 0}
    if drift:
        shares = ", ".join(f"t={t}: {100 * v:.0f}%" for t, v in drift.items())
        out.append(f"a large part of the base's error is each frame's mean ({shares}): frames will drift in colour; "
                   f"an attention adapter does not remove it, a better-trained base does")
    if all(math.isnan(r["adapter_on"]) for r in table.values()):
        out.append("no I2V-Adapter attached: only the base was measured")
        return out
    flat = [t for t, r in table.items() if r["adapter_on"] > 0.9 * r["adapter_off"]]
    if flat:
        out.append(f"adapter barely helps (on > 0.9 x off) at t={flat}: it does not read frame 1 there")
    room = {t: (r["static_oracle"] / r["adapter_off"], r["adapter_on"] / r["adapter_off"]) for t, r in table.items()
            if r["static_oracle"] < 0.9 * r["adapter_off"]}
    if room:
        shown = ", ".join(f"t={t}: {o:.2f} (adapter {a:.2f})" for t, (o, a) in room.items())
        out.append(f"frame 1 holds more than the adapter takes: copying it where the clip did not change takes the "
                   f"base to {shown} x its loss")
    beaten = [t for t, r in table.items() if r["copy_frame1"] < r["adapter_on"]]
    if beaten:
        out.append(f"copying frame 1 without any network beats the adapter at t={beaten}")
    if not out:
        out.append("adapter on < 0.9 x off at every t and the base beats 'signal is zero': it reads frame 1")
    return out


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

    _check_clips(videos, texts)
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
