"""Reading mp4/gif/frame folders, pairing videos with images, and the MJHQ-30K 50-pair selection + manifest."""
import json
import random

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from i2v.metrics.mjhq import CATEGORIES, find_category_dirs, mjhq_items, read_manifest, select_names
from i2v.metrics.scoring import collect_items
from i2v.metrics.video_io import find_videos, read_video


def frames_uint8(n=4, h=16, w=24):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return np.stack([np.roll(base, i, axis=1) for i in range(n)])


def test_gif_and_frame_folder_are_lossless(tmp_path):
    arr = frames_uint8()
    Image.fromarray(arr[0]).save(tmp_path / "a.gif", save_all=True, optimize=False,
                                 append_images=[Image.fromarray(f) for f in arr[1:]])
    (tmp_path / "b").mkdir()
    for i, f in enumerate(arr):                              # 10 frames: natural sort (2 before 10)
        Image.fromarray(f).save(tmp_path / "b" / f"frame_{i * 8}.png")
    expect = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    folder = read_video(tmp_path / "b")
    assert folder.shape == (4, 3, 16, 24)
    torch.testing.assert_close(folder, expect)
    gif = read_video(tmp_path / "a.gif")
    assert gif.shape == (4, 3, 16, 24) and gif.min() >= -1 and gif.max() <= 1
    assert read_video(tmp_path / "b", max_frames=2).shape[0] == 2


def test_mp4_roundtrip_is_close(tmp_path):
    arr = np.repeat(np.repeat(frames_uint8(6, 8, 8), 4, 1), 4, 2)   # 32x32 blocky content: codec-friendly
    imageio.mimwrite(tmp_path / "v.mp4", list(arr), fps=8, codec="libx264", quality=10, macro_block_size=1,
                     output_params=["-pix_fmt", "yuv444p"])
    v = read_video(tmp_path / "v.mp4")
    assert v.shape == (6, 3, 32, 32)
    expect = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert (v - expect).abs().mean().item() < 0.05


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported"):
        read_video(tmp_path / "x.txt")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="bad.mp4"):
        read_video(tmp_path / "bad.mp4")


def test_collect_items_pairs_by_stem_and_manifest(tmp_path):
    arr = frames_uint8()
    vids, imgs = tmp_path / "v", tmp_path / "i"
    vids.mkdir(), imgs.mkdir()
    for name in ("cat", "dog"):
        Image.fromarray(arr[0]).save(vids / f"{name}.gif", save_all=True, append_images=[Image.fromarray(arr[1])])
        Image.fromarray(arr[0]).save(vids / f"{name}.png")   # the input image beside the video
    Image.fromarray(arr[0]).save(imgs / "cat.jpg")
    assert set(find_videos(vids)) == {"cat", "dog"}
    beside = {it["name"]: it["image"] for it in collect_items(str(vids))}
    assert beside == {"cat": str(vids / "cat.png"), "dog": str(vids / "dog.png")}
    other = {it["name"]: it["image"] for it in collect_items(str(vids), images=str(imgs))}
    assert other == {"cat": str(imgs / "cat.jpg"), "dog": None}
    (tmp_path / "m.jsonl").write_text(json.dumps({"name": "dog", "image": "i/cat.jpg", "prompt": "a dog"}) + "\n")
    items = collect_items(str(vids), manifest=str(tmp_path / "m.jsonl"))
    assert items == [{"name": "dog", "video": str(vids / "dog.gif"), "image": str((imgs / "cat.jpg").resolve()),
                      "prompt": "a dog"}]


def fake_mjhq(root, per_cat=7, wrapper="mjhq30k_imgs"):
    meta = {}
    for ci, cat in enumerate(CATEGORIES):
        d = root / wrapper / cat
        d.mkdir(parents=True)
        for j in range(per_cat):
            name = f"{ci:02d}{j:03d}abc"
            meta[name] = {"category": cat, "prompt": f"{cat} prompt {j}"}
            Image.new("RGB", (16, 16), (ci * 20, j * 30, 0)).save(d / f"{name}.jpg")
    (root / "meta_data.json").write_text(json.dumps(meta))
    return meta


def test_selection_recipe_is_stratified_and_reproducible(tmp_path):
    meta = fake_mjhq(tmp_path)
    names = select_names(meta, per_category=5, seed=0)
    rng = random.Random(0)                                   # the recipe, written out independently
    expect = []
    for cat in CATEGORIES:
        expect += rng.sample(sorted(n for n, v in meta.items() if v["category"] == cat), 5)
    assert names == expect and len(names) == 50 and len(set(names)) == 50
    pairs = list(meta.items())
    random.Random(5).shuffle(pairs)
    shuffled = dict(pairs)                                   # dict order must not matter
    assert select_names(shuffled, 5, 0) == names
    assert select_names(meta, 5, 1) != names
    assert len(select_names(meta, stratified=False, n=50)) == 50
    assert set(find_category_dirs(tmp_path)) == set(CATEGORIES)


def test_manifest_written_once_and_verified(tmp_path):
    fake_mjhq(tmp_path)
    man = tmp_path / "out" / "mjhq50.json"
    items = mjhq_items(str(tmp_path / "meta_data.json"), str(tmp_path), str(man))
    assert len(items) == 50 and man.is_file()
    assert {"name", "category", "prompt", "image", "sha256", "width", "height"} <= set(items[0])
    again = mjhq_items(str(tmp_path / "nothing.json"), str(tmp_path / "nowhere"), str(man))   # reused, not redone
    assert [i["name"] for i in again] == [i["name"] for i in items]
    Image.new("RGB", (16, 16), (1, 2, 3)).save(items[0]["image"])
    with pytest.raises(ValueError, match="sha256"):
        read_manifest(man, verify=True)


def test_missing_selected_image_is_an_error(tmp_path):
    meta = fake_mjhq(tmp_path)
    first = select_names(meta)[0]
    (tmp_path / "mjhq30k_imgs" / meta[first]["category"] / f"{first}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=first):
        mjhq_items(str(tmp_path / "meta_data.json"), str(tmp_path), None)
