"""evaluate(cfg) end to end on tiny videos (composed from the real configs/evaluate.yaml): score mode with random
RAFT + a tiny random CLIP, generate mode through a stand-in sampler, and the failure messages."""
import csv
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

import i2v.cli.config  # noqa: F401  (the ${asset:...} resolver used by the configs)
from i2v.evaluate import evaluate

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}}


@pytest.fixture(scope="module", autouse=True)
def tiny_open_clip(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("occfg")
    (d / "TinyEval-ViT.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(d)


def cfg_for(tmp_path, *overrides):
    base = [f"out_dir={tmp_path / 'out'}", "device=cpu", "metrics.clip_temp.kind=random",
            "metrics.clip_temp.model_name=TinyEval-ViT", "metrics.clip_temp.size=32",
            "metrics.flow.allow_random=true", "metrics.flow.num_flow_updates=1"]
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("evaluate", overrides=base + list(overrides))


def write_gif(path, frames):
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], optimize=False)


def test_score_mode_writes_csv_and_summary(tmp_path):
    rng = np.random.default_rng(0)
    vids = tmp_path / "videos"
    vids.mkdir()
    for name in ("a", "b"):
        base = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        write_gif(vids / f"{name}.gif", [np.roll(base, i, 1) for i in range(3)])
        Image.fromarray(base).save(vids / f"{name}.png")
    (vids / "broken.mp4").write_bytes(b"junk")
    summary = evaluate(cfg_for(tmp_path, f"videos={vids}"))
    out = tmp_path / "out"
    rows = list(csv.DictReader(open(out / "per_video.csv")))
    assert [r["name"] for r in rows] == ["a", "b"]
    assert summary["n_videos"] == 2 and summary["skipped"][0]["name"] == "broken"
    for key in ("clip_temp", "flow_score", "warping_error", "warping_error_raw", "warping_error_x1e4"):
        vals = [float(r[key]) for r in rows]
        s = summary["metrics"][key]
        assert s["n"] == 2 and s["mean"] == pytest.approx(sum(vals) / 2)
        assert s["std"] == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2))
    assert summary["metrics"]["dover_vqa"] == {"mean": None, "std": None, "n": 0}
    assert "dover_vqa" in summary["unavailable"]
    st = summary["settings"]
    assert st["clip_temp"]["mode"] == "image" and st["warping_error"]["scale"] == 65025.0
    assert "RANDOM" in st["flow_score"]["flow"]
    ww = [float(r["warping_error"]) / float(r["warping_error_raw"]) for r in rows if float(r["warping_error_raw"])]
    assert all(w == pytest.approx(65025.0) for w in ww)
    assert json.loads((out / "summary.json").read_text())["n_videos"] == 2
    assert "metrics:" in (out / "resolved_config.yaml").read_text()


