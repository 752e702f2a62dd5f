"""First-frame-clean training of the I2V-Adapter as a LightningModule (paper §3.2, §4.1; DESIGN.md "Training").

One step::

    z   = codec.encode(video)                      # (B, C, F, h, w)
    t   ~ U{0..T-1} per video,  ε ~ N(0, I)        # train.timestep_skew > 0 leans t to high noise
    z_t = add_noise(z, ε, t);  z_t[:, :, 0] = z[:, :, 0]     # frame 0 clean, set AFTER noising
    ε̂   = unet(z_t, t, context(text, first frame))
    loss = mse(ε̂[:, :, 1:], ε[:, :, 1:])                      # frames 2..F only

(for a v-prediction backbone the network output is compared with v = α_t ε − σ_t z instead of ε:
``schedule.target``).

With ``adapter.noised_kv`` (not the paper's method) ε̂ comes from
:func:`i2v.models.noised_kv.with_noised_first_frame_kv`: frame 1 noised with its own ε to t feeds the finest attn1
layers' keys/values for frames 2..F.

Everything but the I2V-Adapter tensors is frozen (asserted at start, counts printed).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F

from i2v.models.noised_kv import with_noised_first_frame_kv
from i2v.pipeline.bundle import Bundle
from i2v.training.ema import AdapterEMA
from i2v.utils.lr import schedule_lambda

log = logging.getLogger(__name__)


def first_frame_clean_noising(z: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule) -> torch.Tensor:
    """Noise every frame of ``z`` (B, C, F, h, w) to its video's timestep ``t`` (B,), then put frame 0 back clean."""
    z_t = schedule.add_noise(z, eps, t)
    z_t[:, :, 0] = z[:, :, 0]
    return z_t


def check_noised_kv_training(noised_kv: bool, train: dict) -> None:
    """``adapter.noised_kv`` with ``train.gradient_checkpointing`` is refused: checkpointing recomputes the blocks
    during backward, after the noised-K/V processors are restored, so the recomputed activations would not be the
    forward's and the gradients would be silently wrong."""
    if noised_kv and train.get("gradient_checkpointing"):
        raise ValueError("adapter.noised_kv=true does not work with train.gradient_checkpointing=true yet; "
                         "turn one of them off")


def sample_timesteps(b: int, num_train_timesteps: int, skew: float = 0.0,
                     generator: Optional[torch.Generator] = None, low: int = 0) -> torch.Tensor:
    """``b`` training timesteps on the CPU, in {low..T-1} (``low``: ``adapter.i2v_min_t``, 0 in the paper).
    ``skew`` = 0: uniform (the paper). ``skew`` = s > 0: density proportional to ((t - low)/(T - low))^s, i.e.
    t = low + floor((T - low)·u^(1/(1+s))) with u ~ U(0, 1), so the draws lean to the high-noise end where sampling
    from pure noise decides the layout (mean (t - low)/(T - low) = (1+s)/(2+s): 2/3 at s = 1)."""
    if skew < 0:
        raise ValueError(f"train.timestep_skew must be >= 0 (0 = uniform), got {skew}")
    if not 0 <= low < num_train_timesteps:
        raise ValueError(f"the lowest training timestep must be in [0, {num_train_timesteps}), got {low}")
    if skew == 0:
        return torch.randint(low, num_train_timesteps, (b,), generator=generator, device="cpu")
    u = torch.rand(b, generator=generator, device="cpu", dtype=torch.float64)
    span = num_train_timesteps - low
    return low + (u.pow(1.0 / (1.0 + skew)) * span).long().clamp(max=span - 1)


