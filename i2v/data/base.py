"""Shared pieces of the map-style video datasets: skip-and-retry, subsets, compact string storage.

A bad item (BadSample) is replaced by the next index, deterministically (i+1, i+2, ... within the dataset or the
subset being read). It is counted (and named in the epoch report) once, by the request for its own position, not
again by every request that falls back onto it, so an epoch's counts are the number of bad files. A run of
`max_consecutive_failures` bad items raises one clear error, so a dataset where everything is bad fails fast;
`VideoDataModule.setup` runs `check_usable()` before any worker starts. Which item each process is loading right
now is kept in shared memory (`loading_names()`), so a stuck worker can be reported by file name.
"""

from __future__ import annotations

import abc
import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from i2v.data.clip import ClipSpec, clip_spec, item_rng, read_clip
from i2v.data.stats import MAX_WORKER_ROWS, BadSample, FailureTracker, SkipCounter, process_row


class StringTable:
    """Many strings in one uint8 buffer + offsets: no per-string Python objects, so forked dataloader workers do
    not copy the table page by page through refcount writes (the classic 'DataLoader memory leak')."""

    def __init__(self, strings: Iterable[str]):
        buf, offsets = bytearray(), [0]
        for s in strings:
            buf += s.encode("utf-8")
            offsets.append(len(buf))
        self.data = np.frombuffer(bytes(buf), dtype=np.uint8)
        self.offsets = np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.data[a:b].tobytes().decode("utf-8")


def check_inside(path: str, root: str, allow: bool) -> None:
    """BadSample("outside_root") unless `path`, with symlinks and `..` resolved, lies under `root` (or `allow`)."""
    if allow:
        return
    real, base = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, base]) != base:
        raise BadSample("outside_root", f"{path} resolves to {real}, outside the data root {base} "
                                        f"(set data.dataset.allow_outside_root=true to read it)")


class RobustMapDataset(Dataset, abc.ABC):
    """Base class: subclasses implement `__len__` and `load(index) -> {"video", "text", "meta"}` (may raise
    BadSample). Items: video (F, 3, H, W) float32 in [-1, 1], text str, meta dict."""

    def __init__(self, clip: ClipSpec | Mapping | None = None, deterministic: bool = False, seed: int = 0,
                 max_consecutive_failures: int = 100):
        """``clip``: how clips are cut (:func:`i2v.data.clip.clip_spec`; flipped unless ``hflip: false``)."""
        self.spec = clip_spec(clip, hflip=True)
        self.deterministic, self.seed = deterministic, seed
        self.max_consecutive_failures = max_consecutive_failures
        self.skips = SkipCounter()
        self.loading = torch.full((MAX_WORKER_ROWS,), -1, dtype=torch.int64).share_memory_()

    @abc.abstractmethod
    def __len__(self) -> int: ...

    def describe(self, index: int) -> str:
        """A human name for item `index` (its file); subclasses with files override it."""
        return f"{type(self).__name__} item {index}"

    def loading_names(self) -> list[str]:
        """The items the main process and the dataloader workers are loading at this moment."""
        return [self.describe(int(i)) for i in self.loading.tolist() if i >= 0]

    @abc.abstractmethod
    def load(self, index: int) -> dict:
        """Item `index` or raise BadSample."""

    def read(self, source, index: int, name: str) -> tuple:
        """Decode a clip for item `index` (deterministic per (seed, index) when `deterministic`)."""
        return read_clip(source, self.spec, item_rng(self.seed, index, self.deterministic), name)

    def get(self, positions: Sequence[int], j: int, counter: Optional[SkipCounter] = None) -> dict:
        """Item positions[j], or on BadSample the next usable one (j+1, j+2, ... cyclically)."""
        counter = self.skips if counter is None else counter
        n = len(positions)
        if n == 0:
            raise IndexError(f"{type(self).__name__} is empty")
        tracker = FailureTracker(type(self).__name__, min(self.max_consecutive_failures, n))
        row = process_row()
        for k in range(n):
            idx = int(positions[(j + k) % n])
            self.loading[row] = idx
            try:
                item = self.load(idx)
            except BadSample as e:
                tracker.fail(e, counter if k == 0 else None, self.describe(idx))
                continue
            except OSError as e:  # I/O error on one file (permissions, network FS): skip it as well
                tracker.fail(BadSample("other", f"{type(e).__name__}: {e}"), counter if k == 0 else None,
                             self.describe(idx))
                continue
            finally:
                self.loading[row] = -1
            item["meta"]["index"] = idx
            return item
        tracker.raise_all_bad(f"all {n} items are unusable")

    def __getitem__(self, j: int) -> dict:
        return self.get(range(len(self)), j)

    def check_usable(self, positions: Optional[Sequence[int]] = None) -> None:
        """Fail fast (RuntimeError) if no usable item is found within max_consecutive_failures tries.
        Uses a throwaway counter so the check does not show up in the epoch report."""
        self.get(range(len(self)) if positions is None else positions, 0, counter=SkipCounter())

    def subset(self, positions: Sequence[int]) -> "SubsetView":
        return SubsetView(self, positions)


class SubsetView(Dataset):
    """A fixed list of indices of a RobustMapDataset; bad items fall back to the next index of the subset."""

    def __init__(self, parent: RobustMapDataset, positions: Sequence[int]):
        self.parent = parent
        self.positions = np.asarray(list(positions), dtype=np.int64)
        self.skips = parent.skips

    def describe(self, index: int) -> str:
        return self.parent.describe(index)

    def loading_names(self) -> list[str]:
        return self.parent.loading_names()

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, j: int) -> dict:
        return self.parent.get(self.positions, j)

    def check_usable(self) -> None:
        self.parent.check_usable(self.positions)
