"""Scale-out goes through Lightning strategies: two CPU processes (gloo) train a few toy steps in sync."""
import lightning as L
import pytest
import torch

from i2v.toy.build import random_toy_bundle
from i2v.data import SyntheticVideos, VideoDataModule
from i2v.training.module import I2VAdapterModule

OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": 1.0}
TRAIN = {"text_drop_prob": 0.1, "image_drop_prob": 0.1, "max_nonfinite_in_a_row": 3}


class RecordRanks(L.Callback):
    def on_train_end(self, trainer, pl_module):
        # every rank must hold the same adapter after the synchronised steps
        flat = torch.cat([p.detach().flatten() for p in pl_module.bundle.trainable.values()])
        gathered = trainer.strategy.all_gather(flat)
        assert gathered.shape[0] == 2
        assert torch.equal(gathered[0], gathered[1]), "ranks diverged"
        assert trainer.world_size == 2 and trainer.global_step == 2
        assert flat.abs().sum() > 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_setup(monkeypatch, n_items: int):
    """A toy module and data for two gloo processes; loopback address and a port picked here: no host-name lookup,
    no port shared with another test process."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    mod = I2VAdapterModule(random_toy_bundle(seed=0), OPTIM, TRAIN, config={"seed": 0})
    dm = VideoDataModule(dataset=SyntheticVideos(n_items=n_items, num_frames=4, size=32, seed=0), batch_size=1,
                         val_fraction=0.0, shuffle_seed=0)
    return mod, dm


@pytest.mark.slow
def test_two_process_gloo_ddp(tmp_path, monkeypatch):
    mod, dm = _two_process_setup(monkeypatch, 8)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, callbacks=[RecordRanks()])
    trainer.fit(mod, datamodule=dm)


class CtrlCOnRankOne(L.Callback):
    """As if only rank 1 got the Ctrl-C, during step 2."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from i2v.training.callbacks import AdapterCheckpoint

        if trainer.global_rank == 1 and trainer.global_step == 2:
            next(c for c in trainer.callbacks if isinstance(c, AdapterCheckpoint))._stop_asked = True

    def on_train_end(self, trainer, pl_module):
        assert trainer.global_step == 3, trainer.global_step      # both ranks stopped after the same step


@pytest.mark.slow
def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, monkeypatch):
    from i2v.training.callbacks import AdapterCheckpoint

    mod, dm = _two_process_setup(monkeypatch, 16)
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "lightning", save_last=True,
                                                every_n_train_steps=100)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=6, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[AdapterCheckpoint(tmp_path, every_n_steps=100), saver, CtrlCOnRankOne()])
    trainer.fit(mod, datamodule=dm)
    assert (tmp_path / "checkpoints" / "adapter-step3.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "lightning").iterdir()) == ["last.ckpt"]
    assert not (tmp_path / "adapter.safetensors").exists()
