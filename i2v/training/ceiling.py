"""How far can first-frame-clean training get when more than the I2V-Adapter trains? A ceiling for the adapter.

The paper trains only W'_Q and W'_O (eq. 6) on a frozen base. When the learning diagnostic
(:mod:`i2v.training.diagnose`) says the adapter barely beats the base, this check tells *where* the limit sits: the
same first-frame-clean objective (frame 0 clean, loss on frames 1..F-1) is trained with one more group of the
base's parameters unfrozen, and the frames-2..F ε-loss per timestep is compared with the untouched base's:

* ``adapter`` -- the I2V-Adapter alone (the paper; what ``train.py`` does);
* ``attn1``   -- the adapter and every *spatial* self-attention's projections (to_q/to_k/to_v/to_out): the branch
  reads *these* keys and values of frame 0, so a large gain over ``adapter`` says the frozen features are the limit;
* ``motion``  -- the adapter and the motion modules (the temporal route to frame 0);
* ``up``      -- the adapter and the spatial layers of the up path and the output (up blocks without their motion
  modules, ``conv_norm_out``, ``conv_out``): a large gain over ``adapter`` says the frozen decoder cannot turn what
  the branch brings into the output;
* ``all``     -- every UNet parameter: what the network can do with frame 0 at all in this budget.

Only ``adapter`` is the method; the others change the base and exist to locate a bottleneck (README, toy section).
Used by ``scripts/ceiling_check.py``.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from i2v.training.module import first_frame_clean_loss

GROUPS: dict[str, Callable[[str], bool]] = {
    "adapter": lambda name: False,
    "attn1": lambda name: ".attentions." in name and ".attn1." in name,   # spatial only (motion modules have attn1 too)
    "motion": lambda name: "motion_modules." in name,
    "up": lambda name: (name.startswith("up_blocks.") and "motion_modules." not in name)
    or name.startswith(("conv_norm_out.", "conv_out.")),
    "all": lambda name: True,
}


def unfreeze(bundle, group: str) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Make the I2V-Adapter and the base parameters of ``group`` (:data:`GROUPS`) trainable on ``bundle.unet``.

    Returns ``(adapter_params, base_params)``; everything else stays frozen."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {sorted(GROUPS)}, got {group!r}")
    if not bundle.trainable:
        raise ValueError("the bundle has no I2V-Adapter: build it with an adapter config that has one (adapter=full)")
    adapter_ids = {id(p) for p in bundle.trainable.values()}
    adapter, base = list(bundle.trainable.values()), []
    for p in adapter:
        p.requires_grad_(True)
    for name, p in bundle.unet.named_parameters():
        if id(p) in adapter_ids:
            continue
        p.requires_grad_(GROUPS[group](name))
        if p.requires_grad:
            base.append(p)
    return adapter, base


def train_first_frame_clean(bundle, batches: Iterator[dict], steps: int, adapter_lr: float, base_lr: float,
                            adapter_params: list, base_params: list, seed: int = 0,
                            progress: Callable[[int, float], None] | None = None) -> list[float]:
    """``steps`` AdamW steps of the training objective (DESIGN.md "Training", as ``I2VAdapterModule``: condition
    drops off) on the given parameters; the adapter and the base parameters get their own learning rates.
    ``batches`` yields ``{"video": (B, F, 3, H, W), "text": [...]}``, at least ``steps`` of them. Returns the losses."""
    groups = [{"params": adapter_params, "lr": adapter_lr}]
    if base_params:
        groups.append({"params": base_params, "lr": base_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    params = adapter_params + base_params
    g = torch.Generator().manual_seed(seed)
    dev = next(bundle.unet.parameters()).device
    was_training = bundle.unet.training
    bundle.unet.train()
    losses = []
    try:
        for step in range(steps):
            batch = next(batches)
            video = batch["video"].to(dev)
            with torch.no_grad():
                z = bundle.encode_video(video)
                cond = bundle.condition(list(batch["text"]), video[:, 0])
            loss = first_frame_clean_loss(bundle.unet, bundle.schedule, z, cond, g)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step, losses[-1])
    finally:
        bundle.unet.train(was_training)
    return losses


def format_ceiling(before: dict[int, dict[str, float]], after: dict[int, dict[str, float]], group: str) -> str:
    """Markdown table: the untouched base, the trained model (adapter on) and its ratio, "copy frame 1", and the
    frame-1 oracle of the untouched base (:mod:`i2v.training.diagnose`: how far frame 1 can take it)."""
    lines = [f"| t | base (before) | trained: {group} | / base | \"copy frame 1\" | / base | frame-1 oracle / base |",
             "|---|---|---|---|---|---|---|"]
    for t in sorted(before):
        base, now, copy = before[t]["adapter_off"], after[t]["adapter_on"], before[t]["copy_frame1"]
        oracle = before[t]["static_oracle"]
        lines.append(f"| {t} | {base:.4g} | {now:.4g} | {now / base:.3f} | {copy:.4g} | {copy / base:.3f} | "
                     f"{oracle / base:.3f} |")
    return "\n".join(lines)
