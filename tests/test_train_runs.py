"""A train.py run's life on the toy: stopped by Ctrl-C / SIGTERM (the step reached kept, exit status 130 / 143, a
sweep stopped too), resumed from its run folder bit for bit (with a changed optim.lr running from there), and the
run settings refused or warned about before training (one-frame clips, max_steps=0)."""
import re

import pytest
import torch
from hydra import compose, initialize_config_dir

from i2v.cli.config import CONFIGS


def _compose(name, overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_train_resume_takes_a_run_folder_and_continues_as_one_run(tmp_path):
    """``train.resume=<run folder>`` resumes from its lightning/last.ckpt: 8 steps, then resumed to 12, give the
    adapter tensors of one 12-step run; a wrong value is one line before any model loads."""
    from safetensors.torch import load_file

    from i2v.train import resume_checkpoint, train

    def run(name, steps, *extra):
        cfg = _compose("train", ["experiment=toy", f"trainer.max_steps={steps}", "train.save_every_n_steps=4",
                                 "after_train.sample=false", "after_train.evaluate=false", "logger=none",
                                 f"out_dir={tmp_path / name}", *extra])
        train(cfg)
        return load_file(str(tmp_path / name / "adapter.safetensors"))

    whole = run("whole", 12)
    run("first", 8)
    resumed = run("resumed", 12, f"train.resume={tmp_path / 'first'}")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not all(torch.equal(whole[k], v) for k, v in load_file(str(tmp_path / "first" / "adapter.safetensors")).items())
    for bad, said in [(tmp_path / "nope.ckpt", "not found"), (tmp_path, "has no lightning/last.ckpt"),
                      (tmp_path / "first" / "adapter.safetensors", "is not a Lightning checkpoint")]:
        with pytest.raises((FileNotFoundError, ValueError), match=said):
            resume_checkpoint(bad)


@pytest.mark.parametrize("how,kept", [("SIGINT", 6), ("SIGTERM", 6), ("SIGTERM_after_the_hook", 5)])
def test_ctrl_c_keeps_the_step_reached_and_resumes_as_one_run(tmp_path, monkeypatch, how, kept):
    """The first Ctrl-C (SIGINT), or SIGTERM, ends training at the end of the step: that step's adapter and a
    resumable lightning/last.ckpt are written (no final adapter.safetensors, no after-train samples), and resuming
    from the run folder gives the adapter of an uninterrupted run bit for bit. SIGTERM_after_the_hook: the signal
    lands after the step's on_train_batch_end, where Lightning ends the fit at once (as a SystemExit)."""
    import os
    import signal

    import lightning as L
    from safetensors.torch import load_file

    import i2v.train as train_mod

    class SignalAt(L.Callback):           # as if the signal came during step 6 (or right after step 5)
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 5 and how in ("SIGINT", "SIGTERM"):
                os.kill(os.getpid(), getattr(signal, how))

        def on_train_batch_end(self, trainer, *args):   # runs after AdapterCheckpoint's
            if trainer.global_step == 5 and how == "SIGTERM_after_the_hook":
                os.kill(os.getpid(), signal.SIGTERM)

    def run(name, steps, *extra, signal_=False):
        if signal_:
            build = train_mod.build_trainer
            monkeypatch.setattr(train_mod, "build_trainer", lambda cfg, out: build(cfg, out, [SignalAt()]))
        cfg = _compose("train", ["experiment=toy", f"trainer.max_steps={steps}", "train.save_every_n_steps=100",
                                 "after_train.n_videos=1", "logger=none", f"out_dir={tmp_path / name}", *extra])
        result = train_mod.train(cfg)
        monkeypatch.undo()
        return result

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stopped = run("stopped", 12, signal_=True)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before   # handlers put back
    out = tmp_path / "stopped"
    assert stopped["interrupted"] == kept and stopped["signal"] == how.split("_")[0]
    assert stopped["adapter"] == str(out / "checkpoints" / f"adapter-step{kept}.safetensors")
    assert sorted(p.name for p in (out / "lightning").iterdir()) == ["last.ckpt"]
    assert not (out / "adapter.safetensors").exists() and not (out / "metrics.json").exists()
    run("whole", 12, "after_train.sample=false", "after_train.evaluate=false")
    run("resumed", 12, f"train.resume={out}", "after_train.sample=false", "after_train.evaluate=false")
    whole, resumed = (load_file(str(tmp_path / n / "adapter.safetensors")) for n in ("whole", "resumed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    kept_adapter = load_file(stopped["adapter"])
    assert not all(torch.equal(whole[k], kept_adapter[k]) for k in whole)


@pytest.mark.parametrize("sig,status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_train_py_exits_with_the_signals_status_and_says_how_to_go_on(tmp_path, sig, status):
    import os
    import signal
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "train.py", "experiment=toy", "trainer.max_steps=400", "logger=none",
                          "train.progress_every_n_steps=2", f"hydra.run.dir={run_dir}"], cwd=CONFIGS.parent,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in p.stdout:                 # the signal once training has begun
        lines.append(line)
        if line.startswith("step 2/400"):
            p.send_signal(getattr(signal, sig))
            break
    rest, _ = p.communicate(timeout=120)
    text = "".join(lines) + rest
    assert p.returncode == status, text[-3000:]
    said = re.search(rf"interrupted \({sig}\) at step (\d+) of 400: go on with the same command and "
                     rf"train\.resume={re.escape(str(run_dir))}\n", text)
    assert said, text[-3000:]
    step = int(said.group(1))
    assert (run_dir / "checkpoints" / f"adapter-step{step}.safetensors").is_file() and \
        (run_dir / "lightning" / "last.ckpt").is_file() and not (run_dir / "adapter.safetensors").exists(), text[-3000:]


def test_one_frame_clips_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    """data.num_frames=1 leaves no frame for the loss (frames 2..F): was 10 NaN steps, then a traceback."""
    import i2v.train as train_mod

    monkeypatch.setattr(train_mod, "build_bundle", lambda *a, **k: pytest.fail("a model was loaded first"))
    cfg = _compose("train", ["experiment=toy", "data.num_frames=1", f"out_dir={tmp_path}", "logger=none"])
    with pytest.raises(ValueError, match=r"^data.num_frames must be >= 2 to train the I2V-Adapter .* got 1$"):
        train_mod.train(cfg)


def test_max_steps_0_says_the_adapter_is_untrained(tmp_path, caplog):
    import logging

    from safetensors.torch import load_file

    from i2v.train import train

    cfg = _compose("train", ["experiment=toy", "trainer.max_steps=0", "after_train.sample=false",
                             "after_train.evaluate=false", f"out_dir={tmp_path}", "logger=none"])
    with caplog.at_level(logging.WARNING, logger="i2v.train"):
        train(cfg)
    assert "trainer.max_steps=0: no training step is taken" in caplog.text
    out = {k: v for k, v in load_file(str(tmp_path / "adapter.safetensors")).items() if "to_out" in k}
    assert out and all(not v.any() for v in out.values())      # the zero output projection, as the message says


def test_ctrl_c_in_a_sweep_stops_it_and_names_the_jobs_own_command(tmp_path):
    """train.py -m ...: the first Ctrl-C keeps the running job's step, stops the sweep (status 130), and the line
    gives that job's own overrides (the sweep's command would run every job again)."""
    import os
    import signal
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    p = subprocess.Popen([sys.executable, "train.py", "-m", "experiment=toy", "seed=0,1", "trainer.max_steps=400",
                          "logger=none", "train.progress_every_n_steps=2", f"hydra.sweep.dir={sweep}"],
                         cwd=CONFIGS.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("step 2/400"):
            p.send_signal(signal.SIGINT)
            break
    rest, _ = p.communicate(timeout=120)
    text = "".join(lines) + rest
    assert p.returncode == 130, text[-3000:]
    said = re.search(r"go on with this job alone: python train\.py (.*) train\.resume=(\S+) \(the sweep's later "
                     r"jobs did not run\)", text)
    assert said and said.group(2) == str(sweep / "0"), text[-3000:]
    assert "seed=0" in said.group(1).split() and "seed=0,1" not in said.group(1), said.group(1)
    assert (sweep / "0" / "lightning" / "last.ckpt").is_file() and not (sweep / "1").exists()


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_optim_lr_changed_on_resume_is_the_lr_that_runs(tmp_path, monkeypatch, schedule):
    """train.resume=<run> optim.lr=<new>: the resumed optimizer came back with the old lr and silently kept it. The
    configured lr now runs from the resume on (times the schedule's factor at each step, as a fresh run with that
    lr would have it)."""
    import lightning as L

    import i2v.train as train_mod

    class LRs(L.Callback):
        def __init__(self):
            self.seen = {}

        def on_train_batch_start(self, trainer, *args):
            self.seen[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    def run(name, steps, lr, *extra):
        probe, build = LRs(), train_mod.build_trainer
        monkeypatch.setattr(train_mod, "build_trainer", lambda cfg, out: build(cfg, out, [probe]))
        cfg = _compose("train", ["experiment=toy", f"trainer.max_steps={steps}", f"optim.lr={lr}",
                                 f"optim.schedule={schedule}", "optim.warmup_steps=2", "train.save_every_n_steps=4",
                                 "after_train.sample=false", "after_train.evaluate=false", "logger=none",
                                 f"out_dir={tmp_path / name}", *extra])
        train_mod.train(cfg)
        monkeypatch.undo()
        return probe.seen

    run("first", 8, 1e-2)
    resumed = run("resumed", 12, 1e-4, f"train.resume={tmp_path / 'first'}")
    fresh = run("fresh", 12, 1e-4)
    assert sorted(resumed) == [8, 9, 10, 11]
    assert all(resumed[s] == pytest.approx(fresh[s], rel=1e-9) for s in resumed), (resumed, fresh)
