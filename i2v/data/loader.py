"""The training DataLoader: resumable mid-epoch, and a stuck worker becomes an error that names its file.

Resume: Lightning saves ``state_dict()`` of a stateful train loader in its checkpoint (``loops.fit_loop``) and
calls ``load_state_dict()`` before the resumed epoch is iterated. The state is (epoch, batches already consumed
in it); the resumed iterator skips those batches at the index level (nothing is decoded for them), so with the
epoch-seeded shuffle the rest of the epoch is exactly the uninterrupted run's. Map-style loaders only: Lightning
does not prefetch from sized loaders, so the batches yielded here are the batches the loop consumed.

Stuck workers: with ``timeout`` > 0 torch raises "DataLoader timed out" when no batch arrives in time (e.g. a
decoder deadlock); it is re-raised as :class:`DataLoaderStuck` naming the items the workers were loading
(``RobustMapDataset.loading_names``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import threading
from typing import Any, Iterator, Optional

from torch.utils.data import DataLoader

log = logging.getLogger("i2v.data")


class DataLoaderStuck(RuntimeError):
    """No batch arrived within the loader's ``timeout``; the message names the files being loaded."""


class _SkipBatches:
    """A batch sampler without its first ``skip`` batches (the resumed part of an epoch)."""

    def __init__(self, batch_sampler, skip: int):
        self.batch_sampler, self.skip = batch_sampler, int(skip)

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def _sampler_epoch(loader: DataLoader) -> Optional[int]:
    for s in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if hasattr(s, "epoch"):
            return int(s.epoch)
    return None


def _dataset_with_loading(ds) -> Any:
    """The RobustMapDataset behind ``ds`` (itself or a SubsetView's parent), or None."""
    for cand in (ds, getattr(ds, "parent", None)):
        if cand is not None and hasattr(cand, "loading_names"):
            return cand
    return None


@contextlib.contextmanager
def _workers_born_ignoring_sigint(num_workers: int):
    """Ctrl-C ignored while the workers are started, so that they start ignoring it (a spawned Python keeps an
    ignored SIGINT): one started just before a Ctrl-C would otherwise die of it before its ``worker_init_fn`` runs,
    and the step being kept would fail for want of its batch. Milliseconds in the main process."""
    if not num_workers or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class QuietStartLoader(DataLoader):
    """A DataLoader whose workers are born ignoring Ctrl-C (the validation loader; ``ResumableLoader`` does the same
    for training)."""

    def __iter__(self) -> Iterator:
        with _workers_born_ignoring_sigint(self.num_workers):
            return super().__iter__()


class ResumableLoader(DataLoader):
    """DataLoader with ``state_dict``/``load_state_dict`` (epoch, consumed batches) and named worker timeouts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._consumed = 0
        self._epoch = _sampler_epoch(self)
        self._resume: Optional[dict] = None

    def __len__(self) -> int:  # the full epoch, also while a resumed iterator skips its first batches
        return len(self.batch_sampler) if self.batch_sampler is not None else super().__len__()

    @property
    def _index_sampler(self):
        base = self.batch_sampler if self._auto_collation else self.sampler
        if self._resume is None or self.batch_sampler is None:
            return base
        return _SkipBatches(base, self._resume["batches"])

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches": int(self._consumed)}

    def load_state_dict(self, state: dict) -> None:
        self._resume = {"epoch": state.get("epoch"), "batches": int(state.get("batches", 0))}

    def _take_resume(self) -> int:
        """Batches to skip in the epoch starting now: the saved count if it is the saved epoch and mid-epoch."""
        resume, self._resume = self._resume, None
        epoch = _sampler_epoch(self)
        if resume is None or resume["epoch"] != epoch or not 0 < resume["batches"] < len(self):
            return 0
        self._resume = resume  # read by _index_sampler while super().__iter__() builds the iterator
        log.info("resuming the training data at epoch %s, batch %d of %d", epoch, resume["batches"], len(self))
        return resume["batches"]

    def __iter__(self) -> Iterator:
        skip = self._take_resume()
        self._epoch, self._consumed = _sampler_epoch(self), skip
        if self._iterator is not None:  # persistent workers: the kept iterator re-reads its index sampler
            self._iterator._index_sampler = self._index_sampler
        try:
            with _workers_born_ignoring_sigint(self.num_workers):
                it = super().__iter__()
        finally:
            self._resume = None
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except RuntimeError as e:
                if "timed out" not in str(e):
                    raise
                raise DataLoaderStuck(self._stuck_message()) from None
            self._consumed += 1
            yield batch

    def _stuck_message(self) -> str:
        ds = _dataset_with_loading(self.dataset)
        names = ds.loading_names() if ds is not None else []
        what = ", ".join(names) if names else "no item yet (the workers had not started loading: slow start-up?)"
        return (f"no batch within data.worker_timeout={self.timeout:g} s: a dataloader worker is stuck while "
                f"loading {what}. Remove or re-download that file, or raise data.worker_timeout")