def masked_frame_loss(eps_hat: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """MSE over frames 1..F-1 (0-based) of (B, C, F, h, w) tensors (network output vs its target: ε, or v for a
    v-prediction backbone); frame 0 gets no gradient."""
    return F.mse_loss(eps_hat[:, :, 1:].float(), eps[:, :, 1:].float())


def first_frame_clean_loss(unet, schedule, z: torch.Tensor, cond: dict, generator: Optional[torch.Generator] = None,
                           timestep_skew: float = 0.0, noised_kv: bool = False,
                           min_t: int = 0) -> dict[str, torch.Tensor]:
    """The objective of one step on clean latents ``z`` (B, C, F, h, w) and their condition (``Bundle.condition``):
    t then ε drawn from ``generator`` on the CPU, frame 0 kept clean, loss on frames 2..F. ``noised_kv``: the
    network runs through :func:`~i2v.models.noised_kv.with_noised_first_frame_kv`, frame 1 noised with its own ε
    (``adapter.noised_kv``, not the paper's method). ``min_t``: t drawn from {min_t..T-1} only
    (``adapter.i2v_min_t``, the timesteps where the branch runs). Returns the loss and the tensors tests inspect
    (``z``, ``z_t``, ``eps``, ``eps_hat``, ``target``, ``t``)."""
    t = sample_timesteps(z.shape[0], schedule.num_train_timesteps, timestep_skew, generator, low=min_t).to(z.device)
    eps = torch.randn(z.shape, generator=generator, device="cpu", dtype=z.dtype).to(z.device)
    z_t = first_frame_clean_noising(z, eps, t, schedule)
    def run(x: torch.Tensor) -> torch.Tensor:
        return unet(x, t, cond["context"], added_cond=cond.get("added_cond"))

    if noised_kv:
        out = with_noised_first_frame_kv(unet, run, z_t, schedule.add_noise(z[:, :, :1], eps[:, :, :1], t))
    else:
        out = run(z_t)
    target = schedule.target(z, eps, t)
    return {"loss": masked_frame_loss(out, target), "z": z, "z_t": z_t, "eps": eps, "eps_hat": out,
            "target": target, "t": t}


class I2VAdapterModule(L.LightningModule):
    """Trains only ``bundle.trainable`` (the I2V-Adapter's ``to_q_ff``/``to_out_ff`` tensors)."""

    def __init__(self, bundle: Bundle, optim: dict, train: dict, config: Optional[dict] = None):
        super().__init__()
        self.bundle = bundle
        self.unet = bundle.unet
        self.optim_cfg = dict(optim)
        self.train_cfg = dict(train)
        self.run_config = config or {}
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self._check_frozen()
        check_noised_kv_training(bundle.noised_kv, self.train_cfg)
        decay = float(self.train_cfg.get("ema_decay") or 0.0)
        self.ema = AdapterEMA(bundle.trainable, decay) if decay > 0 else None
        self._skipped_this_step = False        # the step's loss was NaN/Inf: no update, no average update
        self._ema_from_weights = False         # resumed from a checkpoint without an average: start it there
        if self.train_cfg.get("gradient_checkpointing"):
            self.unet.gradient_checkpointing = True

    # ------------------------------------------------------------------ setup
    def _check_frozen(self) -> None:
        trainable = {n for n, p in self.bundle.named_parameters() if p.requires_grad}
        expected = {f"unet.{k}" for k in self.bundle.trainable}
        if trainable != expected:
            extra = sorted(trainable - expected)[:5]
            missing = sorted(expected - trainable)[:5]
            raise RuntimeError(f"only the I2V-Adapter may be trainable; unexpected trainable {extra}, "
                               f"frozen adapter tensors {missing}")
        n_train = sum(p.numel() for p in self.bundle.trainable.values())
        n_frozen = sum(p.numel() for p in self.bundle.parameters() if not p.requires_grad)
        msg = f"trainable {n_train:,} parameters ({len(self.bundle.trainable)} tensors), frozen {n_frozen:,}"
        if log.hasHandlers():   # under Hydra: console and the run's log file, once
            log.info(msg)
        else:                   # a notebook or script without logging set up: still shown
            print(msg)

    def configure_optimizers(self):
        params = list(self.bundle.trainable.values())
        if not params:
            raise RuntimeError("nothing to train: the adapter config has no trainable tensors "
                               "(adapter=no_i2v / none are sampling-only ablations)")
        opt = torch.optim.AdamW(params, lr=self.optim_cfg["lr"], weight_decay=self.optim_cfg.get("weight_decay", 0.0),
                                betas=tuple(self.optim_cfg.get("betas", (0.9, 0.999))))
        schedule = self.optim_cfg.get("schedule", "constant")
        warmup = int(self.optim_cfg.get("warmup_steps", 0))
        if schedule == "constant" and warmup == 0:
            return opt   # the paper's fixed lr
        total = float(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0.0
        factor = schedule_lambda(schedule, int(total) if math.isfinite(total) else 0, warmup,
                                 float(self.optim_cfg.get("min_lr_ratio", 0.0)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor),
                                                   "interval": "step", "name": "lr"}}

    def configure_model(self) -> None:
        if self.train_cfg.get("compile") and not getattr(self, "_compiled", False):
            self.unet.forward = torch.compile(self.unet.forward)
            self._compiled = True

    # ------------------------------------------------------------------ step
    def compute_loss(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Loss and the tensors tests inspect. ``batch["video"]``: (B, F, 3, H, W) in [-1, 1]; ``batch["text"]``: list."""
        video = batch["video"].to(self.device)
        texts = list(batch["text"])
        b = video.shape[0]
        dev = video.device
        with torch.no_grad():
            z = self.bundle.encode_video(video)                                  # (B, C, F, h, w)
            drop_text = torch.rand(b, generator=generator, device="cpu") < self.train_cfg.get("text_drop_prob", 0.0)
            texts = ["" if d else s for s, d in zip(texts, drop_text.tolist())]
            drop_img = torch.rand(b, generator=generator, device="cpu") < self.train_cfg.get("image_drop_prob", 0.0)
            cond = self.bundle.condition(texts, video[:, 0], drop_image=drop_img.to(dev))
        skew = float(self.train_cfg.get("timestep_skew", 0.0))
        return first_frame_clean_loss(self.unet, self.bundle.schedule, z, cond, generator, skew,
                                      noised_kv=self.bundle.noised_kv, min_t=self.bundle.i2v_min_t)

    def step_generator(self) -> torch.Generator:
        """Noise, timesteps and condition drops of a step are a pure function of (seed, rank, global step), so a
        resumed run draws exactly what an uninterrupted one would."""
        seed = int(self.run_config.get("seed", 0))
        return torch.Generator().manual_seed(seed * 1_000_003 + self.global_rank * 7_919 + self.global_step)

    def training_step(self, batch: dict, batch_idx: int):
        loss = self.compute_loss(batch, generator=self.step_generator())["loss"]
        self._skipped_this_step = not bool(torch.isfinite(loss))
        if self._skipped_this_step:
            self.nonfinite_in_a_row += 1
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps))
            limit = self.train_cfg.get("max_nonfinite_in_a_row", 10)
            if self.nonfinite_in_a_row >= limit:
                raise RuntimeError(f"loss was NaN/Inf for {self.nonfinite_in_a_row} steps in a row (step "
                                   f"{self.global_step}); lower the lr, use bf16 instead of fp16, or check the data")
            return None  # Lightning skips the optimiser step
        self.nonfinite_in_a_row = 0
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["video"].shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else 0.0)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad.detach().float().norm() for p in self.bundle.trainable.values() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.stack(grads).norm())

    # ------------------------------------------------------------------ the adapter's moving average
    def on_train_start(self) -> None:
        if self.ema is not None and self._ema_from_weights:
            self.ema = AdapterEMA(self.bundle.trainable, self.ema.decay)
            self._ema_from_weights = False
        if self.trainer.ckpt_path is not None:
            self._configured_lr_on_resume()

    def _configured_lr_on_resume(self) -> None:
        """A resumed optimizer comes back with the lr it ran with; ``optim.lr`` changed on the resume's command line
        is what the user asked for: it replaces that (the schedule's factor at this step applied; the optimizer's
        moments are kept), with a note."""
        want = float(self.optim_cfg["lr"])
        opt = self.trainer.optimizers[0]
        had = float(opt.param_groups[0].get("initial_lr", opt.param_groups[0]["lr"]))
        if math.isclose(had, want, rel_tol=1e-9):
            return
        configs = self.trainer.lr_scheduler_configs
        sched = configs[0].scheduler if configs else None
        if sched is not None:
            sched.base_lrs = [want] * len(sched.base_lrs)
            lrs = [want * f(sched.last_epoch) for f in sched.lr_lambdas]
        else:
            lrs = [want] * len(opt.param_groups)
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr
            if "initial_lr" in group:
                group["initial_lr"] = want
        log.info("optim.lr=%g replaces the resumed run's %g from step %d on (the optimizer's moments are kept)",
                 want, had, self.trainer.global_step)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # here, not in on_train_batch_end: the step's checkpoint callbacks run before the module's batch-end hook
        if self.ema is not None and not self._skipped_this_step:
            self.ema.update(self.bundle.trainable)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """What the run's adapter files hold: the moving average with ``train.ema_decay > 0``, else the trained
        tensors."""
        return self.ema.tensors(self.bundle.trainable) if self.ema is not None else dict(self.bundle.trainable)

    def use_average(self) -> None:
        """Put the moving average into the adapter (after training: the after-train samples use what was saved)."""
        if self.ema is not None:
            self.ema.copy_to(self.bundle.trainable)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["adapter_ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is None:
            if "adapter_ema" in checkpoint:
                log.warning("the resume checkpoint holds an adapter average, but train.ema_decay is 0: it is dropped "
                            "and the run goes on with the trained tensors only")
            return
        if "adapter_ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["adapter_ema"])
        else:
            log.warning("the resume checkpoint holds no adapter average (its run had train.ema_decay 0): the average "
                        "starts from the resumed tensors")
            self._ema_from_weights = True

    def validation_step(self, batch: dict, batch_idx: int):
        g = torch.Generator().manual_seed(1000 + batch_idx)
        loss = self.compute_loss(batch, generator=g)["loss"]
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["video"].shape[0])
        return loss

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, *args, **kwargs) -> dict[str, Any]:
        """Lightning checkpoints hold only the trainable tensors (the frozen model is rebuilt from config)."""
        return {f"bundle.unet.{k}": p.detach() for k, p in self.bundle.trainable.items()}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        expected = {f"bundle.unet.{k}" for k in self.bundle.trainable}
        got = set(state_dict)
        if strict and got != expected:
            raise RuntimeError(f"checkpoint tensors do not match the adapter: missing {sorted(expected - got)[:5]}, "
                               f"unexpected {sorted(got - expected)[:5]}")
        with torch.no_grad():
            for k, p in self.bundle.trainable.items():
                if f"bundle.unet.{k}" in state_dict:
                    p.copy_(state_dict[f"bundle.unet.{k}"])
        return None
