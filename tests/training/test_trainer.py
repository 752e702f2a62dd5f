"""Lightning integration on the toy backbone: fast_dev_run, adapter checkpoints, exact resume."""
import lightning as L
import pytest
import torch

from i2v.toy.build import random_toy_bundle
from i2v.data import SyntheticVideos, VideoDataModule
from i2v.training.callbacks import AdapterCheckpoint
from i2v.training.module import I2VAdapterModule

OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": 1.0}
TRAIN = {"text_drop_prob": 0.1, "image_drop_prob": 0.1, "max_nonfinite_in_a_row": 3}


def _dm(n_items=4, batch=2):
    return VideoDataModule(dataset=SyntheticVideos(n_items=n_items, num_frames=4, size=32, seed=0), batch_size=batch,
                           val_fraction=0.0, split_seed=0, shuffle_seed=0)


def _trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=tmp_path, gradient_clip_val=1.0)
    args.update(kw)
    return L.Trainer(**args)


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)


def test_fast_dev_run_writes_adapter_only_checkpoint(tmp_path):
    from i2v.checkpoints.adapter_io import read_adapter

    bundle = random_toy_bundle(seed=0)
    mod = I2VAdapterModule(bundle, OPTIM, TRAIN, config={"seed": 0})
    ck = AdapterCheckpoint(tmp_path, every_n_steps=0, config={"seed": 0})
    _trainer(tmp_path, fast_dev_run=2, callbacks=[ck]).fit(mod, datamodule=_dm())
    tensors, info = read_adapter(tmp_path / "adapter.safetensors")
    assert info["backbone"] == "toy"
    assert set(tensors) == set(bundle.trainable)
    for k, p in bundle.trainable.items():
        assert torch.equal(tensors[k], p.detach())
    # W'_O moved away from its zero init, the frozen model did not
    assert any(k.endswith("to_out_ff.weight") and tensors[k].abs().sum() > 0 for k in tensors)


def test_resume_continues_exactly(tmp_path):
    """A run resumed from its step-2 checkpoint reproduces the uninterrupted run's losses at steps 3 and 4."""
    def run(root, max_steps, ckpt_path=None, save=False):
        L.seed_everything(0)
        mod = I2VAdapterModule(random_toy_bundle(seed=0), OPTIM, TRAIN, config={"seed": 0})
        rec = LossRecorder()
        cbs = [rec]
        if save:
            cbs.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_top_k=-1,
                                                           filename="{step}"))
        _trainer(root, max_steps=max_steps, callbacks=cbs, limit_val_batches=0).fit(mod, datamodule=_dm(),
                                                                                  ckpt_path=ckpt_path)
        return rec.losses, mod

    full, mod_full = run(tmp_path / "a", 4, save=True)
    ckpt = tmp_path / "a" / "step=2.ckpt"
    assert ckpt.exists(), sorted(p.name for p in (tmp_path / "a").iterdir())
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert set(ck["state_dict"]) == {f"bundle.unet.{k}" for k in mod_full.bundle.trainable}  # adapter tensors only
    resumed, mod_res = run(tmp_path / "b", 4, ckpt_path=str(ckpt))
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), (step, resumed, full)
    for k, p in mod_full.bundle.trainable.items():
        torch.testing.assert_close(mod_res.bundle.trainable[k], p, rtol=1e-6, atol=1e-7)
