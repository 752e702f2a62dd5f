"""``train(cfg)``: the logic behind ``python train.py`` (configs/train.yaml)."""
from __future__ import annotations

import logging
import shlex
import time
import warnings
import zipfile
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from i2v.pipeline.bundle import build_bundle, check_paths
from i2v.pipeline.sampling import SamplingSettings
from i2v.training.callbacks import AdapterCheckpoint, RunLengthCheck, SampleVideos, StepProgress
from i2v.training.module import I2VAdapterModule, check_noised_kv_training
from i2v.utils.lr import check_schedule

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, out_dir: Path, extra_callbacks: list | None = None, **overrides) -> L.Trainer:
    loggers = [instantiate(v) for v in (cfg.get("logger") or {}).values()]
    # the adapter-only safetensors are always written; Lightning's resumable checkpoints unless
    # trainer.enable_checkpointing=false
    callbacks = [AdapterCheckpoint(out_dir, every_n_steps=cfg.train.save_every_n_steps, config=cfg,
                                   overwrite=cfg.overwrite), RunLengthCheck()]
    if cfg.trainer.get("enable_checkpointing", True):
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=out_dir / "lightning", save_last=True,
                                                             every_n_train_steps=cfg.train.save_every_n_steps))
    if cfg.train.get("sample_every_n_steps"):
        callbacks.append(SampleVideos(int(cfg.train.sample_every_n_steps), SamplingSettings.from_config(cfg.sampling)))
    if cfg.trainer.get("enable_progress_bar", True):   # the whole run's steps, not one epoch's batches
        callbacks.append(StepProgress(every=cfg.train.progress_every_n_steps))
    callbacks += extra_callbacks or []
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **overrides)


def check_stage(cfg: DictConfig) -> None:
    """The backbone trains on this stage (paper §4.1: SDXL on stage 2 only); else one line that says why."""
    stage = str(cfg.stage.name)
    allowed = [str(s) for s in cfg.backbone.get("train_stages") or [stage]]
    if stage not in allowed:
        raise ValueError(f"backbone={cfg.backbone.name} trains on stage {' or '.join(allowed)} only (paper §4.1), "
                         f"not stage={stage}: pass stage={allowed[0]}")


# The data paths the datasets of configs/data/ read (a folder or a file), checked before any model loads.
DATA_PATHS = {"root": "folder", "video_folder": "folder", "csv_path": "file", "manifest": "file"}


def resume_checkpoint(value) -> str | None:
    """``train.resume`` as the Lightning checkpoint to resume from: a ``.ckpt`` file, or a run folder of train.py
    (its ``lightning/last.ckpt``). Anything else is a one-line error, said before any model loads."""
    if value is None or str(value).strip() == "":
        return None
    path = Path(str(value))
    if path.is_dir():
        last = path / "lightning" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"train.resume={value}: this folder has no lightning/last.ckpt (train.py writes "
                                    f"one in its run folder every train.save_every_n_steps steps)")
        return str(last)
    if not path.is_file():
        raise FileNotFoundError(f"train.resume={value} not found: give a run folder of train.py or its "
                                f"lightning/*.ckpt")
    if path.suffix == ".safetensors" or not zipfile.is_zipfile(path):
        raise ValueError(f"train.resume={value} is not a Lightning checkpoint: give a run folder of train.py or its "
                         f"lightning/*.ckpt (which also hold the optimizer state and the data position; an "
                         f"adapter .safetensors holds the adapter tensors only)")
    return str(path)


def check_run_inputs(cfg: DictConfig) -> None:
    """One error naming every unset weight path, every unset data field (``???``) and every data path that does
    not exist, of this run."""
    problems = []
    try:
        check_paths(cfg.backbone, cfg.adapter)
    except FileNotFoundError as e:
        problems.append(str(e))
    unset = sorted(OmegaConf.missing_keys(cfg.data))   # full keys: data.dataset.root
    if unset:
        target = str(cfg.data.dataset.get("_target_", "")).rsplit(".", 1)[-1]
        problems.append(f"stage={cfg.stage.name} data ({target}) needs: " + ", ".join(unset))
    for key, kind in DATA_PATHS.items():   # said here, not after the base has loaded
        value = None if OmegaConf.is_missing(cfg.data.dataset, key) else cfg.data.dataset.get(key)
        if value and not (Path(str(value)).is_dir() if kind == "folder" else Path(str(value)).is_file()):
            problems.append(f"data.dataset.{key}={value} is not a {kind}")
    if problems:
        raise FileNotFoundError("\n".join(problems))


def quiet_known_noise() -> None:
    """One line per event. Lightning gives its loggers their own console handler when it is imported before Hydra
    sets up logging, so under Hydra every Lightning line came twice: drop those handlers and let the root (Hydra's
    console + train.log) print them. The warnings silenced here are known and harmless for this code."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in [h for h in lg.handlers if type(h) is logging.StreamHandler]:
                lg.removeHandler(h)
            lg.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_advert)   # added once (same object)
    # Lightning 2.6's own _pytree.py uses torch's deprecated LeafSpec; nothing to change on our side
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # intended: the frozen base (UNet, encoders, codec) stays in eval mode; only the adapter tensors train
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # train.resume=<run folder>: the resumed run writes to its own folder, so Lightning's best-k bookkeeping of the
    # old folder is not carried over (none is used here)
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")


def _no_advert(record: logging.LogRecord) -> bool:
    """Drops the advert for a hosted logger that every Lightning Trainer prints."""
    return not str(record.getMessage()).startswith("💡 Tip")


def _how_to_go_on(out_dir: Path) -> str:
    """The command that resumes this run: the same one plus train.resume=; for a job of a multirun sweep, that
    job's own overrides (the sweep's command would run every job again)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            overrides = " ".join(shlex.quote(a) for a in hc.overrides.task if not a.startswith("train.resume="))
            return (f"go on with this job alone: python train.py {overrides} train.resume={shlex.quote(str(out_dir))}"
                    f" (the sweep's later jobs did not run)")
    except ValueError:   # not inside a Hydra app (tests, notebooks)
        pass
    return f"go on with the same command and train.resume={out_dir}"


