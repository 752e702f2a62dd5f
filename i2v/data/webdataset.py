"""Streaming video shards (video2dataset / WebDataset tars): `<key>.mp4`, `<key>.txt`, optional `<key>.json`.

Shard splitting: shard j goes to global worker (j mod R·W), global worker = rank·W + worker_id, for R ranks
(torch.distributed, or the `rank`/`world_size` arguments) and W dataloader workers. Every sample is therefore
read exactly once per epoch, nothing is dropped, and nothing is duplicated. The price: when the shard count does
not divide evenly, ranks see different numbers of samples. Lightning DDP needs the same number of batches on
every rank, so for multi-GPU training set `samples_per_epoch` (each of the R·W streams then yields exactly
samples_per_epoch // (R·W) samples, cycling its own shards) or give each rank the same number of equally full
shards. Within a worker, the shard order is shuffled every epoch, then a buffer of raw samples is shuffled.
Bad samples (json status != success, no mp4, no caption, undecodable video) and broken tars are skipped and
counted. mp4 bytes are decoded in memory.
"""

from __future__ import annotations

import json
import os
import tarfile
from typing import Iterator, Mapping, Optional, Sequence, Union

import braceexpand
import numpy as np
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from i2v.data.clip import ClipSpec, clip_spec, item_rng, read_clip
from i2v.data.stats import BadSample, FailureTracker, SkipCounter

VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")


