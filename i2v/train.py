"""``train(cfg)``: the logic behind ``python train.py`` (configs/train.yaml)."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from i2v.bundle import build_bundle, check_paths
from i2v.training.callbacks import AdapterCheckpoint, SampleVideos
from i2v.training.module import I2VAdapterModule

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, out_dir: Path, extra_callbacks: list | None = None, **overrides) -> L.Trainer:
    loggers = [instantiate(v) for v in (cfg.get("logger") or {}).values()]
    # the adapter-only safetensors are always written; Lightning's resumable checkpoints unless
    # trainer.enable_checkpointing=false
    callbacks = [AdapterCheckpoint(out_dir, every_n_steps=cfg.train.save_every_n_steps, config=cfg,
                                   overwrite=cfg.overwrite)]
    if cfg.trainer.get("enable_checkpointing", True):
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=out_dir / "lightning", save_last=True,
                                                             every_n_train_steps=cfg.train.save_every_n_steps))
    if cfg.train.get("sample_every_n_steps"):
        sampling = OmegaConf.create(OmegaConf.to_container(cfg.sampling, resolve=True))
        callbacks.append(SampleVideos(int(cfg.train.sample_every_n_steps), sampling))
    callbacks += extra_callbacks or []
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **overrides)


def check_stage(cfg: DictConfig) -> None:
    """The backbone trains on this stage (paper §4.1: SDXL on stage 2 only); else one line that says why."""
    stage = str(cfg.stage.name)
    allowed = [str(s) for s in cfg.backbone.get("train_stages") or [stage]]
    if stage not in allowed:
        raise ValueError(f"backbone={cfg.backbone.name} trains on stage {' or '.join(allowed)} only (paper §4.1), "
                         f"not stage={stage}: pass stage={allowed[0]}")


def check_run_inputs(cfg: DictConfig) -> None:
    """One error naming every unset weight path and every unset data field (``???``) of this run."""
    problems = []
    try:
        check_paths(cfg.backbone, cfg.adapter)
    except FileNotFoundError as e:
        problems.append(str(e))
    unset = sorted(OmegaConf.missing_keys(cfg.data))   # full keys: data.dataset.root
    if unset:
        target = str(cfg.data.dataset.get("_target_", "")).rsplit(".", 1)[-1]
        problems.append(f"stage={cfg.stage.name} data ({target}) needs: " + ", ".join(unset))
    if problems:
        raise FileNotFoundError("\n".join(problems))


def train(cfg: DictConfig) -> dict:
    """Train the adapter described by ``cfg``; returns {"adapter": path or None, "out_dir": path, ...}."""
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_stage(cfg)
    check_run_inputs(cfg)
    final = out_dir / "adapter.safetensors"
    if final.exists() and not cfg.overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=true to replace it")

    bundle = build_bundle(cfg.backbone, cfg.adapter, device="cpu", dtype=torch.float32, for_training=True)
    result: dict = {"out_dir": str(out_dir), "adapter": None}
    if not bundle.trainable:
        print(f"adapter={cfg.adapter.name} has no trainable tensors: nothing to train "
              "(a sampling-only ablation); skipping to the after-train steps")
    else:
        size, frames = cfg.data.get("size"), cfg.data.get("n_frames")
        if size is not None and frames is not None:   # the stage's clip shape must fit the backbone
            hw = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)
            bundle.check_video_shape(*hw, int(frames))
        datamodule = instantiate(cfg.data, _recursive_=False)
        module = I2VAdapterModule(bundle, optim=cfg.optim, train=cfg.train,
                                  config=OmegaConf.to_container(cfg, resolve=True))
        trainer = build_trainer(cfg, out_dir)
        # weights_only=True explicitly: a resume file cannot run code, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.train.resume, weights_only=True)
        result["adapter"] = str(final)
        result["steps"] = int(trainer.global_step)
        if trainer.callback_metrics.get("train/loss") is not None:
            result["final_loss"] = float(trainer.callback_metrics["train/loss"])
    if cfg.after_train.sample or cfg.after_train.evaluate:
        from i2v.toy_eval import sample_and_score

        result.update(sample_and_score(cfg, bundle, out_dir))
    return result
