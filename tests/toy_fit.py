"""A short Lightning fit of the I2V-Adapter on a random toy bundle (8 synthetic clips of 4 frames, batch 2: 4 batches
per epoch), the way the training tests run it: no logger, no progress bar, no validation."""
import lightning as L

from i2v.data import SyntheticVideos, VideoDataModule
from i2v.toy.build import random_toy_bundle
from i2v.training.module import I2VAdapterModule


def fit_toy_module(root, max_steps, optim, train, ckpt_path=None, save_every=0, callbacks=()):
    """Train ``max_steps`` steps (resumed from ``ckpt_path`` if given); ``save_every`` > 0 writes Lightning
    checkpoints ``root/step=N.ckpt``. Returns the module."""
    L.seed_everything(0)
    mod = I2VAdapterModule(random_toy_bundle(seed=0), optim, train, config={"seed": 0})
    dm = VideoDataModule(dataset=SyntheticVideos(n_items=8, num_frames=4, size=32, seed=0), batch_size=2,
                         val_fraction=0.0, shuffle_seed=0)
    cbs = list(callbacks)
    if save_every:
        cbs.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=save_every, save_top_k=-1,
                                                       filename="{step}"))
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, gradient_clip_val=1.0,
                        max_steps=max_steps, callbacks=cbs, limit_val_batches=0)
    trainer.fit(mod, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return mod