def expand_urls(urls: Union[str, Sequence[str]]) -> list[str]:
    """Brace patterns ('shards/{00000..00009}.tar'), lists of them, or folders (all *.tar inside, sorted)."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for u in items:
        u = str(u)
        if os.path.isdir(u):
            out += sorted(os.path.join(u, f) for f in os.listdir(u) if f.endswith(".tar"))
        else:
            out += list(braceexpand.braceexpand(u))
    if not out:
        raise ValueError(f"no shards in {urls!r}")
    return out


def rank_and_world(rank: Optional[int] = None, world_size: Optional[int] = None) -> tuple[int, int]:
    """Explicit values, else torch.distributed, else the RANK/WORLD_SIZE environment (Lightning sets them)."""
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shards_for(urls: Sequence[str], rank: int, world: int, worker: int, n_workers: int) -> list[str]:
    """Shards of one (rank, worker): urls[g :: world·n_workers] with g = rank·n_workers + worker."""
    total = world * n_workers
    return list(urls[rank * n_workers + worker :: total])


def _open(url: str):
    if os.path.exists(url) or "://" not in url and not url.startswith("pipe:"):
        return open(url, "rb")
    from webdataset.gopen import gopen  # remote (http://, pipe:, s3 via pipe: ...) through webdataset's opener

    return gopen(url, "rb")


def iter_tar(url: str) -> Iterator[dict]:
    """Samples {"__key__", "__url__", <ext>: bytes} grouped by key (path up to the first '.' of the basename).
    Raises BadSample("unreadable_shard") when the tar cannot be opened or breaks off (complete samples before
    the break are yielded first; the partial one is dropped)."""
    current: dict = {}
    try:
        with _open(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                d, base = os.path.split(member.name)
                if "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = os.path.join(d, stem) if d else stem
                data = tar.extractfile(member).read()
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                current.setdefault("__key__", key)
                current["__url__"] = url
                current[ext.lower()] = data
    except (OSError, tarfile.TarError, EOFError, ValueError) as e:
        raise BadSample("unreadable_shard", f"{url}: {type(e).__name__}: {e}") from None
    if current:
        yield current


class WebDatasetVideos(IterableDataset):
    """Iterable video-shard dataset. Items as the map-style datasets (meta has `key`, `url`, `json` fields)."""

    def __init__(
        self,
        urls: Union[str, Sequence[str]],
        clip: ClipSpec | Mapping | None = None,
        deterministic: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 64,
        samples_per_epoch: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        max_consecutive_failures: int = 100,
    ):
        self.urls = expand_urls(urls)
        self.spec = clip_spec(clip, hflip=True)
        self.deterministic, self.seed = deterministic, seed
        self.shuffle_buffer = 0 if deterministic else int(shuffle_buffer)
        self.samples_per_epoch = samples_per_epoch
        self.rank, self.world_size = rank, world_size
        self.max_consecutive_failures = max_consecutive_failures
        self.skips = SkipCounter()

    # ---- one sample -------------------------------------------------------------------------------------------
    def decode(self, sample: dict) -> dict:
        """Raw tar sample -> item; raises BadSample (bad_metadata, bad_status, no_video, missing_caption, ...)."""
        key = sample["__key__"]
        info = {}
        if "json" in sample:
            try:
                info = json.loads(sample["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BadSample("bad_metadata", f"{key}.json: {e}") from None
            if not isinstance(info, dict):
                raise BadSample("bad_metadata", f"{key}.json is not an object")
            if info.get("status", "success") != "success":
                raise BadSample("bad_status", f"{key}: status={info.get('status')!r}")
        ext = next((e for e in VIDEO_EXTS if e in sample), None)
        if ext is None:
            raise BadSample("no_video", f"{key}: members {sorted(k for k in sample if not k.startswith('__'))}")
        text = sample["txt"].decode("utf-8", errors="replace").strip() if "txt" in sample else ""
        text = text or str(info.get("caption") or "").strip()
        if not text:
            raise BadSample("missing_caption", key)
        rng = item_rng(self.seed, key, self.deterministic)
        video, meta = read_clip(sample[ext], self.spec, rng, name=f"{sample['__url__']}:{key}.{ext}")
        meta.update(key=key, url=sample["__url__"], json=info)
        return {"video": video, "text": text, "meta": meta}

    # ---- streams ----------------------------------------------------------------------------------------------
    def my_shards(self) -> list[str]:
        """The shards this (rank, dataloader worker) reads."""
        rank, world = rank_and_world(self.rank, self.world_size)
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return shards_for(self.urls, rank, world, worker, n_workers)

    def _raw(self, shards: list[str], rng: np.random.Generator, counter, tracker) -> Iterator[dict]:
        """Raw samples of `shards` (shuffled shard order unless deterministic); broken shards counted."""
        order = list(shards) if self.deterministic else [shards[i] for i in rng.permutation(len(shards))]
        for url in order:
            try:
                yield from iter_tar(url)
            except BadSample as e:
                tracker.fail(e, counter)

    def _shuffled(self, samples: Iterator[dict], rng: np.random.Generator) -> Iterator[dict]:
        """Shuffle buffer over raw samples (bytes, not decoded clips): fill, then emit a random slot and refill."""
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        buf: list[dict] = []
        for s in samples:
            if len(buf) < self.shuffle_buffer:
                buf.append(s)
                continue
            j = int(rng.integers(len(buf)))
            yield buf[j]
            buf[j] = s
        while buf:
            yield buf.pop(int(rng.integers(len(buf))))

    def _stream(self, shards: list[str], counter: SkipCounter, limit: Optional[int]) -> Iterator[dict]:
        """Decoded items of `shards`: one pass if limit is None, else cycle until `limit` items."""
        rng = item_rng(self.seed, 0, self.deterministic)
        tracker = FailureTracker(type(self).__name__, self.max_consecutive_failures)
        yielded = 0
        while shards:
            yielded_this_pass = 0
            for raw in self._shuffled(self._raw(shards, rng, counter, tracker), rng):
                try:
                    item = self.decode(raw)
                except BadSample as e:
                    tracker.fail(e, counter)
                    continue
                tracker.armed = False  # one good sample: the data is not all bad; streams end by themselves
                yield item
                yielded, yielded_this_pass = yielded + 1, yielded_this_pass + 1
                if limit is not None and yielded >= limit:
                    return
            if limit is None or yielded_this_pass == 0:
                return  # one pass (each sample exactly once), or cycling would never yield anything

    def __iter__(self) -> Iterator[dict]:
        limit = None
        if self.samples_per_epoch is not None:
            _, world = rank_and_world(self.rank, self.world_size)
            info = get_worker_info()
            limit = int(self.samples_per_epoch) // (world * (info.num_workers if info is not None else 1))
        return self._stream(self.my_shards(), self.skips, limit)

    def check_usable(self) -> None:
        """Fail fast: RuntimeError unless some shard holds a usable sample (reads all shards in order until the
        first good one; stops after max_consecutive_failures bad samples in a row)."""
        tracker = FailureTracker(type(self).__name__, self.max_consecutive_failures)
        for url in self.urls:
            try:
                for raw in iter_tar(url):
                    try:
                        self.decode(raw)
                        return
                    except BadSample as e:
                        tracker.fail(e, None)
            except BadSample as e:
                tracker.fail(e, None)
        tracker.raise_all_bad(f"no usable sample in any of {len(self.urls)} shard(s)")
