"""LightningDataModule for all video datasets, built from the `data/` config group.

The dataset is given as a spec (`{_target_: i2v.data.WebVidDataset, csv_path: ..., ...}`, instantiated lazily in
`setup()`, so `_recursive_: false` in the config) or as a ready Dataset. Every dataset takes one `clip=`
(:class:`i2v.data.clip.ClipSpec`) and `deterministic=`: the stage's `num_frames`, `stride`, `size` fill the clip,
and the spec's own `clip:` entries (e.g. `clip: {hflip: true}`) win over them.
Validation: a separate `val_dataset` spec, else a deterministic hold-out (`val_fraction` of the items by a seeded
permutation for map-style datasets, the last shards for shard datasets). Validation instances are built with
`deterministic=True` and `clip.hflip=false`, so the same clip comes back every epoch.
Batches: {"video": (B, F, 3, H, W) float32 in [-1, 1], "text": [B str], "meta": [B dict]}.
Skipped samples are reported once per epoch by `DataSkipReport`, which `setup()` adds to the trainer. A hold-out
whose items are all unusable is dropped with a warning (training goes on without validation); an all-bad
training set still fails in `setup()`.
Workers: started with `multiprocessing_context` (default `spawn`: `setup()` decodes in the main process, and a
forked child of a process that has used FFmpeg can deadlock inside it); `worker_timeout` seconds without a batch
raise `DataLoaderStuck` naming the file being loaded. The train loader is a `ResumableLoader` (exact mid-epoch
resume for map-style datasets; shard streams restart their epoch).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, Mapping, Optional

import hydra
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from i2v.data.base import RobustMapDataset
from i2v.data.loader import QuietStartLoader, ResumableLoader
from i2v.data.stats import DataSkipReport, format_counts
from i2v.data.webdataset import WebDatasetVideos

log = logging.getLogger("i2v.data")


def collate_videos(items: list[dict]) -> dict:
    """[{"video": (F, 3, H, W), "text", "meta"}] -> {"video": (B, F, 3, H, W), "text": [str], "meta": [dict]}."""
    shapes = {tuple(it["video"].shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(f"cannot batch clips of different shapes {sorted(shapes)}; set one size/num_frames")
    return {
        "video": torch.stack([it["video"] for it in items]),
        "text": [it["text"] for it in items],
        "meta": [it["meta"] for it in items],
    }


def _plain_spec(spec: Any, what: str) -> Any:
    if OmegaConf.is_config(spec):
        try:
            return OmegaConf.to_container(spec, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as e:
            raise ValueError(f"{what}: a required value is not set ({e.full_key} is ???); "
                             f"set it on the command line, e.g. data.{what}.{e.full_key.split('.')[-1]}=...") from None
    return spec


def build_dataset(spec: Mapping, clip: Mapping, deterministic: bool, **extra) -> Dataset:
    """instantiate(spec, clip=..., deterministic=..., **extra): `clip` (the stage's sizes; None values left out)
    under the spec's own `clip:` entries; a deterministic (validation) dataset never flips."""
    if "_target_" not in spec:
        raise ValueError(f"dataset spec needs a _target_ (e.g. i2v.data.WebVidDataset), got keys {sorted(spec)}")
    cfg = dict(spec)
    merged = {**{k: v for k, v in clip.items() if v is not None}, **dict(cfg.pop("clip", None) or {})}
    if deterministic:
        merged["hflip"] = False
    return hydra.utils.instantiate(cfg, clip=merged, deterministic=deterministic, **extra, _convert_="all")


class WorkerInit:
    """A data worker ignores Ctrl-C: the terminal sends it to the whole process group, and a worker that dies of it
    takes the batch the main process needs to finish the step it keeps on a first Ctrl-C (``AdapterCheckpoint``).
    Then it seeds its generators as Lightning does for ``seed_everything(workers=True)`` (a loader with its own
    ``worker_init_fn`` does not get Lightning's)."""

    def __init__(self, rank: int = 0):
        self.rank = int(rank)

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if int(os.environ.get("PL_SEED_WORKERS", 0)):
            from lightning.fabric.utilities.seed import pl_worker_init_function

            pl_worker_init_function(worker_id, rank=self.rank)


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation that is a pure function of (seed, epoch): Lightning calls ``set_epoch`` before
    each epoch, so a run resumed from an epoch-end checkpoint sees exactly the order of an uninterrupted one."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class VideoDataModule(LightningDataModule):
    def __init__(
        self,
        dataset: Any,
        val_dataset: Any = None,
        num_frames: Optional[int] = None,
        stride: Optional[int] = None,
        size: Any = None,
        batch_size: int = 1,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        val_fraction: float = 0.01,
        max_val_items: Optional[int] = 64,
        split_seed: int = 0,
        drop_last: bool = True,
        check_data: bool = True,
        shuffle_seed: Optional[int] = 0,
        multiprocessing_context: Optional[str] = "spawn",
        worker_timeout: float = 0,
    ):
        super().__init__()
        self.dataset_spec = _plain_spec(dataset, "dataset")
        self.val_spec = _plain_spec(val_dataset, "val_dataset")
        size = _plain_spec(size, "size")
        self.clip = {"num_frames": num_frames, "stride": stride, "size": size}
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.persistent_workers, self.pin_memory = num_workers, persistent_workers, pin_memory
        self.val_fraction, self.max_val_items, self.split_seed = val_fraction, max_val_items, split_seed
        self.drop_last, self.check_data = drop_last, check_data
        self.shuffle_seed = shuffle_seed
        self.multiprocessing_context, self.worker_timeout = multiprocessing_context, float(worker_timeout or 0)
        self.train_dataset: Optional[Dataset] = None
        self.val_dataset: Optional[Dataset] = None

    # ---- building -----------------------------------------------------------------------------------------------
    def _build(self, spec: Any, validation: bool, **extra) -> Dataset:
        if isinstance(spec, Dataset):
            return spec
        return build_dataset(spec, self.clip, validation, **extra)

    def _n_val(self, n: int) -> int:
        if self.val_fraction <= 0 or n < 2:
            return 0
        k = max(1, int(round(n * self.val_fraction)))
        return min(k, n - 1, self.max_val_items or n)

    def _split(self, train_full: Dataset) -> None:
        if isinstance(train_full, WebDatasetVideos):  # hold out the last shards
            urls = train_full.urls
            k = min(self._n_val(len(urls)), len(urls) - 1)
            if k > 0 and not isinstance(self.dataset_spec, Dataset):
                self.train_dataset = self._build(self.dataset_spec, False, urls=urls[:-k])
                self.val_dataset = self._build(self.dataset_spec, True, urls=urls[-k:])
            else:
                self.train_dataset = train_full
            return
        if isinstance(train_full, IterableDataset):
            self.train_dataset = train_full
            return
        n = len(train_full)
        perm = np.random.default_rng(self.split_seed).permutation(n)
        k = self._n_val(n)
        val_idx, train_idx = np.sort(perm[:k]), np.sort(perm[k:])
        val_full = train_full if isinstance(self.dataset_spec, Dataset) else self._build(self.dataset_spec, True)
        sub = (lambda d, idx: d.subset(idx)) if isinstance(train_full, RobustMapDataset) else Subset
        self.train_dataset = sub(train_full, train_idx.tolist())
        self.val_dataset = sub(val_full, val_idx.tolist()) if k else None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_dataset is None:
            train_full = self._build(self.dataset_spec, False)
            if self.val_spec is not None:
                self.train_dataset, self.val_dataset = train_full, self._build(self.val_spec, True)
            else:
                self._split(train_full)
            if self.check_data:  # fail fast, in the main process, before any worker starts
                self._check_usable()
            self._check_one_full_batch()
            log.info("VideoDataModule: train %s, val %s", self._describe(self.train_dataset),
                     self._describe(self.val_dataset))
        trainer = getattr(self, "trainer", None)
        if trainer is not None and not any(isinstance(c, DataSkipReport) for c in trainer.callbacks):
            trainer.callbacks.append(DataSkipReport())

    def _check_one_full_batch(self) -> None:
        """Fewer training clips than one batch, with the last partial batch dropped, is an epoch of no steps: a run
        that would end at once, having trained nothing. Said before training starts."""
        ds = self.train_dataset
        if self.drop_last and hasattr(ds, "__len__") and not isinstance(ds, IterableDataset) and \
                len(ds) < self.batch_size:
            raise ValueError(f"{len(ds)} training clip(s) do not make one batch of data.batch_size={self.batch_size} "
                             f"(a last partial batch is dropped, so training would take no step): add clips or lower "
                             f"data.batch_size")

    def _check_usable(self) -> None:
        if hasattr(self.train_dataset, "check_usable"):
            self.train_dataset.check_usable()
        if self.val_dataset is not None and hasattr(self.val_dataset, "check_usable"):
            try:
                self.val_dataset.check_usable()
            except RuntimeError as e:  # a bad hold-out is skipped like bad training files, never fatal
                log.warning("validation data has no usable item, training without validation: %s", e)
                self.val_dataset = None

    @staticmethod
    def _describe(ds: Optional[Dataset]) -> str:
        if ds is None:
            return "none"
        if isinstance(ds, WebDatasetVideos):
            return f"{len(ds.urls)} shard(s)"
        return f"{len(ds)} item(s)" if hasattr(ds, "__len__") else type(ds).__name__

    # ---- loaders ------------------------------------------------------------------------------------------------
    def _loader(self, ds: Dataset, batch_size: int, train: bool) -> DataLoader:
        iterable = isinstance(ds, IterableDataset)
        workers = self.num_workers
        sampler = None
        if train and not iterable and self.shuffle_seed is not None:
            sampler = EpochShuffleSampler(len(ds), self.shuffle_seed)
        cls = ResumableLoader if train and not iterable else QuietStartLoader
        return cls(
            ds,
            batch_size=batch_size,
            shuffle=train and not iterable and sampler is None,
            sampler=sampler,
            drop_last=train and self.drop_last,
            num_workers=workers,
            persistent_workers=self.persistent_workers and workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate_videos,
            multiprocessing_context=self.multiprocessing_context if workers > 0 else None,
            timeout=self.worker_timeout if workers > 0 else 0,
            worker_init_fn=WorkerInit(getattr(getattr(self, "trainer", None), "global_rank", 0)) if workers else None,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        return self._loader(self.train_dataset, self.batch_size, train=True)

    def val_dataloader(self):
        if self.train_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, self.val_batch_size, train=False)

    # ---- skip reporting -----------------------------------------------------------------------------------------
    def skip_report(self, split: str = "train", epoch: Optional[int] = None) -> Optional[dict]:
        """Samples skipped in `split` since the last report, {reason: n}; also logs one line. None if the
        dataset does not count skips (synthetic)."""
        ds = self.train_dataset if split == "train" else self.val_dataset
        counter = getattr(ds, "skips", None)
        if counter is None:
            return None
        counts = counter.since_last_report()
        total = sum(counts.values())
        where = f" epoch {epoch}" if epoch is not None else ""
        names = counter.recent_names() if total and hasattr(counter, "recent_names") else []
        (log.warning if total else log.info)(
            "data %s%s: skipped %d sample(s) (%s)%s", split, where, total, format_counts(counts),
            f"; recent: {', '.join(names)}" if names else "")
        return counts
