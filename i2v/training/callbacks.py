"""Training callbacks: adapter-only safetensors snapshots, sample videos to the logger, data-skip reports."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class AdapterCheckpoint(L.Callback):
    """Writes ``checkpoints/adapter-step{N}.safetensors`` every ``every_n_steps`` and ``adapter.safetensors`` at the
    end of training: exactly the I2V-Adapter tensors + the resolved config (what ``sample.py ckpt=...`` loads)."""

    def __init__(self, out_dir, every_n_steps: int = 1000, config: DictConfig | dict | None = None,
                 overwrite: bool = False):
        self.out_dir = Path(out_dir)
        self.every = int(every_n_steps or 0)
        self.config = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else (config or {})
        self.overwrite = overwrite
        self._last_saved: int | None = None

    def _save(self, module, path: Path, overwrite: bool) -> None:
        from i2v.checkpoints.adapter_io import save_adapter

        if module.global_rank != 0:
            return
        bundle = module.bundle
        save_adapter(path, bundle.trainable, backbone=bundle.name, config=self.config, overwrite=overwrite)
        log.info("saved adapter to %s", path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # a skipped (NaN) step repeats global_step: save each step once; an existing file of another run is kept
        if self.every and step > 0 and step % self.every == 0 and step != self._last_saved:
            self._last_saved = step
            self._save(pl_module, self.out_dir / "checkpoints" / f"adapter-step{step}.safetensors",
                       overwrite=self.overwrite)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(pl_module, self.out_dir / "adapter.safetensors", overwrite=self.overwrite)


class SampleVideos(L.Callback):
    """Every ``every_n_steps``, sample one short video from the first validation clip and log it."""

    def __init__(self, every_n_steps: int, sample_cfg: DictConfig):
        self.every = int(every_n_steps)
        self.sample_cfg = sample_cfg

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every or step == 0 or step % self.every or trainer.global_rank != 0:
            return
        from i2v.sampling import generate_one

        was_training = pl_module.training
        pl_module.eval()
        out = generate_one(pl_module.bundle, self.sample_cfg, batch["video"][0, 0], batch["text"][0], seed=0,
                           progress=False)
        pl_module.train(was_training)
        video = ((out["video"].clamp(-1, 1) + 1) * 127.5).to(torch.uint8).cpu()
        for lg in trainer.loggers:
            if hasattr(lg, "log_video"):
                lg.log_video("samples/video", [video.numpy()], step=step, fps=[8])