def test_generate_mode_calls_the_sampler(tmp_path, monkeypatch):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    items = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(imgs / f"im{i}.png")
        items.append({"name": f"im{i}", "image": f"imgs/im{i}.png", "prompt": f"prompt {i}", "seed": i})
    (tmp_path / "set.json").write_text(json.dumps(items))
    calls = {}

    def generate_videos(cfg, its, out_dir):                  # stand-in sampler: the video repeats the image
        calls.update(t0=cfg.sampling.t0, p=cfg.sampling.p, items=its, out_dir=out_dir)
        Path(out_dir).mkdir(parents=True)
        res = []
        for it in its:
            folder = Path(out_dir) / it["name"]               # lossless frame folder (gif would quantise)
            folder.mkdir()
            for f in range(4):
                Image.open(it["image"]).convert("RGB").save(folder / f"{f:03d}.png")
            res.append({"video": str(folder), "image": it["image"], "name": it["name"]})
        return res

    monkeypatch.setitem(sys.modules, "i2v.sampling", types.SimpleNamespace(generate_videos=generate_videos))
    monkeypatch.setattr("i2v.pipeline.bundle.sampling_input_problems", lambda cfg: [])   # the stand-in needs no weights
    cfg = cfg_for(tmp_path, "experiment=table2", "fsp_row=7", f"eval_set.manifest={tmp_path / 'set.json'}",
                  "max_items=2", "metrics.flow.enabled=false")
    summary = evaluate(cfg)
    assert (calls["t0"], calls["p"]) == (1.0, 0.5)           # Table 2 row 8
    assert [it["seed"] for it in calls["items"]] == [0, 1]
    assert [it["name"] for it in calls["items"]] == ["im0", "im1"]
    assert summary["metrics"]["clip_temp"]["n"] == 2
    assert summary["metrics"]["clip_temp"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert summary["run"]["table"] == "table2" and summary["run"]["p"] == 0.5
    assert "flow_score" not in summary["metrics"]


def test_failures_are_clear(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="raft_large_C_T_V1"):
        evaluate(cfg_for(tmp_path, "videos=x", "metrics.flow.allow_random=false"))
    with pytest.raises(ValueError, match="videos="):
        evaluate(cfg_for(tmp_path))
    monkeypatch.setitem(sys.modules, "i2v.sampling", None)  # the sampler cannot be imported
    monkeypatch.setattr("i2v.pipeline.bundle.sampling_input_problems", lambda cfg: [])   # (nor its weights checked)
    (tmp_path / "set.json").write_text(json.dumps([{"image": "a.png", "prompt": "x"}]))
    with pytest.raises(ImportError, match="generate_videos"):
        evaluate(cfg_for(tmp_path, "mode=generate", f"eval_set.manifest={tmp_path / 'set.json'}",
                         "metrics.flow.enabled=false"))
    skip = cfg_for(tmp_path, "metrics.missing=skip", "metrics.clip_temp.kind=open_clip",
                   "metrics.clip_temp.weights=/nonexistent.bin", "metrics.flow.enabled=false", f"videos={tmp_path}")
    with pytest.raises(ValueError, match="nothing to score"):  # CLIP skipped (not raised), DOVER n/a, no videos
        evaluate(skip)


def test_toy_videos_score_without_weights_and_missing_weights_are_listed_at_once(tmp_path):
    """`evaluate.py metrics=toy videos=...`: toy metrics, no weights file; without it, every missing weights file is
    named in one error (CLIP and RAFT together), not one per attempt."""
    from i2v.data.synthetic import SyntheticVideos
    from i2v.utils.io import save_frames, save_gif

    vids = tmp_path / "videos"
    clip = SyntheticVideos(1, num_frames=6, size=32, seed=2)[0]
    save_gif(clip["video"], vids / "c.gif")
    save_frames(clip["video"][:1], tmp_path / "img")
    (tmp_path / "img" / "000.png").rename(vids / "c.png")
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"out_dir={tmp_path / 'out'}", "device=cpu", "metrics=toy",
                                             f"videos={vids}"])
    summary = evaluate(cfg)
    m = summary["metrics"]
    assert m["toy_identity"]["n"] == 1 and m["toy_identity"]["mean"] > 0.8     # a ground-truth clip keeps frame 1
    assert m["toy_step_px"]["mean"] == pytest.approx(clip["meta"]["speed"], abs=0.2)
    assert set(summary["settings"]) == {"toy"}
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        plain = compose("evaluate", overrides=[f"out_dir={tmp_path / 'out2'}", "device=cpu", f"videos={vids}"])
    with pytest.raises(FileNotFoundError) as err:
        evaluate(plain)
    assert "clip_temp:" in str(err.value) and "flow_score:" in str(err.value) and "warping_error:" in str(err.value)


@pytest.mark.parametrize("mode,result", [("score", "summary.json"), ("score", "per_video.csv"),
                                         ("generate", "summary.json"), ("toy", "metrics.json"),
                                         ("toy", "samples/clip000.png")])
def test_an_earlier_evaluation_is_refused_before_anything_loads(tmp_path, monkeypatch, mode, result):
    """out_dir= pointing at an earlier evaluation: one FileExistsError naming the file, before metrics or models
    load (was: score mode replaced per_video.csv/summary.json silently; toy mode refused after loading the model)."""
    import i2v.metrics.scoring as scoring
    import i2v.pipeline.bundle as bundle

    earlier = tmp_path / "out" / result
    earlier.parent.mkdir(parents=True)
    earlier.write_text("an earlier run's result")
    monkeypatch.setattr(scoring, "build_metrics", lambda *a, **k: pytest.fail("metrics built before the check"))
    monkeypatch.setattr(bundle, "load_bundle_for_sampling", lambda *a, **k: pytest.fail("model loaded first"))
    extra = ["experiment=toy_table2"] if mode == "toy" else [f"videos={tmp_path}"]
    with pytest.raises(FileExistsError, match=str(result).split("/")[-1]):
        evaluate(cfg_for(tmp_path, f"mode={mode}", *extra))
    assert earlier.read_text() == "an earlier run's result"
    from i2v.evaluate import check_results_free

    check_results_free(tmp_path / "out", mode, overwrite=True)     # overwrite=true lets the run replace it


