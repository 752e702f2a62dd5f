"""Exponential moving average of the I2V-Adapter's tensors (``train.ema_decay``).

After optimiser steps 1..n, with w_k the adapter's tensors after step k and d the decay::

    avg_n = sum_k (1 - d) d^(n-k) w_k / (1 - d^n)        (avg_0 = the tensors before training)

an exponential average over roughly the last 1 / (1 - d) steps (100 at d = 0.99), bias-corrected as Adam's moments
are, so it does not lean towards the starting tensors (the zero-initialised output projection) however short the run.
Kept as m_n = d m_{n-1} + (1 - d) w_n (m_0 = 0) in fp64, so that long runs with d near 1 lose nothing to rounding
(one more copy of the adapter at 8 bytes a number: 198 MB for SD1.5's, 1.6 GB for SDXL's), and divided on read.

With ``train.ema_decay > 0`` the adapter files a run writes (``adapter.safetensors``, the
``checkpoints/adapter-stepN`` snapshots) hold the average, and the run's after-train samples use it; Lightning's
resumable checkpoints keep the trained tensors and the average both, so a resumed run continues both exactly.
"""
from __future__ import annotations

from typing import Mapping

import torch


class AdapterEMA:
    """A bias-corrected exponential moving average of named tensors (module docstring), fp64, on their device."""

    def __init__(self, params: Mapping[str, torch.Tensor], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) (0 turns the average off), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.moment = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor]) -> None:
        self.updates += 1
        for k, p in params.items():
            if self.moment[k].device != p.device:   # the module moved to its device after this was made
                self.moment[k] = self.moment[k].to(p.device)
            self.moment[k].mul_(self.decay).add_(p.detach().double(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def tensors(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The averages, in the dtype of ``params`` (the adapter's tensors; what gets saved). Before the first
        update: ``params`` themselves, which have not moved yet."""
        if self.updates == 0:
            return {k: p.detach().clone() for k, p in params.items()}
        correction = 1.0 - self.decay ** self.updates
        return {k: (self.moment[k] / correction).to(p.dtype) for k, p in params.items()}

    @torch.no_grad()
    def copy_to(self, params: Mapping[str, torch.Tensor]) -> None:
        for k, avg in self.tensors(params).items():
            params[k].copy_(avg)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "moment": {k: v.detach().cpu().clone() for k, v in self.moment.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        missing = set(self.moment) - set(state["moment"])
        unexpected = set(state["moment"]) - set(self.moment)
        if missing or unexpected:
            raise RuntimeError(f"the checkpoint's adapter average does not match the adapter: missing "
                               f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        if float(state["decay"]) != self.decay:
            raise ValueError(f"the checkpoint's adapter average has decay {state['decay']}, this run "
                             f"train.ema_decay={self.decay}: resume with the run's decay")
        self.updates = int(state["updates"])
        for k in self.moment:
            self.moment[k] = state["moment"][k].to(self.moment[k].device, torch.float64).clone()
