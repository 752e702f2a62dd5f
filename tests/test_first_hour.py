"""Issue 15, a newcomer's first hour: the README snippet's prompt fits its scene, bad input is found before any
model loads (one line, no traceback), two prompts on one image never collide, shipped files carry no machine paths."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image
from safetensors import safe_open

from i2v.cli.config import ASSETS, CONFIGS, portable_paths
from toy_sample import toy_sample_cfg

ROOT = CONFIGS.parent
README = ROOT / "README.md"


def test_readme_sample_snippet_prompt_is_the_scenes_caption(tmp_path):
    """The 'sample right away' snippet: its Python part makes the input image; its prompt is that scene's caption."""
    text = README.read_text()
    snippet = re.search(r"python - <<'EOF'\n(.*?)\nEOF\n(python sample\.py [^\n]*)", text, flags=re.S)
    assert snippet, "README has no 'python - <<EOF ... python sample.py' snippet"
    code, command = snippet.groups()
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    image = re.search(r"image=(\S+)", command).group(1)
    assert (tmp_path / image).is_file(), f"the snippet does not write {image}"
    seed = re.search(r"SyntheticVideos\(.*seed=(\d+)", code).group(1)
    from i2v.data.synthetic import SyntheticVideos

    caption = SyntheticVideos(1, num_frames=1, size=32, seed=int(seed))[0]["text"]
    prompt = re.search(r'prompt="([^"]*)"', command).group(1)
    assert prompt == caption, f"seed {seed} shows {caption!r}, the README prompts {prompt!r}"
    from omegaconf import OmegaConf

    scenes = OmegaConf.load(ROOT / "configs" / "backbone" / "toy.yaml").scenes   # the input is from the base's world
    assert f"texture={scenes.texture:g}" in code and f"texture_cells={scenes.texture_cells}" in code, code
    assert "radius_range=({:g}, {:g})".format(*scenes.radius_range) in code, code