def test_a_toy_runs_frame_strip_is_not_taken_for_the_input_image(tmp_path, capsys):
    """A toy run's samples/ folder holds clipNNN.mp4|gif beside clipNNN.png, the same frames side by side: scoring
    that folder pairs the video with no input image (its first frame), not with the strip squeezed to one frame.
    An image as wide as the frames but showing something else is still the input image."""
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    for name in ("strip", "other"):
        d = tmp_path / name
        d.mkdir()
        write_gif(d / "clip000.gif", frames)
    Image.fromarray(np.concatenate(frames, axis=1)).save(tmp_path / "strip" / "clip000.png")
    Image.fromarray(255 - np.concatenate(frames, axis=1)).save(tmp_path / "other" / "clip000.png")
    (tmp_path / "none").mkdir()
    write_gif(tmp_path / "none" / "clip000.gif", frames)
    runs = {}
    for name in ("strip", "other", "none"):
        with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
            cfg = compose("evaluate", overrides=[f"out_dir={tmp_path / ('out_' + name)}", "device=cpu", "metrics=toy",
                                                 f"videos={tmp_path / name}"])
        runs[name] = list(csv.DictReader(open(tmp_path / f"out_{name}" / "per_video.csv")))[0] if evaluate(cfg) else None
    assert "is the frames of clip000 side by side" in capsys.readouterr().out
    assert runs["strip"]["image"] == "" and runs["other"]["image"].endswith("clip000.png")
    keys = [k for k in runs["none"] if k.startswith("toy_")]
    assert [runs["strip"][k] for k in keys] == [runs["none"][k] for k in keys]
    assert [runs["other"][k] for k in keys] != [runs["none"][k] for k in keys]


def test_sample_py_outputs_are_paired_with_the_image_their_json_records(tmp_path, capsys):
    """evaluate.py videos=<a sample.py out folder>: no input image sits beside the videos, but each <name>.json
    records it; that image is the reference (a gone one is said, and the video scored without one)."""
    from i2v.metrics.scoring import collect_items

    rng = np.random.default_rng(3)
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    for name in ("a_42", "b_42"):
        frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
        write_gif(out / f"{name}.gif", frames)
        Image.fromarray(frames[0]).save(inputs / f"{name[0]}.png")
        (out / f"{name}.json").write_text(json.dumps({"prompt": f"prompt {name}", "image": str(inputs / f"{name[0]}.png"),
                                                      "seed": 42}))
    (inputs / "b.png").unlink()
    items = {it["name"]: it for it in collect_items(str(out))}
    assert items["a_42"]["image"] == str(inputs / "a.png") and items["a_42"]["prompt"] == "prompt a_42"
    assert items["b_42"]["image"] is None and "b_42: the input image its .json names is gone" in capsys.readouterr().out
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(out / "a_42.png")   # an image beside the video still wins
    assert collect_items(str(out))[0]["image"] == str(out / "a_42.png")


def test_videos_may_name_one_video_file(tmp_path):
    """videos=<one .gif/.mp4> scores that video (was: 'video folder not found' for a file that exists); a file that
    is not a video says so."""
    from i2v.metrics.scoring import collect_items

    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    write_gif(tmp_path / "one.gif", frames)
    Image.fromarray(frames[0]).save(tmp_path / "one.png")
    (item,) = collect_items(str(tmp_path / "one.gif"))
    assert item["name"] == "one" and item["video"] == str(tmp_path / "one.gif")
    assert item["image"] == str(tmp_path / "one.png")       # the same-stem image beside it, as for a folder
    with pytest.raises(FileNotFoundError, match="is neither a video"):
        collect_items(str(tmp_path / "one.png"))


def test_generate_mode_names_every_missing_input_at_once(tmp_path):
    """evaluate.py mode=generate on a fresh machine: the metrics' weights, the backbone's weight paths, the adapter
    file and the eval set, all in one error before anything loads (was: one per attempt, three runs to find them)."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"out_dir={tmp_path / 'out'}", "device=cpu", "mode=generate",
                                             f"ckpt={tmp_path / 'nope.safetensors'}"])
    with pytest.raises(FileNotFoundError) as e:
        evaluate(cfg)
    said = str(e.value)
    for part in ("metrics need local weights files", "clip_temp:", "flow_score:", "backbone=sd15 needs these weight "
                 "paths", "backbone.unet (unset)", f"I2V-Adapter checkpoint not found: {tmp_path / 'nope.safetensors'}",
                 "mode=generate needs eval_set.manifest="):
        assert part in said, (part, said)
