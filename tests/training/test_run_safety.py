"""Training runs that cannot lose or mix work: exact mid-epoch resume, resume files that cannot run code, one
folder per run."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from i2v.cli.config import CONFIGS
from i2v.cli.rundir import claim_run_dir
from toy_fit import fit_toy_module

REPO = Path(__file__).resolve().parents[2]
OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": 1.0}
TRAIN = {"text_drop_prob": 0.1, "image_drop_prob": 0.1, "max_nonfinite_in_a_row": 3}


def _fit(root, max_steps, ckpt_path=None, save_every=0, optim=None, callbacks=()):
    return fit_toy_module(root, max_steps, optim or OPTIM, TRAIN, ckpt_path=ckpt_path, save_every=save_every,
                          callbacks=callbacks)


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    """Resumed at step 2 of a 4-batch epoch, the adapter at step 4 equals the uninterrupted run's, bit for bit."""
    full = _fit(tmp_path / "a", 4, save_every=2)
    ckpt = tmp_path / "a" / "step=2.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["loops"]["fit_loop"]["state_dict"]
    assert state["combined_loader"] == [{"epoch": 0, "batches": 2}]
    resumed = _fit(tmp_path / "b", 4, ckpt_path=str(ckpt))
    for k, p in full.bundle.trainable.items():
        assert torch.equal(resumed.bundle.trainable[k], p), k


COSINE = {**OPTIM, "schedule": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1}


class _LrLog(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("optim, expected", [
    (OPTIM, [1e-3] * 6),                                                   # the paper's fixed lr
    ({**OPTIM, "warmup_steps": 3}, [1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3, 1e-3]),
    # warm-up 2 steps, then 1e-3 * (0.1 + 0.9 * (1 + cos(pi * k / 4)) / 2) for k = 0..3 of the 4 steps left
    (COSINE, [5e-4, 1e-3, 1e-3, 1e-4 + 9e-4 * 0.8535533905932737, 1e-4 + 9e-4 * 0.5, 1e-4 + 9e-4 * 0.1464466094067262]),
])
def test_optim_schedule_sets_each_steps_lr(tmp_path, optim, expected):
    log = _LrLog()
    _fit(tmp_path, 6, optim=optim, callbacks=[log])
    assert log.lrs == pytest.approx(expected, rel=1e-9)


def test_resume_mid_run_keeps_the_lr_schedule(tmp_path):
    """Resumed at step 2 of a cosine run, the lr of steps 3..4 and the adapter at step 4 are the uninterrupted run's."""
    a, b = _LrLog(), _LrLog()
    full = _fit(tmp_path / "a", 4, save_every=2, optim=COSINE, callbacks=[a])
    resumed = _fit(tmp_path / "b", 4, ckpt_path=str(tmp_path / "a" / "step=2.ckpt"), optim=COSINE, callbacks=[b])
    assert b.lrs == a.lrs[2:]
    for k, p in full.bundle.trainable.items():
        assert torch.equal(resumed.bundle.trainable[k], p), k


@pytest.mark.parametrize("override, message", [("optim.schedule=linear", "optim.schedule must be one of"),
                                               ("optim.min_lr_ratio=2", "min_lr_ratio in")])
def test_bad_optim_schedule_is_refused_before_the_model_loads(tmp_path, override, message):
    from i2v.train import train

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=toy", f"out_dir={tmp_path / 'run'}", override,
                                                      "backbone.unet=/nonexistent.safetensors", "logger=none"])
    with pytest.raises(ValueError, match=message):
        train(cfg)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_file_that_runs_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(str(marker))}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    from i2v.train import train

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "experiment=toy", f"out_dir={tmp_path / 'run'}", f"train.resume={evil}", "trainer.max_steps=1",
            "after_train.sample=false", "after_train.evaluate=false", "logger=none"])
    with pytest.raises(pickle.UnpicklingError):
        train(cfg)
    assert not marker.exists()


def test_claim_run_dir_never_shares_a_folder(tmp_path):
    want = tmp_path / "outputs" / "2024-01-01_00-00-00"
    a, b, c = (claim_run_dir(want) for _ in range(3))      # three runs in the same second
    assert len({a, b, c}) == 3 and a == want and b.name.endswith("_1") and all(p.is_dir() for p in (a, b, c))
    assert claim_run_dir(want, overwrite=True) == want


def test_rerun_into_a_used_folder_gets_its_own(tmp_path):
    """Through Hydra: a second run with the same hydra.run.dir neither writes into the first's folder nor touches
    its .hydra snapshot (both runs stop at once: SDXL refuses stage 1 after the folder is claimed)."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    outs = []
    for seed in (1, 2):
        r = subprocess.run([sys.executable, "train.py", "backbone=sdxl", "stage=1", "logger=none", f"seed={seed}",
                            f"hydra.run.dir={run}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode != 0 and "stage 2 only" in r.stderr, r.stderr[-1500:]
        outs.append(r.stdout)
    assert "seed=1" in (run / ".hydra" / "overrides.yaml").read_text()
    assert "seed=2" in (tmp_path / "run_1" / ".hydra" / "overrides.yaml").read_text()
    assert f"this run writes to {run}_1" in outs[1]
