"""Learning-rate schedules shared by adapter training (``optim.schedule``) and toy pretraining."""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_lambda(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def check_schedule(schedule: str, warmup: int = 0, min_ratio: float = 0.0) -> None:
    """``optim.schedule`` / ``optim.warmup_steps`` / ``optim.min_lr_ratio`` are usable; else one clear error."""
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup < 0 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"optim.warmup_steps must be >= 0 and optim.min_lr_ratio in [0, 1], got {warmup}, {min_ratio}")


def schedule_lambda(schedule: str, total: int, warmup: int = 0, min_ratio: float = 0.0):
    """The multiplier of the peak lr at each optimiser step (for ``torch.optim.lr_scheduler.LambdaLR``):
    ``constant`` -- 1 after a linear warm-up of ``warmup`` steps (0: none; the paper's fixed lr);
    ``cosine`` -- the same warm-up, then cosine from 1 to ``min_ratio`` at step ``total``."""
    check_schedule(schedule, warmup, min_ratio)
    if schedule == "cosine" and total < 1:
        raise ValueError("optim.schedule=cosine needs a known run length (trainer.max_steps or max_epochs)")
    final = min_ratio if schedule == "cosine" else 1.0      # constant: the warm-up, then a cosine from 1 to 1
    return lambda step: lr_lambda(step, total, warmup, final)
