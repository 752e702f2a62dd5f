"""sample.py cannot write non-finite videos, escape or clobber out=, or lose a batch to one bad row (toy world)."""
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from i2v.cli.config import asset_path
from i2v.utils.io import load_image
from toy_sample import toy_sample_cfg


def _written(tmp_path):
    out = tmp_path / "out"
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


@pytest.mark.parametrize("over", ["sampling.guidance_scale=nan", "sampling.guidance_scale=inf", "sampling.fps=0"])
def test_bad_numbers_are_refused_before_anything_is_written(tmp_path, png, over):
    from i2v.sampling import sample

    with pytest.raises(ValueError, match="finite|fps"):
        sample(toy_sample_cfg(tmp_path, f"image={png}", "prompt=a", over))
    assert _written(tmp_path) == []


def test_nan_adapter_is_refused_and_nan_latents_are_never_decoded(tmp_path, png):
    from i2v.pipeline.sampling import I2VPipeline, SamplingSettings
    from i2v.pipeline.bundle import load_bundle_for_sampling
    from i2v.sampling import sample

    tensors = load_file(asset_path("toy/adapter.safetensors"))
    key = sorted(tensors)[0]
    tensors[key][0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, bad, metadata={"format": "i2v-adapter", "backbone": "toy", "num_layers": "1", "config": "{}"})
    with pytest.raises(ValueError, match=f"{bad}.*NaN/Inf"):
        sample(toy_sample_cfg(tmp_path, f"image={png}", "prompt=a", f"ckpt={bad}"))
    assert _written(tmp_path) == []
    cfg = toy_sample_cfg(tmp_path)
    bundle = load_bundle_for_sampling(cfg, torch.device("cpu"), torch.float32)
    with torch.no_grad():       # finite but absurd weights (flipped exponent bits): the latents overflow
        next(iter(bundle.trainable.values())).fill_(3e38)
    with pytest.raises(FloatingPointError, match="NaN/Inf"):
        I2VPipeline(bundle, SamplingSettings.from_config(cfg.sampling))(load_image(png), "a", seed=0)


def test_sixteen_bit_png_keeps_its_values(tmp_path):
    ramp = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64)          # 0 .. 65472
    p = tmp_path / "deep.png"
    Image.fromarray(ramp).save(p)
    assert Image.open(p).mode.startswith("I")
    x = load_image(p)
    expected = torch.from_numpy(np.round(ramp / 257.0)).float() / 127.5 - 1.0
    assert torch.allclose(x[0], expected, atol=1e-5) and torch.equal(x[0], x[2])
    assert x.max() > 0.99 and x.min() == -1.0                                  # not all white


def test_batch_rows_stay_under_out_report_by_row_and_go_on(tmp_path, png):
    from i2v.sampling import BatchFailed, sample

    rows = ["image,prompt,seed,name", f"{png},a,1,../../escape", f"{png},a,1,", f"{png},a,1,",
            f"{png},a,1,{tmp_path / 'abs'}", f"{tmp_path / 'nope.png'},a,1,", f"{png},a,notanumber,",
            f"{png},a,2,dup", f"{png},a,3,dup"]
    csv_path = tmp_path / "batch.csv"
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")             # with a BOM, as Excel writes
    with pytest.raises(BatchFailed) as err:
        sample(toy_sample_cfg(tmp_path, f"prompts={csv_path}", "write_gif=false"))
    msg = str(err.value)
    assert msg.startswith("3 of 8 rows failed") and "row 5" in msg and "row 6" in msg and "row 8" in msg, msg
    assert "nope.png" in msg and "notanumber" in msg and "already used by row 7" in msg
    names = _written(tmp_path)
    stems = sorted({n.rsplit(".", 1)[0] for n in names})
    assert stems == sorted(["_.._escape".replace("..", "_"), "in_1", "in_1_row3", "dup",
                            str(tmp_path / "abs").replace("/", "_").lstrip(".")]), stems
    assert not (tmp_path.parent / "escape.mp4").exists() and not (tmp_path / "abs.mp4").exists()


def test_every_output_checked_before_any_is_written_and_files_follow_the_umask(tmp_path, png):
    from i2v.sampling import sample

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.gif").write_bytes(b"an older gif")
    with pytest.raises(FileExistsError, match="x.gif"):
        sample(toy_sample_cfg(tmp_path, f"image={png}", "prompt=a", "name=x"))
    assert _written(tmp_path) == ["x.gif"]                                        # no orphan mp4/json
    old = os.umask(0o022)
    try:
        sample(toy_sample_cfg(tmp_path, f"image={png}", "prompt=a", "name=y"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "y.mp4").st_mode) == 0o644


