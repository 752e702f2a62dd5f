"""VideoDataModule: config instantiation, deterministic split, collate, per-epoch skip report through a real
Lightning fit with dataloader workers, fail fast in setup."""

import csv
import logging
import os
import shutil

import hydra
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

import i2v.cli.config  # noqa: F401  (registers the ${asset:...} resolver used by configs/train.yaml)
from i2v.data import VideoDataModule, WebVidDataset

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
SIZING = {"num_frames": 6, "stride": 2, "size": 16, "batch_size": 2}   # what a stage group sets


def _data_cfg(name, **extra):
    cfg = OmegaConf.create({"seed": 0, "data": OmegaConf.load(os.path.join(CONFIGS, "data", f"{name}.yaml"))})
    for k, v in {**SIZING, **extra}.items():
        OmegaConf.update(cfg, f"data.{k}", v, force_add=True)
    return cfg.data


def test_synthetic_config_batches_and_split():
    dm = hydra.utils.instantiate(_data_cfg("synthetic", **{"dataset.n_items": 50, "val_fraction": 0.2}))
    dm.setup("fit")
    assert len(dm.train_dataset) == 40 and len(dm.val_dataset) == 10
    tr, va = set(dm.train_dataset.indices), set(dm.val_dataset.indices)
    assert not tr & va and tr | va == set(range(50))
    dm2 = hydra.utils.instantiate(_data_cfg("synthetic", **{"dataset.n_items": 50, "val_fraction": 0.2}))
    dm2.setup("fit")
    assert set(dm2.val_dataset.indices) == va  # deterministic split
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (2, 6, 3, 16, 16) and batch["video"].dtype == torch.float32
    assert isinstance(batch["text"], list) and len(batch["text"]) == 2 and len(batch["meta"]) == 2
    assert batch["meta"][0]["centers"].shape == (6, 2)


def test_compose_train_config_with_each_data_option():
    with hydra.initialize_config_dir(os.path.abspath(CONFIGS), version_base="1.3"):
        for name in ("webvid", "webdataset", "selfcollected", "synthetic"):
            cfg = hydra.compose("train", overrides=[f"data={name}", "data.size=16"])   # stage 1's clip sizing
            assert cfg.data._target_ == "i2v.data.VideoDataModule" and cfg.data.size == 16
            assert (cfg.data.num_frames, cfg.data.stride) == (16, 4)
        dm = hydra.utils.instantiate(cfg.data, _recursive_=False)
        assert dm.clip == {"num_frames": 16, "stride": 4, "size": 16}
        cfg = hydra.compose("train", overrides=["data=webvid"])
        with pytest.raises(Exception, match="csv_path"):
            hydra.utils.instantiate(cfg.data, _recursive_=False)


ROWS = [("1", "good"), ("2", "text"), ("3", "good"), ("4", "missing"), ("5", "zero"), ("6", "good"),
        ("7", "good"), ("8", "truncated"), ("9", "good")]


@pytest.fixture()
def webvid(tmp_path, media):
    videos = tmp_path / "videos"
    videos.mkdir()
    for vid, kind in ROWS:
        if kind != "missing":
            shutil.copy(media[kind], videos / f"{vid}.mp4")
    with open(tmp_path / "w.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoid", "page_dir", "name"])
        w.writerows([vid, "d", f"caption {vid}"] for vid, _ in ROWS)
    return str(tmp_path / "w.csv"), str(videos)


