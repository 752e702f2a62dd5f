"""Training callbacks: adapter-only safetensors snapshots, sample videos to the logger, run-length progress."""
from __future__ import annotations

import datetime
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from i2v.utils.paths import portable_paths
from i2v.pipeline.sampling import I2VPipeline, SamplingSettings

log = logging.getLogger(__name__)


class AdapterCheckpoint(L.Callback):
    """Writes ``checkpoints/adapter-step{N}.safetensors`` every ``every_n_steps`` and ``adapter.safetensors`` at the
    end of training: exactly the I2V-Adapter tensors (their moving average with ``train.ema_decay > 0``) + the
    resolved config (what ``sample.py ckpt=...`` loads).

    Ctrl-C (SIGINT) or SIGTERM (``kill``, a scheduler's stop) ends the run at the end of the current step instead
    of losing the steps since the last save: the adapter of that step (``checkpoints/adapter-step{N}.safetensors``)
    and, unless checkpointing is off, a resumable ``lightning/last.ckpt`` are written, ``adapter.safetensors`` is
    not (the run is not finished); ``interrupted_at`` holds the step and ``stopped_by`` the signal's name. A second
    Ctrl-C stops at once, as before."""

    def __init__(self, out_dir, every_n_steps: int = 1000, config: DictConfig | dict | None = None,
                 overwrite: bool = False):
        self.out_dir = Path(out_dir)
        self.every = int(every_n_steps or 0)
        config = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else (config or {})
        self.config = portable_paths(config)   # no absolute path of this machine in a file that may be shipped
        self.overwrite = overwrite
        self._last_saved: int | None = None
        self.interrupted_at: int | None = None
        self.stopped_by: str | None = None
        self._stop_asked = False
        self._old_handler = None

    def save(self, module, path: Path) -> None:
        """The adapter of ``module`` to ``path`` now (as at the end of training)."""
        self._save(module, path, overwrite=self.overwrite)

    def _save(self, module, path: Path, overwrite: bool) -> None:
        from i2v.checkpoints.adapter_io import save_adapter

        if module.global_rank != 0:
            return
        tensors = module.adapter_tensors()
        save_adapter(path, tensors, backbone=module.bundle.name, config=self.config, overwrite=overwrite)
        log.info("saved adapter to %s", path)

    # ---- Ctrl-C: stop at the end of the step, keeping it ---------------------------------------------------------
    def _on_sigint(self, signum, frame) -> None:
        if self._stop_asked:          # the second Ctrl-C: Python's KeyboardInterrupt, Lightning's shutdown
            self._restore_handler()
            raise KeyboardInterrupt
        self._stop_asked = True
        print("\nCtrl-C: stopping after this step and saving it (Ctrl-C again to stop at once, losing it)",
              file=sys.stderr, flush=True)

    def _restore_handler(self) -> None:
        if self._old_handler is not None:
            signal.signal(signal.SIGINT, self._old_handler)
            self._old_handler = None

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():   # handlers can only be set there
            self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore_handler()
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        # SIGTERM received after this step's on_train_batch_end: Lightning ends the fit before the next one
        if isinstance(exception, SIGTERMException) and self.interrupted_at is None and trainer.global_step > 0:
            self._keep_step(trainer, pl_module, "SIGTERM")

    def _keep_step(self, trainer, pl_module, by: str) -> None:
        """The step reached, kept: its adapter file and (unless checkpointing is off) a resumable last.ckpt."""
        step = trainer.global_step
        if step != self._last_saved:
            self._last_saved = step
            self._save(pl_module, self.out_dir / "checkpoints" / f"adapter-step{step}.safetensors",
                       overwrite=self.overwrite)
        self.interrupted_at, self.stopped_by = step, by
        if trainer.checkpoint_callbacks:   # what train.resume=<run folder> reads: the data position mid-epoch
            where = getattr(trainer.checkpoint_callback, "dirpath", None) or self.out_dir / "lightning"
            trainer.save_checkpoint(Path(where) / "last.ckpt", weights_only=False)
            for cb in trainer.checkpoint_callbacks:   # not again at the epoch's end (as last-v1.ckpt, whose
                cb.save_last = False                  # resume would skip the rest of the epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # Lightning's own SIGTERM handler sets received_sigterm (and ends the fit after this hook, as a SystemExit)
        sigterm = bool(getattr(trainer, "received_sigterm", False))
        stop = self._stop_asked or sigterm
        if trainer.world_size > 1:   # every rank stops at the same step, whichever got the Ctrl-C (one scalar)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and step > 0 and self.interrupted_at is None:
            self._keep_step(trainer, pl_module, "SIGTERM" if sigterm else "SIGINT")
            trainer.should_stop = True
        # a skipped (NaN) step repeats global_step: save each step once; an existing file of another run is kept
        if self.every and step > 0 and step % self.every == 0 and step != self._last_saved:
            self._last_saved = step
            self._save(pl_module, self.out_dir / "checkpoints" / f"adapter-step{step}.safetensors",
                       overwrite=self.overwrite)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handler()
        if self.interrupted_at is None:
            self._save(pl_module, self.out_dir / "adapter.safetensors", overwrite=self.overwrite)


