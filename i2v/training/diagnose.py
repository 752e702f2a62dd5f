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
colour shift of the whole frame; see :func:`frames_mse`). On the toy world this part is a constant floor of the base
at every t (the per-frame colour drift seen in its samples) and no attention-side adapter moves it.

A base that does not beat ``signal_zero`` is badly trained at that t (it does worse than ignoring its input's
signal); an adapter that reads frame 1 should move ``adapter_on`` towards (or below) ``copy_frame1`` wherever the
frames of a clip resemble frame 1. Used by ``scripts/diagnose_adapter.py`` and the toy-world tests.

The attention probes (``probes=True``) ask whether the branch has a route at all, with the adapter off:

* ``attn_zero``   -- every spatial self-attention (attn1) output set to zero. Barely above ``adapter_off``: the
  base does not use its self-attention to move content, so nothing added beside it reaches the output;
* ``cross_frame`` -- every frame's attn1 reads frame 1's keys and values (``Attn(Q_i, K_1, V_1)``, the branch of
  eq. 6 in place of the self-attention, zero-shot). Far above ``adapter_off``: the base's frame-1 keys/values
  (a clean frame at a noisy timestep) mislead it, and the branch reads exactly those;
* ``cross_frame_noisy`` -- the same swap with frame 1 noised to ``t`` like the other frames (zero-shot cross-frame
  attention as in text-to-video editing). Near ``adapter_off`` while ``cross_frame`` is far above: it is the clean
  frame, not the swap, that misleads the base.

Two more questions live in their own modules: :mod:`i2v.training.attention_focus` (can the branch find *where* in
frame 1 to read?) and :mod:`i2v.training.caption_probe` (does the model use its caption, and its direction words?).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Sequence

import torch

from i2v.toy.oracle import static_mask
from i2v.training.module import first_frame_clean_noising

PREDICTORS = ("adapter_on", "adapter_off", "copy_frame1", "signal_zero", "static_oracle")
PROBES = ("attn_zero", "cross_frame", "cross_frame_noisy")
DEFAULT_TIMESTEPS = (200, 500, 800, 950)


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


def frames_mse(eps_hat: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video ε-MSE over frames 1..F-1 of ``(B, C, F, h, w)`` tensors -> ``(total (B,), frame_mean (B,))``.

    ``frame_mean`` is the part of ``total`` carried by each frame's spatial mean per channel (the error's mean over
    h, w, squared, averaged over channels and frames): a per-frame colour/brightness shift. ``total - frame_mean``
    is the error of everything else (shapes, positions, texture)."""
    err = eps_hat[:, :, 1:].float() - eps[:, :, 1:].float()
    return err.pow(2).flatten(1).mean(1), err.mean(dim=(-2, -1)).pow(2).flatten(1).mean(1)


def check_clips(videos: torch.Tensor, texts: Sequence[str]) -> None:
    if videos.dim() != 5 or videos.shape[1] < 2 or len(texts) != videos.shape[0]:
        raise ValueError(f"videos must be (N, F>=2, 3, H, W) with one caption each, got {tuple(videos.shape)} "
                         f"and {len(texts)} captions")


def check_timesteps(bundle, timesteps: Sequence[int]) -> None:
    n_train = bundle.schedule.num_train_timesteps
    bad = [t for t in timesteps if not 0 <= int(t) < n_train]
    if bad:
        raise ValueError(f"timesteps {bad} outside [0, {n_train})")


def clip_noise(z: torch.Tensor, seed: int, t: int, start: int) -> torch.Tensor:
    """The ε of the clips ``start..`` at ``t``: a function of (seed, t, start), the same for every predictor."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + int(t) * 1009 + start)
    return torch.randn(z.shape, generator=g, dtype=torch.float32).to(z.device, z.dtype)


def predict_eps(bundle, z: torch.Tensor, z_t: torch.Tensor, eps: torch.Tensor, tt: torch.Tensor, cond: dict,
                 noised_kv: bool = False) -> torch.Tensor:
    """The UNet's prediction on ``z_t`` as the ε it stands for; ``noised_kv``: through the adapter.noised_kv forward
    (frame 1 noised with its own ε for the keys/values pass). At t below ``bundle.i2v_min_t`` (``adapter.i2v_min_t``)
    the I2V-Adapter's branch is off, as in sampling: every probe of the diagnostic predicts through here."""
    from i2v.models.adapters import i2v_adapter_gated
    from i2v.models.noised_kv import with_noised_first_frame_kv

    def run(x: torch.Tensor) -> torch.Tensor:
        return bundle.unet(x, tt, cond["context"], added_cond=cond.get("added_cond"))
    min_t = getattr(bundle, "i2v_min_t", 0)
    with i2v_adapter_gated(bundle.unet, False) if min_t and int(tt.reshape(-1)[0]) < min_t else nullcontext():
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

    check_clips(videos, texts)
    check_timesteps(bundle, timesteps)
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
                eps = clip_noise(z, seed, t, start)
                tt = torch.full((b,), int(t), dtype=torch.long, device=dev)
                z_t = first_frame_clean_noising(z, eps, tt, bundle.schedule)
                abar = float(bundle.schedule.alphas_cumprod[int(t)])
                a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
                row = sums[int(t)]
                def add(name: str, eps_hat: torch.Tensor) -> None:
                    total, frame_mean = frames_mse(eps_hat, eps)
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
                    else:   # adapter.i2v_min_t: predict_eps gates "on" off below it, as in sampling
                        set_i2v_adapter_enabled(bundle.unet, on)
                    eps_hat = predict_eps(bundle, z, z_t, eps, tt, cond, noised_kv=on and bundle.noised_kv)
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


def findings(table: dict[int, dict[str, float]], min_t: int = 0) -> list[str]:
    """Plain-language reading of the table (what to fix first). ``min_t``: the bundle's ``adapter.i2v_min_t`` (the
    branch is off below it, so "adapter on" equals "adapter off" there by design)."""
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
    gated = [t for t in table if t < min_t]
    if gated:
        out.append(f"branch off at t={gated} (adapter.i2v_min_t={min_t}): by design, not a failure to read frame 1")
    live = {t: r for t, r in table.items() if t >= min_t}
    hurts = [t for t, r in live.items() if r["adapter_on"] > 1.05 * r["adapter_off"]]
    flat = [t for t, r in live.items() if r["adapter_on"] > 0.9 * r["adapter_off"] and t not in hurts]
    if hurts:
        out.append(f"adapter adds loss (on > 1.05 x off) at t={hurts}: it hurts there; if its samples agree, "
                   f"adapter.i2v_min_t above these t keeps the branch to the timesteps where it helps "
                   f"(README, 'Beyond the paper')")
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
