"""Exponential moving averages of named tensors: the project's one implementation, in two forms.

With w_k the tensors after update k (w_0 before the first) and d the decay:

- ``"bias_corrected"`` (the I2V-Adapter's, ``train.ema_decay``; :mod:`i2v.training.ema`)::

      avg_n = sum_{k=1..n} (1 - d) d^(n-k) w_k / (1 - d^n)          (avg_0 = w_0)

  kept as m_n = d m_{n-1} + (1 - d) w_n (m_0 = 0) and divided on read, as Adam's moments are: it does not lean
  towards the starting tensors however short the run, and d means an average over ~1 / (1 - d) updates from the
  first step on.
- ``"warmup"`` (the toy base's pretraining, :mod:`i2v.toy.loop`; diffusers' ``EMAModel`` with its default warm-up)::

      avg_n = d_n avg_{n-1} + (1 - d_n) w_n,   d_n = min(d, n / (n + 9))          (avg_0 = w_0)

  whose decay grows from 0.1 and reaches d only after ~9 / (1 - d) updates (891 at d = 0.99): for short runs it
  ignores d (two decays give the same average), which is why the adapter's is the other form.

``dtype``: what the running value is kept in (``None``: each tensor's own; the adapter's average uses float64 so
that long runs with d near 1 lose nothing to rounding).
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

FORMS = ("bias_corrected", "warmup")


class ExponentialMovingAverage:
    """The average of ``params`` (name -> tensor) over the updates it is given (module docstring), on their device."""

    def __init__(self, params: Mapping[str, torch.Tensor], decay: float, form: str = "bias_corrected",
                 dtype: Optional[torch.dtype] = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"an EMA decay must be in [0, 1) (0: the average is the last tensors), got {decay}")
        if form not in FORMS:
            raise ValueError(f"EMA form must be one of {FORMS}, got {form!r}")
        self.decay, self.form = float(decay), form
        self.updates = 0
        if form == "bias_corrected":
            self.moment = {k: torch.zeros_like(p, dtype=dtype or p.dtype) for k, p in params.items()}
        else:
            self.moment = {k: p.detach().clone().to(dtype or p.dtype) for k, p in params.items()}

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if self.form == "warmup":
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor]) -> None:
        d = self.current_decay()
        self.updates += 1
        for k, p in params.items():
            m = self.moment[k]
            if m.device != p.device:   # the module moved to its device after this was made
                m = self.moment[k] = m.to(p.device)
            if self.form == "warmup":
                m.lerp_(p.detach().to(m.dtype), 1 - d)
            else:
                m.mul_(d).add_(p.detach().to(m.dtype), alpha=1.0 - d)

    @torch.no_grad()
    def tensors(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The averages, in the dtype of ``params``. Before the first update: the starting tensors."""
        if self.form == "warmup":
            return {k: self.moment[k].to(p.dtype).clone() for k, p in params.items()}
        if self.updates == 0:                         # the tensors have not moved yet
            return {k: p.detach().clone() for k, p in params.items()}
        correction = 1.0 - self.decay ** self.updates
        return {k: (self.moment[k] / correction).to(p.dtype) for k, p in params.items()}

    @torch.no_grad()
    def copy_to(self, params: Mapping[str, torch.Tensor]) -> None:
        for k, avg in self.tensors(params).items():
            params[k].copy_(avg)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "form": self.form, "updates": self.updates,
                "moment": {k: v.detach().cpu().clone() for k, v in self.moment.items()}}

    def load_state_dict(self, state: Mapping, what: str = "the average") -> None:
        missing = set(self.moment) - set(state["moment"])
        unexpected = set(state["moment"]) - set(self.moment)
        if missing or unexpected:
            raise RuntimeError(f"{what} in the checkpoint does not match the tensors: missing {sorted(missing)[:5]}, "
                               f"unexpected {sorted(unexpected)[:5]}")
        form = state.get("form", "bias_corrected")
        if float(state["decay"]) != self.decay or form != self.form:
            raise ValueError(f"{what} in the checkpoint has decay {state['decay']} ({form}), this run {self.decay} "
                             f"({self.form})")
        self.updates = int(state["updates"])
        for k in self.moment:
            self.moment[k] = state["moment"][k].to(self.moment[k].device, self.moment[k].dtype).clone()
