"""FolderVideos: folder trees with sidecar captions, manifests, formats, min resolution, missing captions."""

import json
import os
import shutil

import pytest
import torch
from videofiles import frame_index, write_video

from i2v.data import ClipSpec, FolderVideos


@pytest.fixture(scope="module")
def tree(tmp_path_factory, media):
    root = tmp_path_factory.mktemp("collected")
    (root / "a" / "b").mkdir(parents=True)
    write_video(root / "a" / "big.mp4", num_frames=30, h=96, w=128)
    (root / "a" / "big.txt").write_text("a big clip\n")
    write_video(root / "a" / "b" / "small.MKV", num_frames=30)  # 48x64, upper-case extension
    (root / "a" / "b" / "small.txt").write_text("a small clip")
    write_video(root / "anim.gif", num_frames=20, h=64, w=64, codec="gif")
    (root / "anim.txt").write_text("an animated gif")
    write_video(root / "nocap.mov", num_frames=30, h=96, w=128)  # no caption
    shutil.copy(media["text"], root / "broken.mp4")
    (root / "broken.txt").write_text("broken file")
    (root / "notes.md").write_text("not a video")
    return str(root)


def _ds(root=None, **kw):
    return FolderVideos(root, **{"clip": ClipSpec(6, 2, 16, hflip=kw.pop("hflip", True)), "deterministic": True, **kw})


def test_folder_tree_and_captions(tree):
    ds = _ds(tree)
    names = [os.path.relpath(ds.paths[i], tree) for i in range(len(ds))]
    assert names == ["anim.gif", "broken.mp4", "nocap.mov", os.path.join("a", "big.mp4"),
                     os.path.join("a", "b", "small.MKV")]
    got = {os.path.basename(ds[i]["meta"]["path"]): ds[i]["text"] for i in range(len(ds))}
    assert got == {"anim.gif": "an animated gif", "big.mp4": "a big clip", "small.MKV": "a small clip"}
    gif = ds[0]
    assert gif["meta"]["backend"] == "pyav" and gif["video"].shape == (6, 3, 16, 16)
    assert gif["meta"]["n_frames_source"] == 20  # (GIF's 8-bit palette is too coarse for the frame code)
    big = ds[3]
    assert [frame_index(f) for f in big["video"]] == big["meta"]["indices"]
    ds.skips.reset()
    assert os.path.basename(ds[1]["meta"]["path"]) == "big.mp4"  # broken.mp4 and nocap.mov skipped
    assert {r: n for r, n in ds.skips.totals().items() if n} == {"corrupt": 1}  # nocap.mov counts when asked for


def test_default_caption(tree):
    ds = _ds(tree, default_caption="a video")
    item = ds[2]
    assert os.path.basename(item["meta"]["path"]) == "nocap.mov" and item["text"] == "a video"


def test_min_short_side_lazy_and_prefilter(tree):
    ds = _ds(tree, min_short_side=64)
    kept = {os.path.basename(ds[i]["meta"]["path"]) for i in range(len(ds))}
    assert kept == {"anim.gif", "big.mp4"}
    assert ds.skips.totals()["low_resolution"] >= 1
    pre = _ds(tree, min_short_side=96, prefilter=True, default_caption="x")
    assert [os.path.basename(pre.paths[i]) for i in range(len(pre))] == ["nocap.mov", "big.mp4"]
    assert pre.skips.totals()["low_resolution"] == 2 and pre.skips.totals()["corrupt"] == 1
    with pytest.raises(RuntimeError, match="min_short_side=1000"):
        _ds(tree, min_short_side=1000, prefilter=True)


def test_manifests(tree, tmp_path):
    jl = tmp_path / "m.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [
        {"path": os.path.join(tree, "a", "big.mp4"), "caption": "from manifest"},
        {"video": "a/b/small.MKV", "text": "relative path"},
        {"path": "nocap.mov", "caption": ""},
    ]) + "\n")
    ds = _ds(tree, manifest=str(jl))
    assert [ds[i]["text"] for i in range(3)] == ["from manifest", "relative path", "from manifest"]
    assert ds.skips.totals()["missing_caption"] == 1
    cs = tmp_path / "m.csv"
    cs.write_text(f"caption,path\nhello,{os.path.join(tree, 'anim.gif')}\n")
    # an absolute path outside the manifest's folder needs the flag (else it is skipped as outside_root)
    item = FolderVideos(manifest=str(cs), clip=ClipSpec(4, 1, (8, 12), hflip=True), allow_outside_root=True)[0]
    assert item["text"] == "hello" and item["video"].shape == (4, 3, 8, 12)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file_name": "x.mp4"}\n')
    with pytest.raises(ValueError, match="no 'path' field"):
        FolderVideos(manifest=str(bad))


def test_all_bad_and_empty(tmp_path, media):
    for i in range(3):
        shutil.copy(media["zero"], tmp_path / f"{i}.mp4")
        (tmp_path / f"{i}.txt").write_text("x")
    with pytest.raises(RuntimeError, match=r"all 3 items are unusable|3 consecutive.*empty_file=3"):
        _ds(str(tmp_path)).check_usable()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no videos found"):
        _ds(str(empty))


def test_training_mode_varies(tree):
    ds = _ds(tree, deterministic=False, hflip=True)
    items = [ds[3] for _ in range(10)]
    assert len({it["meta"]["start"] for it in items}) > 1 and len({it["meta"]["flipped"] for it in items}) == 2
    assert all(torch.isfinite(it["video"]).all() for it in items)