def test_unwritable_out_is_found_before_sampling(tmp_path, png):
    from i2v.sampling import sample

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(PermissionError, match="not a writable folder"):
        sample(toy_sample_cfg(tmp_path, f"image={png}", "prompt=a", f"out={tmp_path / 'file' / 'sub'}"))


def test_torch_file_named_safetensors_says_what_it_is(tmp_path, png):
    from i2v.sampling import sample

    fake = tmp_path / "adapter.safetensors"
    torch.save(load_file(asset_path("toy/adapter.safetensors")), fake)
    with pytest.raises(Exception, match="adapter.safetensors: this is a torch pickle"):
        sample(toy_sample_cfg(tmp_path, f"image={png}", "prompt=a", f"ckpt={fake}"))


@pytest.mark.parametrize("over,message", [
    ("ckpt={tmp}/missing.safetensors", "I2V-Adapter checkpoint not found"),
    ("ckpt=none", "pass adapter=none .the base alone."),     # what users type for "no adapter"
    ("ckpt=null", "pass adapter=none .the base alone."),
    ("ckpt={tmp}/pickle.safetensors", "this is a torch pickle"),
    ("lora=[{{path: {tmp}/style.safetensors, scale: 0.8}}]", "LoRA file not found"),
])
def test_adapter_and_lora_files_are_checked_before_the_base_loads(tmp_path, monkeypatch, over, message):
    """A wrong ckpt= or lora= path is reported before the frozen base is built (a minute for SD/SDXL)."""
    import i2v.pipeline.bundle as bundle_mod

    torch.save({"w": torch.zeros(1)}, tmp_path / "pickle.safetensors")
    built = []
    real = bundle_mod.build_bundle
    monkeypatch.setattr(bundle_mod, "build_bundle", lambda *a, **k: built.append(1) or real(*a, **k))
    cfg = toy_sample_cfg(tmp_path, over.format(tmp=tmp_path))
    with pytest.raises(Exception, match=message):
        bundle_mod.load_bundle_for_sampling(cfg, torch.device("cpu"), torch.float32)
    assert built == []


def test_the_adapter_file_is_read_once(monkeypatch):
    """load_bundle_for_sampling reads ckpt= before the base loads and loads that same read (an SDXL adapter is
    ~0.8 GB: not read twice)."""
    import i2v.checkpoints.adapter_io as adapter_io
    from hydra import compose, initialize_config_dir

    from i2v.cli.config import CONFIGS
    from i2v.pipeline.bundle import load_bundle_for_sampling

    reads = []
    real = adapter_io.read_adapter
    monkeypatch.setattr(adapter_io, "read_adapter", lambda path: (reads.append(str(path)), real(path))[1])
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("sample", overrides=["experiment=toy"])
    bundle = load_bundle_for_sampling(cfg, torch.device("cpu"), torch.float32)
    assert reads == [str(cfg.ckpt)] and bundle.trainable


def test_every_missing_file_of_a_sampling_run_is_named_at_once(tmp_path, png, monkeypatch):
    """sample.py on a fresh machine: the backbone's unset weight paths, a missing ckpt= and a missing lora= in one
    error before anything loads (was: the adapter file first, then, once found, the weight paths)."""
    import i2v.pipeline.bundle as bundle_mod
    from hydra import compose, initialize_config_dir

    from i2v.cli.config import CONFIGS

    monkeypatch.setattr(bundle_mod, "build_bundle", lambda *a, **k: pytest.fail("the base was built"))
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("sample", overrides=[f"ckpt={tmp_path / 'nope.safetensors'}",
                                           f"lora=[{{path: {tmp_path / 'style.safetensors'}, scale: 0.8}}]"])
    with pytest.raises(FileNotFoundError) as e:
        bundle_mod.load_bundle_for_sampling(cfg, torch.device("cpu"), torch.float32)
    said = str(e.value)
    for part in ("backbone=sd15 needs these weight paths", "backbone.unet (unset)",
                 f"I2V-Adapter checkpoint not found: {tmp_path / 'nope.safetensors'}",
                 f"LoRA file not found: {tmp_path / 'style.safetensors'}"):
        assert part in said, (part, said)