def _expected(positions):
    """Skips per epoch: each bad file of the subset once (a fallback onto it from its neighbour does not count)."""
    reason = {"text": "corrupt", "truncated": "corrupt", "missing": "missing_file", "zero": "empty_file"}
    out = {}
    for p in positions:
        if ROWS[p][1] != "good":
            out[reason[ROWS[p][1]]] = out.get(reason[ROWS[p][1]], 0) + 1
    return out


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.shapes = []

    def training_step(self, batch, i):
        self.shapes.append(tuple(batch["video"].shape))
        return (self.w - batch["video"].mean()) ** 2

    def validation_step(self, batch, i):
        self.shapes.append(tuple(batch["video"].shape))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_reports_skips_per_epoch_with_workers(webvid, caplog):
    csv_path, videos = webvid
    dm = VideoDataModule({"_target_": "i2v.data.WebVidDataset", "csv_path": csv_path, "video_folder": videos},
                         num_frames=6, stride=2, size=16, batch_size=1, num_workers=2, persistent_workers=True,
                         val_fraction=0.34, drop_last=False)
    model = _Tiny()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with caplog.at_level(logging.INFO, logger="i2v.data"):
        trainer.fit(model, datamodule=dm)
    assert set(model.shapes) == {(1, 6, 3, 16, 16)}
    train_pos, val_pos = dm.train_dataset.positions.tolist(), dm.val_dataset.positions.tolist()
    assert len(val_pos) == 3 and sorted(train_pos + val_pos) == list(range(9))
    m = trainer.callback_metrics
    assert sum(_expected(train_pos).values()) > 0  # counted in worker processes, read in the main process
    for split, pos in (("train", train_pos), ("val", val_pos)):
        exp = _expected(pos)
        assert m[f"data/{split}_skipped"].item() == sum(exp.values())  # per epoch, not cumulative
        for r in ("corrupt", "missing_file", "empty_file", "too_short"):
            assert m[f"data/{split}_skipped_{r}"].item() == exp.get(r, 0), (split, r)
    lines = [r.getMessage() for r in caplog.records if "data train epoch" in r.getMessage()]
    assert len(lines) == 2 and all("skipped" in s for s in lines)
    bad_files = {f"{ROWS[p][0]}.mp4" for p in train_pos if ROWS[p][1] != "good"}
    assert all(any(f in line for line in lines) for f in bad_files), (bad_files, lines)  # the report names them
    assert dm.train_dataset.skips.totals()["corrupt"] == 2 * _expected(train_pos).get("corrupt", 0)


def test_validation_is_deterministic(webvid):
    csv_path, videos = webvid
    dm = VideoDataModule({"_target_": "i2v.data.WebVidDataset", "csv_path": csv_path, "video_folder": videos},
                         val_dataset={"_target_": "i2v.data.WebVidDataset", "csv_path": csv_path,
                                      "video_folder": videos, "clip": {"hflip": True}},
                         num_frames=6, stride=2, size=16, batch_size=2, num_workers=2)
    dm.setup("fit")
    assert isinstance(dm.val_dataset, WebVidDataset) and dm.val_dataset.deterministic
    assert not dm.val_dataset.spec.hflip and dm.train_dataset.spec.hflip is True  # train: class default
    a = [b["video"] for b in dm.val_dataloader()]
    b = [b["video"] for b in dm.val_dataloader()]
    assert len(a) == 5 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_all_bad_fails_in_setup(tmp_path, media):
    videos = tmp_path / "v"
    videos.mkdir()
    with open(tmp_path / "bad.csv", "w") as f:
        f.write("videoid,name\n" + "".join(f"{i},c\n" for i in range(5)))
    shutil.copy(media["text"], videos / "0.mp4")
    dm = VideoDataModule({"_target_": "i2v.data.WebVidDataset", "csv_path": str(tmp_path / "bad.csv"),
                          "video_folder": str(videos)}, num_frames=4, stride=1, size=8, val_fraction=0)
    with pytest.raises(RuntimeError, match=r"WebVidDataset: .*corrupt=1 missing_file=4"):
        dm.setup("fit")


def test_epoch_shuffle_is_a_function_of_seed_and_epoch():
    from i2v.data.datamodule import EpochShuffleSampler

    a, b = EpochShuffleSampler(20, seed=3), EpochShuffleSampler(20, seed=3)
    a.set_epoch(1)
    torch.manual_seed(123)  # the global RNG must not matter
    b.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == list(range(20))
    b.set_epoch(2)
    assert list(a) != list(b)
    assert list(EpochShuffleSampler(20, seed=4)) != list(EpochShuffleSampler(20, seed=3))


def test_every_dataset_gets_one_clip_spec_and_the_specs_own_clip_entries_win():
    """No constructor introspection: the stage's sizes go into ``clip=``, under the spec's own ``clip:`` entries;
    validation never flips (``hflip`` is forced false there)."""
    from i2v.data.datamodule import build_dataset

    dm = VideoDataModule({"_target_": "i2v.data.SyntheticVideos", "n_items": 10, "clip": {"num_frames": 3}},
                         num_frames=5, stride=1, size=16, batch_size=1, val_fraction=0.2)
    dm.setup("fit")
    item = dm.train_dataset[0]
    assert item["video"].shape == (3, 3, 16, 16) and len(dm.val_dataset) == 2
    got = build_dataset({"_target_": "builtins.dict", "clip": {"hflip": True, "stride": 2}},
                        {"num_frames": 6, "stride": 4, "size": None}, False)
    assert got == {"clip": {"num_frames": 6, "stride": 2, "hflip": True}, "deterministic": False}
    got = build_dataset({"_target_": "builtins.dict", "clip": {"hflip": True}}, {"num_frames": 6}, True)
    assert got == {"clip": {"num_frames": 6, "hflip": False}, "deterministic": True}


