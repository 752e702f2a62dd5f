"""Skip accounting for bad data: reasons, a counter shared with dataloader workers, and the per-epoch report.

Bad samples (corrupt/short videos, missing captions, broken shards) never stop an epoch: the dataset raises
`BadSample(reason)` internally, counts it and moves on. Counts live in a small shared-memory int64 tensor with
one row per process (row 0 = main process, row 1 + w = dataloader worker w), so every process writes only its own
row (no lost updates) and the main process reads the sum at any time. This works for any `num_workers`, forked or
spawned workers (torch shares the storage when the dataset is pickled) and persistent workers. Each DDP rank has
its own counter; `DataSkipReport` sums them over ranks when it logs.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("i2v.data")

REASONS = (
    "missing_file",  # the video file does not exist
    "empty_file",  # zero bytes
    "corrupt",  # neither decord nor PyAV can open/decode it (truncated, not a video, ...)
    "too_short",  # fewer frames than num_frames even at stride 1
    "missing_caption",  # no sidecar .txt / empty caption / no manifest caption
    "low_resolution",  # short side below min_short_side
    "bad_status",  # video2dataset json status != "success" (failed_to_download, ...)
    "bad_metadata",  # unparsable json sidecar
    "no_video",  # shard sample without an .mp4 member
    "unreadable_shard",  # tar that cannot be opened or is truncated (counted once per shard)
    "outside_root",  # the path leaves the data root (.., absolute, symlink) and allow_outside_root is off
    "other",  # any other exception while loading one sample
)
_REASON_INDEX = {r: i for i, r in enumerate(REASONS)}
MAX_WORKER_ROWS = 64
N_NAMES, NAME_BYTES = 4, 160  # skipped file names kept per process for the epoch report


class BadSample(Exception):
    """Raised while loading one sample that must be skipped; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in _REASON_INDEX:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {REASONS}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def process_row() -> int:
    """This process's row: 0 in the main process, 1 + worker id in a dataloader worker."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return 0
    return 1 + info.id % (MAX_WORKER_ROWS - 1)


class SkipCounter:
    """Counts skipped samples by reason across the main process and all dataloader workers.

    `add(reason)` is called wherever a sample is skipped (in a worker or in the main process);
    `totals()` (main process) sums all rows; `since_last_report()` returns the counts added since its last call.
    """

    def __init__(self):
        self.counts = torch.zeros(MAX_WORKER_ROWS, len(REASONS), dtype=torch.int64).share_memory_()
        self._reported = torch.zeros(len(REASONS), dtype=torch.int64)
        # the last few skipped names per process, as fixed-width UTF-8 (shared like the counts)
        self.names = torch.zeros(MAX_WORKER_ROWS, N_NAMES, NAME_BYTES, dtype=torch.uint8).share_memory_()
        self._names_seen = torch.zeros(MAX_WORKER_ROWS, dtype=torch.int64).share_memory_()

    def add(self, reason: str, n: int = 1, name: str | None = None) -> None:
        row = process_row()
        self.counts[row, _REASON_INDEX[reason]] += n
        if name:
            raw = name.encode("utf-8")[-NAME_BYTES:]   # keep the end of a long path: the file name
            slot = int(self._names_seen[row]) % N_NAMES
            self.names[row, slot].zero_()
            self.names[row, slot, : len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            self._names_seen[row] += 1

    def recent_names(self, limit: int = 5) -> list[str]:
        """Up to `limit` distinct names of recently skipped items (all processes)."""
        out: list[str] = []
        for row in range(MAX_WORKER_ROWS):
            for slot in range(min(int(self._names_seen[row]), N_NAMES)):
                name = bytes(self.names[row, slot].tolist()).rstrip(b"\0").decode("utf-8", "replace")
                if name not in out:
                    out.append(name)
        return out[:limit]

    def totals(self) -> dict[str, int]:
        """All counts so far, {reason: n} for every reason (zeros included)."""
        s = self.counts.sum(0)
        return {r: int(s[i]) for i, r in enumerate(REASONS)}

    def since_last_report(self) -> dict[str, int]:
        """Counts added since the previous call (a per-epoch delta when called once per epoch)."""
        s = self.counts.sum(0)
        delta, self._reported = s - self._reported, s.clone()
        return {r: int(delta[i]) for i, r in enumerate(REASONS)}

    def reset(self) -> None:
        self.counts.zero_()
        self._reported.zero_()
        self._names_seen.zero_()


def format_counts(counts: dict[str, int]) -> str:
    """'corrupt=3 too_short=1' (only nonzero reasons) or 'none'."""
    parts = [f"{r}={n}" for r, n in counts.items() if n]
    return " ".join(parts) if parts else "none"


class UnusableData(RuntimeError):
    """The data set has no usable sample where one was needed (paths, files, captions or size filters are wrong):
    a user's input error, which the entries report in one line. A RuntimeError, which the validation split catches
    to train without a hold-out."""


class FailureTracker:
    """Fail-fast rule for datasets where everything is bad (process-local).

    A run of `limit` consecutive failures raises one clear error. Map-style datasets apply it per `__getitem__`
    (it tries the next indices, so `limit` bad items in a row); iterable datasets apply it until the first good
    sample of a stream (after one good sample the data is not all bad, and streams end by themselves).
    """

    def __init__(self, name: str, limit: int):
        if limit < 1:
            raise ValueError(f"max_consecutive_failures must be >= 1, got {limit}")
        self.name, self.limit = name, limit
        self.armed = True  # iterable streams disarm it after their first good sample
        self.run: list[BadSample] = []

    def fail(self, err: BadSample, counter: SkipCounter | None, name: str | None = None) -> None:
        if counter is not None:
            counter.add(err.reason, name=name)
        if not self.armed:
            return
        self.run.append(err)
        if len(self.run) >= self.limit:
            self.raise_all_bad(f"{self.limit} consecutive samples were unusable")

    def raise_all_bad(self, why: str) -> None:
        by_reason: dict[str, int] = {}
        for e in self.run:
            by_reason[e.reason] = by_reason.get(e.reason, 0) + 1
        examples = "; ".join(str(e) for e in self.run[:3])
        raise UnusableData(
            f"{self.name}: {why} ({format_counts(by_reason)}). Check the data paths and files. Examples: {examples}"
        )


class DataSkipReport(Callback):
    """Reports skipped samples once per train/validation epoch: one log line and `data/<split>_skipped[_<reason>]`
    metrics (summed over DDP ranks). `VideoDataModule.setup` adds it to the trainer automatically."""

    def __init__(self, datamodule=None):
        self.datamodule = datamodule

    def _report(self, trainer, pl_module, split: str) -> None:
        dm = self.datamodule if self.datamodule is not None else trainer.datamodule
        if dm is None or not hasattr(dm, "skip_report") or trainer.sanity_checking:
            return
        counts = dm.skip_report(split, epoch=trainer.current_epoch)
        if counts is None:
            return
        # Every rank logs the same keys (all reasons), as sync_dist requires.
        pl_module.log(f"data/{split}_skipped", float(sum(counts.values())), reduce_fx="sum", sync_dist=True)
        for reason, n in counts.items():
            pl_module.log(f"data/{split}_skipped_{reason}", float(n), reduce_fx="sum", sync_dist=True)

    def on_train_epoch_end(self, trainer, pl_module):
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer, pl_module):
        self._report(trainer, pl_module, "val")
