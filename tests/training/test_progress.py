"""Training progress and the closing summary: the totals follow the run (max_steps), one line per event."""
import logging
from types import SimpleNamespace

from i2v.train import closing_summary, quiet_known_noise
from i2v.training.callbacks import StepProgress


def _run(bar: StepProgress, total: float, steps: int) -> SimpleNamespace:
    trainer = SimpleNamespace(estimated_stepping_batches=total, global_step=0, global_rank=0,
                              progress_bar_metrics={})
    bar.on_train_start(trainer, None)
    for step in range(1, steps + 1):
        trainer.global_step = step
        trainer.progress_bar_metrics = {"train/loss": 1.0 / step}
        bar.on_train_batch_end(trainer, None, None, None, step - 1)
    bar.on_train_end(trainer, None)
    return trainer


def test_plain_progress_counts_the_runs_steps_not_the_epochs_batches(capsys):
    # max_steps=5 in an epoch of 996 batches: Lightning's estimated_stepping_batches is 5
    _run(StepProgress(every=2, interactive=False), total=5, steps=5)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" | ")[0] for ln in lines] == ["step 2/5 (40%)", "step 4/5 (80%)", "step 5/5 (100%)"]
    assert "loss 0.2000" in lines[-1] and "ETA 0:00:00" in lines[-1]


def test_the_last_step_is_printed_once_and_an_unknown_total_has_no_eta(capsys):
    _run(StepProgress(every=2, interactive=False), total=float("inf"), steps=4)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" | ")[0] for ln in lines] == ["step 2", "step 4"]
    assert not any("ETA" in ln for ln in lines)


def test_terminal_bar_total_is_the_runs_steps(capsys):
    bar = StepProgress(interactive=True)
    trainer = SimpleNamespace(estimated_stepping_batches=400, global_step=120, global_rank=0, progress_bar_metrics={})
    bar.on_train_start(trainer, None)   # a resumed run starts at its step
    assert (bar._bar.total, bar._bar.n) == (400, 120)
    bar.on_train_end(trainer, None)


def test_closing_summary_says_where_everything_went():
    text = closing_summary({"adapter": "run/adapter.safetensors", "out_dir": "run", "steps": 400, "final_loss": 0.5,
                            "metrics_file": "run/metrics.json", "metrics": {"identity": 0.9, "flicker": 0.1,
                                                                            "net_px": 0.8}}, 125.4)
    lines = text.splitlines()
    assert 3 <= len(lines) <= 6
    assert "run/adapter.safetensors" in lines[0] and "run/samples/" in text and "run/metrics.json" in text
    assert "identity 0.9" in text and "net_px 0.8" in text and "0:02:05 wall" in text and "400 steps" in text


def test_lightning_lines_reach_the_console_once_under_hydra_logging():
    root = logging.getLogger()
    hydra_like = logging.StreamHandler()
    root.addHandler(hydra_like)
    try:
        quiet_known_noise()
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            assert lg.propagate and not [h for h in lg.handlers if type(h) is logging.StreamHandler], name
    finally:
        root.removeHandler(hydra_like)


def _fit(tmp_path, **trainer_kwargs):
    import lightning as L
    import torch

    from i2v.training.callbacks import RunLengthCheck

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(5, 1)), batch_size=1)

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[RunLengthCheck()],
                        **trainer_kwargs)
    trainer.fit(Tiny())
    return trainer


def test_a_max_steps_the_epoch_limit_cuts_short_is_reported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="i2v.training.callbacks"):
        trainer = _fit(tmp_path, max_epochs=1, max_steps=8)   # one epoch of 5 batches ends the run at step 5
    assert trainer.global_step == 5
    [msg] = [r.getMessage() for r in caplog.records if "max_steps" in r.getMessage()]
    assert "trainer.max_steps=8" in msg and "step 5" in msg and "max_epochs=1" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="i2v.training.callbacks"):
        trainer = _fit(tmp_path, max_epochs=-1, max_steps=8)  # no epoch limit: the run reaches max_steps, no warning
    assert trainer.global_step == 8
    assert not [r for r in caplog.records if "max_steps" in r.getMessage()]

