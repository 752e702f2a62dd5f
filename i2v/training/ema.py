"""Exponential moving average of the I2V-Adapter's tensors (``train.ema_decay``).

After optimiser steps 1..n, with w_k the adapter's tensors after step k and d the decay::

    avg_n = sum_k (1 - d) d^(n-k) w_k / (1 - d^n)        (avg_0 = the tensors before training)

an exponential average over roughly the last 1 / (1 - d) steps (100 at d = 0.99), bias-corrected as Adam's moments
are, so it does not lean towards the starting tensors (the zero-initialised output projection) however short the run.
Kept as m_n = d m_{n-1} + (1 - d) w_n (m_0 = 0) in fp64, so that long runs with d near 1 lose nothing to rounding
(one more copy of the adapter at 8 bytes a number: 198 MB for SD1.5's, 1.6 GB for SDXL's), and divided on read: the
``"bias_corrected"`` form of :class:`i2v.utils.ema.ExponentialMovingAverage`.

With ``train.ema_decay > 0`` the adapter files a run writes (``adapter.safetensors``, the
``checkpoints/adapter-stepN`` snapshots) hold the average, and the run's after-train samples use it; Lightning's
resumable checkpoints keep the trained tensors and the average both, so a resumed run continues both exactly.
"""
from __future__ import annotations

from typing import Mapping

import torch

from i2v.utils.ema import ExponentialMovingAverage


class AdapterEMA(ExponentialMovingAverage):
    """The adapter's average (module docstring): bias-corrected, fp64, errors in ``train.ema_decay``'s terms."""

    def __init__(self, params: Mapping[str, torch.Tensor], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) (0 turns the average off), got {decay}")
        super().__init__(params, decay, form="bias_corrected", dtype=torch.float64)

    def load_state_dict(self, state: Mapping, what: str = "the adapter average") -> None:
        try:
            super().load_state_dict(state, what)
        except ValueError as err:
            raise ValueError(f"{err}: resume with the run's train.ema_decay") from None
