"""Resumable training phases of toy pretraining (used by :mod:`i2v.toy.pretrain`).

One phase = AdamW + linear warm-up/cosine lr + gradient clipping + an EMA of the trained parameters, copied into them
at the end. Every ``checkpoint_every`` steps :class:`PhaseState` writes all model weights, the EMA, optimiser, lr
schedule, RNG, data position and loss history, so a run of hours resumes exactly where it stopped (the resumed
run's weights are bit-identical to an uninterrupted one's) and refuses a state written with other settings.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from i2v.utils.ema import ExponentialMovingAverage
from i2v.utils.io import atomic_write
from i2v.utils.lr import lr_lambda

if TYPE_CHECKING:  # pretrain imports this module
    from i2v.toy.batches import ClipStream
    from i2v.toy.pretrain import PretrainConfig, ToyModels


def _parts(models: ToyModels) -> dict[str, nn.Module]:
    """The trained modules by name (image encoder and resampler only after phase B starts)."""
    parts = {"unet": models.unet, "text": models.text, "image_encoder": models.image_encoder,
             "resampler": models.image_proj}
    return {k: m for k, m in parts.items() if m is not None}


def _model_states(models: ToyModels) -> dict[str, dict[str, torch.Tensor]]:
    return {k: {n: v.detach().clone() for n, v in m.state_dict().items()} for k, m in _parts(models).items()}


def _resume_key(cfg: PretrainConfig) -> dict:
    """The settings a saved state must match to be resumed (everything but logging and the state folder)."""
    d = {k: v for k, v in cfg.__dict__.items() if k not in ("progress", "state_dir", "log_every", "checkpoint_every")}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# Settings renamed since states and MANIFEST.json files were written (the shipped MANIFEST says "n_frames"):
# old name -> new name, applied when a stored settings dict is read.
RENAMED = {"n_frames": "num_frames"}


# Settings added since: the value runs made before they existed used (history: stays as written if a default moves).
ADDED = {"radius_range": [0.1, 0.18], "texture_smooth": 0.0, "texture_smooth_knots": 3, "init_sha256": None}


def upgrade_settings(d: dict) -> dict:
    """A stored settings dict (a saved state's resume key, a MANIFEST ``config``) with old names mapped to new and
    settings added since filled in with the value those runs used."""
    return {**ADDED, **{RENAMED.get(k, k): v for k, v in d.items()}}


class PhaseState:
    """Resumable training state of one phase in ``<state_dir>/<name>.pt`` (``torch.load(weights_only=True)``):
    all model weights, the EMA, optimiser, lr schedule, RNG, data position and loss history."""

    def __init__(self, name: str, cfg: PretrainConfig):
        self.path = Path(cfg.state_dir) / f"{name}.pt" if cfg.state_dir else None
        self.key = _resume_key(cfg)

    def load(self) -> Optional[dict]:
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("key") is not None:
            state["key"] = upgrade_settings(state["key"])
        if state.get("key") != self.key:
            raise ValueError(f"{self.path} was written with other settings ({state.get('key')}); delete the "
                             f"folder {self.path.parent} to start over")
        return state

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        atomic_write(self.path, lambda tmp: torch.save({**state, "key": self.key}, tmp), overwrite=True)


def train_loop(name: str, models: ToyModels, params: list[nn.Parameter], steps: int, lr: float,
               cfg: PretrainConfig, stream: "ClipStream", g: torch.Generator,
               loss_fn: Callable[[], torch.Tensor]) -> dict:
    """AdamW + warm-up/cosine + grad clip + EMA of ``params`` (copied into them at the end); resumable through
    :class:`PhaseState`. Returns ``{"losses": [...], "log": [[step, ema_loss], ...]}``."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    warmup = min(cfg.warmup, max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, steps, warmup, cfg.min_lr_ratio))
    named = {str(i): p for i, p in enumerate(params)}
    ema = ExponentialMovingAverage(named, cfg.ema_decay, form="warmup")   # diffusers' warm-up form
    losses, log, ema_loss, step = [], [], None, 0
    store = PhaseState(name, cfg)
    saved = store.load()
    if saved is not None:
        parts = _parts(models)
        for k, sd in saved["models"].items():
            parts[k].load_state_dict(sd, strict=True)
        if saved["done"]:
            stream.pos = saved["stream_pos"]
            g.set_state(saved["rng"])
            print(f"[{name}] finished earlier; loaded from {store.path}")
            return {"losses": saved["losses"], "log": saved["log"]}
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        losses, log, ema_loss, step = saved["losses"], saved["log"], saved["ema_loss"], saved["step"]
        ema.load_state_dict({"decay": ema.decay, "form": ema.form, "updates": step,
                             "moment": dict(zip(named, saved["ema"]))})
        stream.pos = saved["stream_pos"]
        g.set_state(saved["rng"])
        print(f"[{name}] resuming at step {step}/{steps} from {store.path}")

    def snapshot(done: bool) -> dict:
        return {"models": _model_states(models), "ema": [e.clone() for e in ema.moment.values()],
                "opt": opt.state_dict(), "sched": sched.state_dict(), "losses": losses, "log": log,
                "ema_loss": ema_loss, "step": step, "stream_pos": stream.pos, "rng": g.get_state(), "done": done}

    bar = tqdm(range(step, steps), desc=name, disable=not cfg.progress, mininterval=5.0, initial=step, total=steps)
    for step_i in bar:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        ema.update(named)
        value = loss.item()
        losses.append(value)
        ema_loss = value if ema_loss is None else 0.98 * ema_loss + 0.02 * value
        step = step_i + 1
        bar.set_postfix(loss=f"{ema_loss:.4f}", refresh=False)
        if step % cfg.log_every == 0 or step == steps:
            log.append([step, round(ema_loss, 5)])
            tqdm.write(f"[{name}] step {step}/{steps} loss(ema) {ema_loss:.4f} lr {sched.get_last_lr()[0]:.2e}")
        if step % cfg.checkpoint_every == 0 and step < steps:
            store.save(snapshot(False))
    ema.copy_to(named)
    store.save(snapshot(True))
    return {"losses": losses, "log": log}
