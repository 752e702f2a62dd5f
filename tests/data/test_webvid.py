"""WebVidDataset: CSV by column name, both folder layouts, skip-and-count, determinism, fail fast, workers."""

import csv
import os
import shutil

import pytest
import torch
from videofiles import frame_index, make_broken, write_video
from torch.utils.data import DataLoader

from i2v.data import ClipSpec, WebVidDataset, collate_videos

# videoid -> (kind, caption); kinds: good | nested (page_dir layout) | missing | zero | text | truncated | short
ROWS = [
    ("1001", "good", "a dog runs"),
    ("1002", "missing", "never downloaded"),
    ("1003", "zero", "zero bytes"),
    ("1004", "nested", "a cat in page dir"),
    ("1005", "text", "text file named mp4"),
    ("1006", "truncated", "truncated download"),
    ("1007", "short", "a very short clip"),
    ("1008", "good", ""),  # empty caption
    ("1009", "good", "waves on a beach"),
]
GOOD = {0, 3, 8}
REASON = {"missing": "missing_file", "zero": "empty_file", "text": "corrupt", "truncated": "corrupt",
          "short": "too_short"}


@pytest.fixture(scope="module")
def webvid(tmp_path_factory, media):
    root = tmp_path_factory.mktemp("webvid")
    videos = root / "videos"
    (videos / "000001_000050").mkdir(parents=True)
    for vid, kind, _ in ROWS:
        if kind == "good":
            shutil.copy(media["good"], videos / f"{vid}.mp4")
        elif kind == "nested":
            write_video(videos / "000001_000050" / f"{vid}.mp4", num_frames=30)
        elif kind == "short":
            shutil.copy(media["short"], videos / f"{vid}.mp4")
        elif kind != "missing":
            shutil.copy(media[kind], videos / f"{vid}.mp4")
    csv_path = root / "results_2M_val.csv"
    with open(csv_path, "w", newline="") as f:  # column order as in some releases, plus extra columns
        w = csv.writer(f)
        w.writerow(["contentUrl", "name", "duration", "page_dir", "videoid", "page_idx"])
        for vid, _, cap in ROWS:
            w.writerow([f"https://x/{vid}.mp4", cap, "PT00H00M10S", "000001_000050", vid, "1"])
    return str(csv_path), str(videos)


def _ds(webvid, **kw):
    csv_path, videos = webvid
    return WebVidDataset(csv_path, videos, **{"clip": ClipSpec(12, 3, 16, hflip=kw.pop("hflip", True)), **kw})


def test_items_and_layouts(webvid):
    ds = _ds(webvid, deterministic=True)
    assert len(ds) == len(ROWS)
    for i in sorted(GOOD):
        item = ds[i]
        assert item["meta"]["index"] == i and item["text"] == ROWS[i][2]
        assert item["video"].shape == (12, 3, 16, 16) and item["video"].dtype == torch.float32
        assert -1 <= item["video"].min() and item["video"].max() <= 1
        assert item["meta"]["videoid"] == ROWS[i][0]
    assert os.path.join("000001_000050", "1004.mp4") in ds[3]["meta"]["path"]
    assert ds[3]["meta"]["n_frames_source"] == 30


def _expected_skips(j):
    """Skips counted when asking for j: row j itself if bad (j+1, ... are visited until a good row, cyclically,
    but a fallback onto a bad row is counted by that row's own request, so each bad file counts once)."""
    out = []
    while j % len(ROWS) not in GOOD:
        kind = ROWS[j % len(ROWS)][1]
        out.append(REASON.get(kind, "missing_caption") if ROWS[j % len(ROWS)][2] else "missing_caption")
        j += 1
    return out[:1]


def test_bad_rows_skipped_and_counted(webvid):
    ds = _ds(webvid, deterministic=True)
    for j in (1, 4, 6, 7):
        before = ds.skips.totals()
        item = ds[j]
        nxt = next(k % len(ROWS) for k in range(j, j + len(ROWS)) if k % len(ROWS) in GOOD)
        assert item["meta"]["index"] == nxt
        after = ds.skips.totals()
        delta = {r: after[r] - before[r] for r in after if after[r] != before[r]}
        exp = {}
        for r in _expected_skips(j):
            exp[r] = exp.get(r, 0) + 1
        assert delta == exp, (j, delta, exp)


def test_deterministic_vs_random(webvid):
    val = _ds(webvid, deterministic=True, hflip=True)
    a, b = val[0], val[0]
    assert a["meta"]["start"] == b["meta"]["start"] and torch.equal(a["video"], b["video"])
    assert [frame_index(f) for f in a["video"]] == a["meta"]["indices"]  # also when flipped
    train = _ds(webvid, deterministic=False)
    starts = {train[0]["meta"]["start"] for _ in range(8)}
    assert len(starts) > 1


def test_missing_columns_error(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("id,caption\n1,x\n")
    with pytest.raises(ValueError, match="videoid"):
        WebVidDataset(str(p), str(tmp_path))


def test_all_bad_fails_fast(tmp_path, media):
    videos = tmp_path / "v"
    videos.mkdir()
    bad = make_broken(str(videos), media["good"])
    p = tmp_path / "all_bad.csv"
    with open(p, "w") as f:
        f.write("videoid,name,page_dir\n")
        for i in range(300):
            f.write(f"{i},caption {i},x\n")
    shutil.copy(bad["text"], videos / "0.mp4")
    ds = WebVidDataset(str(p), str(videos), clip=ClipSpec(4, 1, 8, hflip=True), max_consecutive_failures=20)
    with pytest.raises(RuntimeError, match=r"20 consecutive samples were unusable \(.*missing_file=19"):
        ds[0]
    assert ds.skips.totals()["missing_file"] == 0 and ds.skips.totals()["corrupt"] == 1  # only row 0 was asked for
    with pytest.raises(RuntimeError, match="unusable"):
        ds.check_usable()


def test_counts_across_workers(webvid):
    ds = _ds(webvid, deterministic=True)
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_videos)
    n = 0
    for batch in loader:
        assert batch["video"].shape[1:] == (12, 3, 16, 16) and len(batch["text"]) == batch["video"].shape[0]
        assert all(m["index"] in GOOD for m in batch["meta"])
        n += batch["video"].shape[0]
    assert n == len(ROWS)
    exp = {}
    for j in range(len(ROWS)):
        for r in _expected_skips(j):
            exp[r] = exp.get(r, 0) + 1
    got = {r: c for r, c in ds.skips.totals().items() if c}
    assert got == exp
    assert ds.skips.since_last_report() == ds.skips.totals()
    assert sum(ds.skips.since_last_report().values()) == 0