def test_missing_image_is_reported_before_any_model_loads(tmp_path, monkeypatch):
    import i2v.pipeline.bundle as bundle
    import i2v.sampling as sampling

    def no_models(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(bundle, "build_bundle", no_models)
    with pytest.raises(FileNotFoundError, match="image not found: .*nope.png"):
        sampling.sample(toy_sample_cfg(tmp_path, f"image={tmp_path / 'nope.png'}", "prompt=a"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        sampling.sample(toy_sample_cfg(tmp_path, f"image={tmp_path / 'bad.png'}", "prompt=a"))
    with pytest.raises(ValueError, match=r"^image https://example\.org/cat\.png is a URL: .*give its path$"):
        sampling.sample(toy_sample_cfg(tmp_path, "image=https://example.org/cat.png", "prompt=a"))
    rows = tmp_path / "rows.csv"   # a prompts= row: reported by row with the address as written
    rows.write_text(f"image,prompt\nhttps://example.org/cat.png,a\n")
    with pytest.raises(Exception, match=r"row 1: image https://example\.org/cat\.png is a URL"):
        sampling.sample(toy_sample_cfg(tmp_path, f"prompts={rows}"))


def test_an_adapter_of_another_backbone_is_named_before_any_model_loads(tmp_path, png, monkeypatch):
    """``sample.py ckpt=<the toy adapter>`` without experiment=toy: the file's backbone and the fix, not a list of
    SD1.5 weight paths to set; the same for a file of a real backbone given to the toy."""
    from hydra import compose, initialize_config_dir
    from safetensors.torch import load_file

    import i2v.pipeline.bundle as bundle
    import i2v.sampling as sampling
    from i2v.checkpoints.adapter_io import save_adapter

    monkeypatch.setattr(bundle, "build_bundle", lambda *a, **k: pytest.fail("a model was loaded first"))
    toy_file = ASSETS / "toy" / "adapter.safetensors"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("sample", [f"ckpt={toy_file}", f"image={png}", "prompt=a", f"out={tmp_path / 'out'}"])
    with pytest.raises(ValueError, match=r"for backbone 'toy', but the model is backbone 'sd15' \(add experiment=toy"):
        sampling.sample(cfg)
    sdxl_file = save_adapter(tmp_path / "sdxl.safetensors", load_file(str(toy_file)), backbone="sdxl")
    with pytest.raises(ValueError, match=r"for backbone 'sdxl', but the model is backbone 'toy' \(add backbone=sdxl"):
        sampling.sample(toy_sample_cfg(tmp_path, f"ckpt={sdxl_file}", f"image={png}", "prompt=a"))


def test_sample_py_prints_one_line_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), "experiment=toy", f"image={tmp_path}/nope.png",
                        "prompt=a", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("error: image not found") and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "[ip_adapter] loaded" not in r.stdout      # nothing was loaded


def test_two_prompts_on_one_image_and_seed_write_two_videos(tmp_path, png, capsys):
    from i2v.sampling import sample

    first = sample(toy_sample_cfg(tmp_path, f"image={png}", "prompt=a red circle"))
    second = sample(toy_sample_cfg(tmp_path, f"image={png}", "prompt=a blue square"))
    assert first[0]["video"] != second[0]["video"]
    videos = sorted(p.name for p in (tmp_path / "out").glob("*.mp4"))
    assert len(videos) == 2 and videos[0] == "in_42.mp4", videos
    prompts = {json.loads(p.read_text())["prompt"] for p in (tmp_path / "out").glob("*.json")}
    assert prompts == {"a red circle", "a blue square"}
    with pytest.raises(FileExistsError):                 # the same prompt again is the same video: refused
        sample(toy_sample_cfg(tmp_path, f"image={png}", "prompt=a blue square"))


def test_an_image_of_another_size_gets_a_note(tmp_path, capsys):
    from i2v.sampling import sample

    wide = tmp_path / "wide.png"
    Image.new("RGB", (100, 60), (0, 0, 255)).save(wide)
    sample(toy_sample_cfg(tmp_path, f"image={wide}", "prompt=a"))
    assert "note: wide.png is 100x60; resized and centre-cropped to 32x32" in capsys.readouterr().out


def _strings(value):
    """Every string inside a metadata value (JSON-encoded values such as ``config`` are decoded)."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = value
        if not isinstance(decoded, (dict, list)):
            yield value
            return
        value = decoded
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    for v in items:
        yield from _strings(v)


def test_shipped_safetensors_carry_no_absolute_paths():
    """Shipped files carry relative or ``${asset:...}`` paths only, never the paths of the machine that made them."""
    found = {}
    for f in sorted(ASSETS.rglob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            meta = h.metadata() or {}
        bad = sorted({s for s in _strings(meta) if os.path.isabs(s)})
        if bad:
            found[str(f.relative_to(ASSETS))] = bad
    assert not found, f"absolute paths in shipped metadata: {found}"


def test_adapter_metadata_paths_are_made_portable(tmp_path):
    cfg = {"ckpt": str(ASSETS / "toy" / "adapter.safetensors"), "out_dir": str(tmp_path / "outputs" / "run"),
           "data": {"root": "/data/videos", "n": 3}}
    assert portable_paths(cfg, cwd=tmp_path) == {"ckpt": "${asset:toy/adapter.safetensors}",
                                                 "out_dir": "outputs/run", "data": {"root": "/data/videos", "n": 3}}


def test_a_folder_of_images_gives_one_video_each(tmp_path):
    """image=<folder> with one prompt: a video per image file (other files ignored), named after the image; a file
    that is not an image is reported by name while the others are written."""
    from i2v.sampling import BatchFailed, sample

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(folder / "b.png")
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "a.jpg")
    (folder / "notes.txt").write_text("not an image, not sampled")
    results = sample(toy_sample_cfg(tmp_path, f"image={folder}", "prompt=a shape moving"))
    assert [os.path.basename(r["video"]) for r in results] == ["a_42.mp4", "b_42.mp4"]
    assert {json.loads((tmp_path / "out" / f"{n}_42.json").read_text())["prompt"] for n in "ab"} == {"a shape moving"}
    (folder / "c.png").write_bytes(b"not a png")
    with pytest.raises(BatchFailed, match=r"c\.png"):
        sample(toy_sample_cfg(tmp_path, f"image={folder}", "prompt=another prompt"))
    tag = hashlib.sha1(b"another prompt").hexdigest()[:8]          # same image and seed, another prompt
    assert (tmp_path / "out" / f"a_42_{tag}.mp4").exists() and (tmp_path / "out" / f"b_42_{tag}.mp4").exists()


def test_a_folder_without_images_or_with_one_name_is_refused(tmp_path):
    from i2v.sampling import sample

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image file"):
        sample(toy_sample_cfg(tmp_path, f"image={tmp_path / 'empty'}", "prompt=a"))
    Image.new("RGB", (32, 32)).save(tmp_path / "empty" / "x.png")
    with pytest.raises(ValueError, match="name= names one video"):
        sample(toy_sample_cfg(tmp_path, f"image={tmp_path / 'empty'}", "prompt=a", "name=clip"))


def test_sample_py_steps_past_the_schedule_is_one_line(tmp_path, png):
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), "experiment=toy", f"image={png}", "prompt=a",
                        "steps=1000", f"out={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stderr.startswith("error: sampling.steps=1000 does not fit the 1000 training "
                                                     "timesteps: use at most 999"), r.stderr[-2000:]


def test_a_seed_that_is_not_an_integer_is_refused_not_truncated(tmp_path, png):
    from i2v.pipeline.items import as_seed
    from i2v.sampling import sample

    assert [as_seed(v) for v in (7, "7", " 7 ", 7.0, "-3", "1e3")] == [7, 7, 7, 7, -3, 1000]
    for bad in (1.5, "1.5", "abc", True, "", None):
        with pytest.raises(ValueError, match="is not an integer"):
            as_seed(bad)
    with pytest.raises(ValueError, match=r"^seed 1.5 is not an integer$"):
        sample(toy_sample_cfg(tmp_path, f"image={png}", "prompt=a", "seed=1.5"))
    rows = tmp_path / "rows.jsonl"   # a prompts= row's seed from JSON: 2.5 was run as seed 2
    rows.write_text(json.dumps({"image": str(png), "prompt": "a", "seed": 2.5}) + "\n")
    with pytest.raises(Exception, match=r"row 1: seed 2.5 is not an integer"):
        sample(toy_sample_cfg(tmp_path, f"prompts={rows}"))
