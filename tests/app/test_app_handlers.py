"""The page's handlers called directly: a video of the right shape with frame 1 = the input, the settings JSON and
its files; every bad input returns a message for the page instead of raising."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from i2v.app.engine import DemoSettings
from i2v.app.handlers import DemoInputError, parse_seed, parse_settings
from i2v.utils.io import load_image

PROMPT = "a red circle moving left on a blue background"
FAST = DemoSettings(t0=1.0, p=0.5, steps=4, guidance_scale=3.0, num_frames=4)


def test_generate_returns_video_settings_and_files(demo_app, png):
    res = demo_app.generate(str(png), PROMPT, FAST, seed=3)
    assert res["ok"], res
    frames = res["frames"]
    assert frames.shape == (4, 3, 32, 32) and 0 <= frames.min() and frames.max() <= 1
    torch.testing.assert_close(frames[0] * 2 - 1, load_image(png), atol=1e-5, rtol=0)   # frame 1 = the input
    meta = json.loads(Path(res["settings"]["video"]).with_suffix(".json").read_text())
    assert meta == res["settings"]
    assert {k: meta[k] for k in ("seed", "steps", "t0", "p", "num_frames", "adapter", "prompt")} == \
        {"seed": 3, "steps": 4, "t0": 1.0, "p": 0.5, "num_frames": 4, "adapter": "full", "prompt": PROMPT}
    assert meta["sample_py"].startswith("python sample.py experiment=toy ") and "seed=3" in meta["sample_py"]
    for f in res["files"] + [res["preview"], res["strip"]]:
        assert Path(f).is_file() and Path(f).stat().st_size > 0
    assert Image.open(res["strip"]).size == (4 * 32, 32)


def test_random_seed_is_recorded(demo_app, png):
    res = demo_app.generate(str(png), PROMPT, FAST, seed=None)
    assert res["ok"] and isinstance(res["settings"]["seed"], int)
    again = demo_app.generate(str(png), PROMPT, FAST, seed=res["settings"]["seed"])
    assert torch.equal(again["frames"], res["frames"])


def test_compare_and_table3(demo_app, png):
    a, b = FAST, DemoSettings(**{**FAST.as_dict(), "p": 1.0, "adapter": "none"})
    res = demo_app.compare(str(png), PROMPT, a, b, seed=5)
    assert res["ok"], res
    assert res["A"]["settings"]["adapter"] == "full" and res["B"]["settings"]["p"] == 1.0
    assert torch.equal(res["A"]["frames"][0], res["B"]["frames"][0])            # same input, same frame 1
    assert Path(res["sheet"]).is_file()
    steps = []
    t3 = demo_app.table3(str(png), PROMPT, DemoSettings(**{**FAST.as_dict(), "steps": 2}), seed=5,
                         progress_cb=lambda d, n: steps.append((d, n)))
    assert t3["ok"] and [k for k in t3 if k in ("full", "no_i2v", "no_content", "none")] == \
        ["full", "no_i2v", "no_content", "none"]
    assert steps[-1] == (8, 8)                                                   # one bar over the four videos


def test_random_toy_scene(demo_app):
    res = demo_app.random_toy_scene(index=12)
    assert res["ok"] and Image.open(res["image"]).size == (32, 32)
    assert "moving" in res["prompt"]


@pytest.fixture()
def bad_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    huge = tmp_path / "huge.png"
    Image.new("RGB", (1024, 1024)).save(huge)          # the fixture's limit is 512x512
    return {"text": text, "huge": huge}


@pytest.mark.parametrize("case, expect", [
    ("no image", "No image"), ("missing file", "gone"), ("text", "not an image"), ("huge", "limit"),
    ("no prompt", "No prompt"), ("t0 0", "t0 must lie in (0, 1]"), ("t0 2", "t0 must lie in (0, 1]"),
    ("p", "p must lie in [0, 1]"), ("frames", "exceeds"), ("steps", "steps must be >= 1"),
])
def test_bad_input_gives_a_message(demo_app, png, bad_files, tmp_path, case, expect):
    image, prompt, s = str(png), PROMPT, FAST
    image = {"no image": None, "missing file": str(tmp_path / "nope.png"), "text": str(bad_files["text"]),
             "huge": str(bad_files["huge"])}.get(case, image)
    prompt = "  " if case == "no prompt" else prompt
    change = {"t0 0": {"t0": 0.0}, "t0 2": {"t0": 2.0}, "p": {"p": 1.5}, "frames": {"num_frames": 999},
              "steps": {"steps": 0}}.get(case, {})
    s = DemoSettings(**{**s.as_dict(), **change})
    res = demo_app.generate(image, prompt, s, seed=1)
    assert res["ok"] is False and expect in res["error"], res
    assert "Traceback" not in res["error"]
    cmp = demo_app.compare(image, prompt, FAST, s, seed=1)                     # the side-by-side mode too
    assert cmp["ok"] is False and expect in cmp["error"], cmp


def test_page_values_are_parsed_with_messages():
    assert parse_settings("0.8", 0.5, 4.0, "3", 8, None, "none") == \
        DemoSettings(t0=0.8, p=0.5, steps=4, guidance_scale=3.0, num_frames=8, negative_prompt="", adapter="none")
    for args in (("x", 0.5, 4, 3, 8), (0.8, float("nan"), 4, 3, 8), (0.8, 0.5, 4.5, 3, 8), (0.8, 0.5, None, 3, 8)):
        with pytest.raises(DemoInputError):
            parse_settings(*args)
    with pytest.raises(DemoInputError):
        parse_settings(0.8, 0.5, 4, 3, 8, "", "half")
    assert parse_seed(12, False) == 12 and 0 <= parse_seed(None, True) < 2**31
    for bad in (-1, 2**31, 1.5, "abc", None):
        with pytest.raises(DemoInputError):
            parse_seed(bad, False)


def test_unexpected_errors_become_one_line(demo_app, png, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kaput")
    monkeypatch.setattr(demo_app.engine, "generate", boom)
    res = demo_app.generate(str(png), PROMPT, FAST, seed=1)
    assert res == {"ok": False, "error": "internal error (RuntimeError: kaput); the server log has the details"}
