"""WebDatasetVideos: shard parsing, skip reasons, exact-once splitting over ranks x workers, fail fast."""

import collections
import os

import pytest
import torch
from videofiles import frame_index, write_shard, write_video
from torch.utils.data import DataLoader

from i2v.data import ClipSpec, WebDatasetVideos, collate_videos, expand_urls, shards_for


@pytest.fixture(scope="module")
def shards(tmp_path_factory, media):
    """5 good shards of 3,2,4,1,2 samples (some bad samples inside) + 1 broken tar + 1 missing path."""
    d = tmp_path_factory.mktemp("shards")
    good = open(media["good"], "rb").read()
    short = open(media["short"], "rb").read()
    text = open(media["text"], "rb").read()
    ok = {"status": "success"}
    layout = [
        [{"mp4": good, "txt": "a"}, {"mp4": good, "txt": "b", "json": ok},
         {"txt": "c", "json": {"status": "failed_to_download", "error_message": "404"}}],
        [{"mp4": good, "txt": "d", "json": ok}, {"mp4": text, "txt": "e", "json": ok}],
        [{"mp4": good, "txt": "f"}, {"txt": "g", "json": ok}, {"mp4": good, "txt": ""},
         {"mp4": short, "txt": "h"}],
        [{"mp4": good, "json": {"status": "success", "caption": "caption from json"}}],
        [{"mp4": good, "txt": "i", "json": b"{not json"}, {"mp4": good, "txt": "j"}],
    ]
    urls, expected = [], set()
    for s, samples in enumerate(layout):
        rows = []
        for k, smp in enumerate(samples):
            key = f"{s:05d}{k:03d}"
            rows.append({"key": key, **smp})
        urls.append(write_shard(d / f"{s:05d}.tar", rows))
    expected = {"00000000", "00000001", "00001000", "00002000", "00003000", "00004001"}
    broken = d / "00005.tar"
    data = open(urls[0], "rb").read()
    broken.write_bytes(data[: len(data) // 3])  # cut inside the first mp4 member
    urls.append(str(broken))
    urls.append(str(d / "00006.tar"))  # does not exist
    skips = {"bad_status": 1, "corrupt": 1, "no_video": 1, "missing_caption": 1, "too_short": 1,
             "bad_metadata": 1, "unreadable_shard": 2}
    return {"dir": str(d), "urls": urls, "expected": expected, "skips": skips}


def _ds(urls, **kw):
    clip = ClipSpec(kw.pop("num_frames", 12), kw.pop("stride", 2), 16, hflip=True)
    return WebDatasetVideos(urls, **{"clip": clip, "shuffle_buffer": 4, **kw})


def test_one_pass_items_and_counts(shards):
    ds = _ds(shards["urls"], deterministic=True)
    items = list(ds)
    assert sorted(it["meta"]["key"] for it in items) == sorted(shards["expected"])
    for it in items:
        assert it["video"].shape == (12, 3, 16, 16) and -1 <= it["video"].min() and it["video"].max() <= 1
        assert [frame_index(f) for f in it["video"]] == it["meta"]["indices"]
    caps = {it["meta"]["key"]: it["text"] for it in items}
    assert caps["00003000"] == "caption from json" and caps["00000000"] == "a"
    assert {r: n for r, n in ds.skips.totals().items() if n} == shards["skips"]
    again = list(ds)  # deterministic: same order, same clips
    assert [it["meta"]["key"] for it in again] == [it["meta"]["key"] for it in items]
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(items, again))


def test_shards_for_partitions():
    urls = [f"s{i}" for i in range(5)]
    parts = [shards_for(urls, r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(sum(parts, [])) == urls and sorted(len(p) for p in parts) == [1, 1, 1, 2]


def test_exactly_once_over_2_ranks_x_2_workers(shards):
    seen, skipped = collections.Counter(), collections.Counter()
    for rank in range(2):
        ds = _ds(shards["urls"], rank=rank, world_size=2)  # training mode: shuffled shards + buffer
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_videos)
        for batch in loader:
            assert batch["video"].shape[1:] == (12, 3, 16, 16)
            seen.update(m["key"] for m in batch["meta"])
        skipped.update({r: n for r, n in ds.skips.totals().items() if n})
    assert set(seen) == shards["expected"] and max(seen.values()) == 1
    assert dict(skipped) == shards["skips"]  # counted inside worker processes, read in the main process


def test_samples_per_epoch(shards):
    ds = _ds(shards["urls"][:5], samples_per_epoch=8, rank=0, world_size=2)
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_videos)
    assert len(list(loader)) == 8 // 2  # rank 0: 2 workers x (8 // 4) samples, cycling its shards


def test_expand_urls(shards):
    pattern = os.path.join(shards["dir"], "{00000..00004}.tar")
    assert expand_urls(pattern) == shards["urls"][:5]
    assert expand_urls(shards["dir"]) == shards["urls"][:6]  # folder: existing *.tar, sorted
    assert expand_urls([pattern, shards["urls"][5]]) == shards["urls"][:6]


def test_all_bad_fails_fast(tmp_path, media):
    text = open(media["text"], "rb").read()
    urls = [write_shard(tmp_path / f"{s}.tar", [{"key": f"{s}{k:03d}", "mp4": text, "txt": "x"} for k in range(5)])
            for s in range(3)]
    ds = _ds(urls, max_consecutive_failures=50)
    with pytest.raises(RuntimeError, match=r"no usable sample in any of 3 shard\(s\) \(corrupt=15\)"):
        ds.check_usable()
    ds = _ds(urls, max_consecutive_failures=10)
    with pytest.raises(RuntimeError, match="10 consecutive samples"):
        list(ds)
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"garbage" * 100)
    with pytest.raises(RuntimeError, match="unreadable_shard=1"):
        _ds([str(broken)]).check_usable()


def test_long_video_in_shard(tmp_path):
    mp4 = write_video(tmp_path / "v.mp4", num_frames=100)
    url = write_shard(tmp_path / "0.tar", [{"key": "k0", "mp4": open(mp4, "rb").read(), "txt": "t"}])
    (item,) = list(_ds([url], num_frames=16, stride=4, deterministic=True))
    assert item["meta"]["stride_used"] == 4 and item["meta"]["n_frames_source"] == 100
    assert [frame_index(f) for f in item["video"]] == item["meta"]["indices"]