def test_fewer_clips_than_one_batch_is_refused_before_training():
    """With the last partial batch dropped, 3 training clips at batch 4 is an epoch of no steps: a run that ends at
    once having trained nothing. setup says so; one clip more trains."""
    few = _data_cfg("synthetic", **{"dataset.n_items": 4, "val_fraction": 0.25, "batch_size": 4})
    with pytest.raises(ValueError, match=r"3 training clip\(s\) do not make one batch of data.batch_size=4"):
        hydra.utils.instantiate(few).setup("fit")
    enough = hydra.utils.instantiate(_data_cfg("synthetic", **{"dataset.n_items": 5, "val_fraction": 0.2,
                                                                 "batch_size": 4}))
    enough.setup("fit")
    assert len(enough.train_dataloader()) == 1


def test_dataloader_workers_outlive_a_ctrl_c(monkeypatch):
    """Ctrl-C reaches every process of the terminal's group: the workers ignore it, so the main process can finish
    the step it keeps (without it a worker dies and the next batch is 'worker exited unexpectedly')."""
    import signal
    import time

    from i2v.data import SyntheticVideos

    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    dm = VideoDataModule(dataset=SyntheticVideos(n_items=12, num_frames=2, size=16, seed=0), batch_size=2,
                         val_fraction=0.0, num_workers=2, multiprocessing_context="spawn", persistent_workers=False,
                         shuffle_seed=0)
    dm.setup("fit")
    import multiprocessing

    it = iter(dm.train_dataloader())
    next(it), next(it)                                   # one batch from each worker: both are up
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    for w in workers:
        os.kill(w.pid, signal.SIGINT)
    time.sleep(0.5)
    assert all(w.is_alive() for w in workers)
    assert len(list(it)) == 4
    held_out = VideoDataModule(dataset=SyntheticVideos(n_items=12, num_frames=2, size=16, seed=0), batch_size=2,
                               val_fraction=0.5, num_workers=2, multiprocessing_context="spawn")
    held_out.setup("fit")
    assert type(held_out.val_dataloader()).__name__ == "QuietStartLoader"   # validation's workers: born ignoring it


@pytest.mark.parametrize("loader_cls", ["ResumableLoader", "QuietStartLoader"])
def test_dataloader_workers_are_born_ignoring_ctrl_c(loader_cls):
    """A Ctrl-C that comes while a worker is still starting (before any worker_init_fn) does not kill it either:
    the training and validation loaders start their workers with SIGINT ignored (the fork here shows the
    disposition they get)."""
    import signal

    from torch.utils.data import Dataset

    import i2v.data.loader

    cls = getattr(i2v.data.loader, loader_cls)

    class Disposition(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.tensor(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)

    loader = cls(Disposition(), batch_size=1, num_workers=2, multiprocessing_context="fork")
    assert torch.cat(list(loader)).all()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler      # the main process's is put back


def test_worker_init_seeds_as_lightning_does():
    """A loader with our worker_init_fn does not get Lightning's; ours seeds the workers the same way."""
    from functools import partial

    from lightning.fabric.utilities.seed import pl_worker_init_function
    from torch.utils.data import DataLoader, Dataset

    from i2v.data.datamodule import WorkerInit

    class Draws(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            import random

            import numpy as np
            return torch.tensor([torch.rand(()).item(), random.random(), np.random.rand()])

    def draws(init, rank):
        os.environ["PL_SEED_WORKERS"] = "1"
        loader = DataLoader(Draws(), batch_size=1, num_workers=2, multiprocessing_context="fork",
                            worker_init_fn=init, generator=torch.Generator().manual_seed(3))
        return torch.cat(list(loader))

    try:
        for rank in (0, 1):
            ours, lightnings = draws(WorkerInit(rank), rank), draws(partial(pl_worker_init_function, rank=rank), rank)
            assert torch.equal(ours, lightnings)
        assert not torch.equal(draws(WorkerInit(0), 0), draws(WorkerInit(1), 1))   # the rank is used
    finally:
        os.environ.pop("PL_SEED_WORKERS", None)