def closing_summary(result: dict, seconds: float) -> str:
    """3-6 lines: where the adapter, the videos and the metrics went, the key metrics and the wall time."""
    lines = [f"adapter:  {result['adapter'] or '(none: nothing to train)'}"]
    if result.get("metrics_file"):
        samples = Path(result["metrics_file"]).parent / "samples"
        lines.append(f"videos:   {samples}/")
        lines.append(f"metrics:  {result['metrics_file']}")
        m = result.get("metrics") or {}
        shown = ("identity", "bg_err", "obj_err", "step_px", "net_px", "direction_agree", "flicker")
        keys = [k for k in shown if k in m]
        lines.append("          " + ", ".join(f"{k} {m[k]}" for k in keys))
    steps = f", {result['steps']} steps, final loss {result['final_loss']:.4f}" if "final_loss" in result else ""
    lines.append(f"run:      {result['out_dir']} ({_hms(seconds)} wall{steps})")
    return "\n".join(lines)


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def train(cfg: DictConfig) -> dict:
    """Train the adapter described by ``cfg``; returns {"adapter": path or None, "out_dir": path, ...}."""
    start = time.perf_counter()
    quiet_known_noise()
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_stage(cfg)
    frames = cfg.data.get("num_frames") if not OmegaConf.is_missing(cfg.data, "num_frames") else None
    if frames is not None and int(frames) < 2:   # the loss is on frames 2..F (frame 1 is kept clean, §3.2)
        raise ValueError(f"data.num_frames must be >= 2 to train the I2V-Adapter (frame 1 is its condition, the "
                         f"loss is on frames 2..F), got {frames}")
    check_noised_kv_training(bool(cfg.adapter.get("noised_kv", False)), cfg.train)   # before the base loads
    check_schedule(str(cfg.optim.get("schedule", "constant")), int(cfg.optim.get("warmup_steps", 0)),
                   float(cfg.optim.get("min_lr_ratio", 0.0)))                     # bad optim.* values: say so now
    check_run_inputs(cfg)
    resume = resume_checkpoint(cfg.train.get("resume"))
    final = out_dir / "adapter.safetensors"
    if final.exists() and not cfg.overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=true to replace it")

    bundle = build_bundle(cfg.backbone, cfg.adapter, device="cpu", dtype=torch.float32, for_training=True)
    result: dict = {"out_dir": str(out_dir), "adapter": None}
    if not bundle.trainable:
        print(f"adapter={cfg.adapter.name} has no trainable tensors: nothing to train "
              "(a sampling-only ablation); skipping to the after-train steps")
    else:
        size, frames = cfg.data.get("size"), cfg.data.get("num_frames")
        if size is not None and frames is not None:   # the stage's clip shape must fit the backbone
            hw = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)
            bundle.check_video_shape(*hw, int(frames))
        datamodule = instantiate(cfg.data, _recursive_=False)
        module = I2VAdapterModule(bundle, optim=cfg.optim, train=cfg.train,
                                  config=OmegaConf.to_container(cfg, resolve=True))
        trainer = build_trainer(cfg, out_dir)
        # weights_only=True explicitly: a resume file cannot run code, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
        saver = next(c for c in trainer.callbacks if isinstance(c, AdapterCheckpoint))
        if trainer.max_steps == 0:
            log.warning("trainer.max_steps=0: no training step is taken; adapter.safetensors is the adapter as "
                        "initialised (its output is zero: the model samples as without it)")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        except SIGTERMException:   # Lightning ends a fit on SIGTERM with a SystemExit (status 0): after the save
            if saver.interrupted_at is None:
                raise
        result["steps"] = int(trainer.global_step)
        if trainer.callback_metrics.get("train/loss") is not None:
            result["final_loss"] = float(trainer.callback_metrics["train/loss"])
        stopped = saver.interrupted_at
        if stopped is not None:   # Ctrl-C or SIGTERM: that step is saved; no final adapter, no after-train samples
            result.update(interrupted=stopped, signal=saver.stopped_by,
                          adapter=str(out_dir / "checkpoints" / f"adapter-step{stopped}.safetensors"))
            resumable = (out_dir / "lightning" / "last.ckpt").is_file()
            print(closing_summary(result, time.perf_counter() - start))
            print(f"interrupted ({saver.stopped_by}) at step {stopped} of {trainer.max_steps}: "
                  + (_how_to_go_on(out_dir) if resumable else
                     "no resumable checkpoint (trainer.enable_checkpointing=false)"))
            return result
        if not final.exists():   # max_steps=0: Lightning skips training and its end hook; the file is still due
            saver.save(module, final)
        module.use_average()   # train.ema_decay > 0: the after-train samples use the saved average
        result["adapter"] = str(final)
    if cfg.after_train.sample or cfg.after_train.evaluate:
        from i2v.toy.evaluate import sample_and_score

        result.update(sample_and_score(cfg, bundle, out_dir))
    print(closing_summary(result, time.perf_counter() - start))
    return result