class SampleVideos(L.Callback):
    """Every ``every_n_steps``, sample one short video from the first validation clip and log it."""

    def __init__(self, every_n_steps: int, settings: SamplingSettings):
        self.every = int(every_n_steps)
        self.settings = settings
        self._pipe: I2VPipeline | None = None

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every or step == 0 or step % self.every or trainer.global_rank != 0:
            return
        if self._pipe is None or self._pipe.bundle is not pl_module.bundle:
            self._pipe = I2VPipeline(pl_module.bundle, self.settings)
        was_training = pl_module.training
        pl_module.eval()
        out = self._pipe(batch["video"][0, 0], batch["text"][0], seed=0)
        pl_module.train(was_training)
        video = ((out.video.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).cpu()
        for lg in trainer.loggers:
            if hasattr(lg, "log_video"):
                lg.log_video("samples/video", [video.numpy()], step=step, fps=[8])


class RunLengthCheck(L.Callback):
    """Says so when ``trainer.max_steps`` cannot be reached: the epoch limit (``max_epochs`` × the batches of an
    epoch) ends the run first, e.g. ``trainer.max_steps=1600`` on the toy's one epoch of 996 batches."""

    def on_train_start(self, trainer, pl_module) -> None:
        asked, reachable = trainer.max_steps, trainer.estimated_stepping_batches
        if trainer.global_rank == 0 and asked > 0 and math.isfinite(reachable) and reachable < asked:
            log.warning(f"trainer.max_steps={asked} is not reached: trainer.max_epochs={trainer.max_epochs} ends the "
                        f"run at step {int(reachable)}; raise trainer.max_epochs (-1: max_steps alone decides) or "
                        "the dataset's size")


class StepProgress(ProgressBar):
    """The training progress of the whole run, in optimizer steps (``trainer.estimated_stepping_batches``: the
    smaller of ``max_steps`` and epochs × batches), so its total and ETA say when the run ends. On a terminal: one
    tqdm bar; otherwise (a log file, a SLURM job) one plain line every ``every`` steps and at the end."""

    def __init__(self, every: int = 50, interactive: bool | None = None):
        super().__init__()
        self.every = max(1, int(every))
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._enabled = True
        self._bar = None
        self._start = self._start_step = 0
        self._printed: int | None = None   # the step of the last plain line (a NaN-skipped step repeats a step)

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def total_steps(self, trainer) -> int | None:
        total = trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) else None

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._enabled or trainer.global_rank != 0:
            return
        self._start, self._start_step = time.perf_counter(), trainer.global_step
        if self.interactive:
            self._bar = tqdm(total=self.total_steps(trainer), initial=trainer.global_step, desc="train", unit="step",
                             dynamic_ncols=True)

    def status(self, trainer) -> str:
        """``step 120/400 (30%) | loss 0.123 | 0:00:40 elapsed, ETA 0:01:33`` (ETA from this run's step rate)."""
        step, total = trainer.global_step, self.total_steps(trainer)
        elapsed = time.perf_counter() - self._start
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"]
        loss = trainer.progress_bar_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        done = step - self._start_step
        eta = f", ETA {_hms(elapsed / done * (total - step))}" if total and done > 0 else ""
        parts.append(f"{_hms(elapsed)} elapsed{eta}")
        return " | ".join(parts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._enabled or trainer.global_rank != 0:
            return
        if self._bar is not None:
            self._bar.update(trainer.global_step - self._bar.n)
            loss = trainer.progress_bar_metrics.get("train/loss")
            if loss is not None:
                self._bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        elif trainer.global_step % self.every == 0 and trainer.global_step != self._printed:
            self._printed = trainer.global_step
            print(self.status(trainer), flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._enabled and trainer.global_rank == 0 and trainer.global_step != self._printed:
            print(self.status(trainer), flush=True)

    def print(self, *args, **kwargs) -> None:
        (self._bar.write if self._bar is not None else print)(" ".join(map(str, args)))


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))
