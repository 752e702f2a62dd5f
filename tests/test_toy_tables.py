"""scripts/make_toy_tables.py: markdown tables, Spearman trends of Table 2's sweeps, and contact sheets built from
the lossless per-clip strips the toy runs write (i2v.utils.io.save_strip)."""
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from i2v.utils.io import read_strip, save_contact_sheet, save_strip
from script_loader import load_script


def _script():
    return load_script("make_toy_tables")


def _clip(value: float, frames: int = 3) -> torch.Tensor:
    x = torch.full((frames, 3, 4, 4), value)
    x[:, 0, 0, 0] = torch.linspace(-1, 1, frames)          # frames differ, so order mistakes show
    return x


def _run(root: Path, name: str, seed: int, clip_value: float, **fields) -> None:
    d = root / name
    model = {"identity": 0.5, "bg_err": 0.1, "obj_err": 0.1, "step_px": 1.0, "direction_agree": 1.0, "flicker": 0.1}
    model.update(fields.pop("model", {}))
    (d / "samples").mkdir(parents=True)
    save_strip(_clip(clip_value), d / "samples" / "clip000.png")
    save_strip(_clip(1.0), d / "samples" / "clip000_gt.png")
    (d / "metrics.json").write_text(json.dumps({"seed": seed, "frames": 3, "model": model, "ground_truth": model,
                                                **fields}))


def test_strip_round_trip_is_exact(tmp_path):
    x = (torch.randint(0, 256, (5, 3, 6, 7)).float() / 127.5 - 1.0)
    save_strip(x, tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").size == (35, 6)
    assert torch.allclose(read_strip(tmp_path / "s.png", 5), x, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 4 frames"):
        read_strip(tmp_path / "s.png", 4)


def test_contact_sheet_layout(tmp_path):
    rows = [("a", torch.full((2, 3, 2, 2), -1.0)), ("b", torch.full((2, 3, 2, 2), 1.0))]
    save_contact_sheet(rows, tmp_path / "c.png", scale=3, label_width=10)
    img = torch.from_numpy(__import__("numpy").asarray(Image.open(tmp_path / "c.png")).copy())
    assert img.shape == (2 * (6 + 2), 10 + 2 * (6 + 2), 3)
    assert (img[0:6, 10:16] == 0).all() and (img[8:14, 18:24] == 255).all()   # row 1 black, row 2 white, x3
    assert (img[6:8, 10:16] == 255).all()                                     # the gap between rows


def test_spearman():
    sp = _script().spearman
    assert sp([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert sp([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert sp([1, 2, 3], [1, 1, 2]) == pytest.approx(0.8660254, rel=1e-6)       # average ranks for ties
    assert sp([1, 2, 3], [1, 1, 1]) != sp([1, 2, 3], [1, 1, 1])                # constant side: NaN


def test_tables_trends_and_sheets(tmp_path, capsys):
    mod = _script()
    for seed in (0, 1):
        for i, t0 in enumerate((1.0, 0.8, 0.6)):     # motion falls with t0 at p = 1
            _run(tmp_path, f"t0{t0}_s{seed}", seed, -0.5 + i * 0.1, table="toy_table2", adapter="full", t0=t0,
                 p=1.0, model={"step_px": 3.0 - i, "net_px": 1.0 + i, "flicker": 0.3 - 0.1 * i})
        for i, p in enumerate((0.5, 0.1)):           # with p = 1 above: motion rises with p at t0 = 1
            _run(tmp_path, f"p{p}_s{seed}", seed, 0.2 + i * 0.1, table="toy_table2", adapter="full", t0=1.0, p=p,
                 model={"step_px": 2.0 - i, "flicker": 0.3})
    for a in ("full", "none"):
        _run(tmp_path / "t3", a, 0, 0.9 if a == "full" else -0.9, adapter=a, t0=1.0, p=0.5,
             model={"bg_err_affine": 0.03 if a == "full" else 0.07})
    # a frame-1 oracle run in the Table 2 folder: a bound, reported apart, never averaged into a row or a sweep
    _run(tmp_path, "oracle_s0", 0, 0.0, table="toy_table2", adapter="none", t0=1.0, p=1.0, oracle="static",
         model={"identity": 0.9, "step_px": -50.0, "flicker": 9.0})
    # the same oracle at some sampler steps only (toy_eval.oracle_steps): a bound of its own, not averaged with it
    _run(tmp_path, "oracle_lo_s0", 0, 0.0, table="toy_table2", adapter="none", t0=1.0, p=1.0, oracle="static",
         oracle_steps=[0, 699], model={"identity": 0.7, "step_px": -50.0, "flicker": 9.0})
    runs = mod.load_runs([str(tmp_path)])
    res = mod.sweeps(runs)
    assert res[("t0 (p=1)", "step_px")]["mean"] == pytest.approx(1.0)      # ρ(t0, motion) over t0 = .6, .8, 1
    assert res[("p (t0=1)", "step_px")]["mean"] == pytest.approx(1.0)      # ρ(p, motion) over p = .1, .5, 1
    assert res[("t0 (p=1)", "flicker")]["per_seed"] == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}
    assert res[("t0 (p=1)", "net_px")]["mean"] == pytest.approx(-1.0)      # each metric its own ranks
    assert math.isnan(res[("p (t0=1)", "net_px")]["mean"])                 # p rows without it: no trend, not 0
    text = mod.render(runs) + mod.render_sweeps(runs)
    assert "Full model" in text and "t0=0.6 p=1" in text and "| t0 (p=1) | step_px |" in text
    assert "| p (t0=1) | net_px | 0: n/a, 1: n/a | n/a |" in text and "nan" not in text
    t1_row = next(line for line in text.splitlines() if line.startswith("| t0=1 p=1 |"))
    assert "| 2 |" in t1_row and "0.500 ± 0.000" in t1_row                 # the two seeds, not the oracle's 0.9
    header = next(line for line in text.splitlines() if line.startswith("| row |"))
    assert header.split(" | ")[3:5] == ["bg err ↓", "bg pattern err ↓"]
    assert t1_row.split(" | ")[3:5] == ["0.100 ± 0.000", "n/a"]                # runs without bg_err_affine
    full_row = next(line for line in text.splitlines() if line.startswith("| Full model |"))
    assert full_row.split(" | ")[3:5] == ["0.100", "0.030"]
    oracle_rows = [line for line in text.splitlines() if "oracle=static" in line]
    assert oracle_rows[0].startswith("| w/o I2V-Adapter and Content-Adapter, oracle=static (t0=1 p=1) | 1 | 0.900 |")
    assert oracle_rows[1].startswith("| w/o I2V-Adapter and Content-Adapter, oracle=static at t 0..699 (t0=1 p=1) | 1 "
                                     "| 0.700 |") and len(oracle_rows) == 2
    written = mod.write_sheets(runs, str(tmp_path / "docs"), scale=2)
    assert sorted(p.name for p in written) == ["toy_table2_p.png", "toy_table2_t0.png", "toy_table3.png"]
    t3 = Image.open(tmp_path / "docs" / "toy_table3.png")
    # rows: none, full, ground truth (ADAPTER_ORDER); frame 2 of each row is the clip's value (upscaled 2x)
    pix = [t3.getpixel((150 + 1 * (8 + 2) + 3, r * (8 + 2) + 3)) for r in range(3)]
    assert [v[1] for v in pix] == [round((-0.9 + 1) * 127.5), round((0.9 + 1) * 127.5), 255]
    t0_sheet = Image.open(tmp_path / "docs" / "toy_table2_t0.png")
    assert t0_sheet.size[1] == 4 * (8 + 2)                               # t0 = 1, .8, .6 + ground truth


def test_noised_kv_runs_get_rows_of_their_own(tmp_path):
    """Runs that sampled with adapter.noised_kv (metrics.json's key, or the run's .hydra/config.yaml for runs
    written before the key existed) are a row of their own, never averaged into the paper's full model."""
    for seed in (0, 1):
        _run(tmp_path, f"full_{seed}", seed, 0.0, adapter="full", model={"identity": 0.2}, noised_kv=False)
    _run(tmp_path, "full_kv_0", 0, 0.0, adapter="full", model={"identity": 0.3}, noised_kv=True)
    _run(tmp_path, "full_kv_1", 1, 0.0, adapter="full", model={"identity": 0.4})
    (tmp_path / "full_kv_1" / ".hydra").mkdir()
    (tmp_path / "full_kv_1" / ".hydra" / "config.yaml").write_text("adapter:\n  name: full\n  noised_kv: true\n")
    md = _script().render(_script().load_runs([str(tmp_path)]))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 2 | 0.200 ± 0.000 |" in rows["Full model"]
    assert "| 2 | 0.350 ± 0.071 |" in rows["Full model + noised K/V (not the paper's)"]


def test_table2_runs_of_different_blurs_are_not_averaged(tmp_path):
    """The prior's blur (metrics.json's fsp_blur, or the run's .hydra/config.yaml for runs written before the key
    existed) is part of what Table 2 measures: runs of two blurs are refused, one blur is collected."""
    script = _script()
    _run(tmp_path / "a", "r0", 0, 0.0, table="toy_table2", t0=1.0, p=1.0, fsp_blur=[5, 10.0])
    _run(tmp_path / "a", "r1", 1, 0.0, table="toy_table2", t0=1.0, p=1.0, fsp_blur=[5, 10.0])
    assert "t0=1 p=1 | 2 |" in script.render(script.load_runs([str(tmp_path / "a")]))
    _run(tmp_path / "b", "old", 2, 0.0, table="toy_table2", t0=1.0, p=1.0)
    (tmp_path / "b" / "old" / ".hydra").mkdir()
    (tmp_path / "b" / "old" / ".hydra" / "config.yaml").write_text(
        "sampling:\n  fsp:\n    enabled: true\n    kernel_size: 9\n    sigma: 18.0\n")
    with pytest.raises(ValueError, match="blur"):
        script.render(script.load_runs([str(tmp_path / "a"), str(tmp_path / "b")]))


def test_table2_runs_with_and_without_noised_kv_are_not_averaged(tmp_path):
    script = _script()
    _run(tmp_path, "paper", 0, 0.0, table="toy_table2", t0=1.0, p=1.0, noised_kv=False)
    _run(tmp_path, "variant", 1, 0.0, table="toy_table2", t0=1.0, p=1.0, noised_kv=True)
    with pytest.raises(ValueError, match="noised_kv"):
        script.render(script.load_runs([str(tmp_path)]))


def test_noise_dc_runs_get_rows_of_their_own(tmp_path):
    """Runs sampled with sampling.fsp.noise_dc=remove (metrics.json's fsp_noise_dc) are rows of their own, after the
    paper's, never averaged into them nor dropped; runs written before the key existed count as keep."""
    _run(tmp_path, "full_0", 0, 0.0, adapter="full", model={"identity": 0.2})
    _run(tmp_path, "full_1", 1, 0.0, adapter="full", model={"identity": 0.2}, fsp_noise_dc="keep")
    for seed, ident in ((0, 0.3), (1, 0.4)):
        _run(tmp_path, f"full_dc_{seed}", seed, 0.0, adapter="full", model={"identity": ident},
             fsp_noise_dc="remove")
    _run(tmp_path, "none_dc_0", 0, 0.0, adapter="none", model={"identity": 0.1}, fsp_noise_dc="remove")
    md = _script().render(_script().load_runs([str(tmp_path)]))
    rows = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:4] == ["Full model", "w/o I2V-Adapter and Content-Adapter + noise DC removed (not the paper's)",
                         "Full model + noise DC removed (not the paper's)"]
    assert "| 2 | 0.200 ± 0.000 |" in md and "| 2 | 0.350 ± 0.071 |" in md


def test_table2_runs_with_and_without_noise_dc_are_not_averaged(tmp_path):
    script = _script()
    _run(tmp_path, "paper", 0, 0.0, table="toy_table2", t0=1.0, p=1.0)
    _run(tmp_path, "variant", 1, 0.0, table="toy_table2", t0=1.0, p=1.0, fsp_noise_dc="remove")
    with pytest.raises(ValueError, match="noise_dc"):
        script.render(script.load_runs([str(tmp_path)]))


def test_table3_paired_by_seed(tmp_path):
    """The paired table subtracts each row from the full model of the same seed (not of another seed), and counts
    the seeds on which the full model is better: higher identity, lower background error."""
    full = {0: (0.60, 0.030), 1: (0.70, 0.020), 2: (0.50, 0.040)}
    other = {0: (0.59, 0.031), 1: (0.68, 0.019), 2: (0.49, 0.042)}   # the seeds differ far more than the rows
    for seed in (0, 1, 2):
        for name, vals in (("full", full), ("no_content", other)):
            _run(tmp_path, f"{name}_{seed}", seed, 0.0, adapter=name,
                 model={"identity": vals[seed][0], "bg_err": vals[seed][1]})
    md = _script().render(_script().load_runs([str(tmp_path)]))
    row = next(line for line in md.splitlines() if line.startswith("| Full model − w/o Content-Adapter |"))
    cells = row.strip("| ").split(" | ")
    assert cells[1] == "3"
    assert cells[2] == "+0.013 ± 0.006 (3/3)"          # differences 0.01, 0.02, 0.01
    assert cells[3] == "-0.001 ± 0.002 (2/3)"          # differences -0.001, +0.001, -0.002: better on seeds 0, 2
    # a row without a full model of its variant is left out, not paired with the paper's full model
    _run(tmp_path, "none_kv_0", 0, 0.0, adapter="none", noised_kv=True, model={"identity": 0.1})
    md = _script().render(_script().load_runs([str(tmp_path)]))
    assert "noised K/V" not in "".join(l for l in md.splitlines() if "−" in l)


def test_i2v_min_t_runs_get_rows_of_their_own_and_pair_among_themselves(tmp_path):
    for seed in (0, 1):
        _run(tmp_path, f"full_{seed}", seed, 0.0, adapter="full", model={"identity": 0.6})
        _run(tmp_path, f"full_g_{seed}", seed, 0.0, adapter="full", i2v_min_t=500, model={"identity": 0.7})
        _run(tmp_path, f"noc_g_{seed}", seed, 0.0, adapter="no_content", i2v_min_t=500,
             model={"identity": 0.65 + 0.01 * seed})
    md = _script().render(_script().load_runs([str(tmp_path)]))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 2 | 0.600 ± 0.000 |" in rows["Full model"]
    assert "| 2 | 0.700 ± 0.000 |" in rows["Full model + branch at t >= 500 (not the paper's)"]
    paired = rows["Full model + branch at t >= 500 (not the paper's) − w/o Content-Adapter + branch at t >= 500 "
                  "(not the paper's)"]
    assert "+0.045 ± 0.007 (2/2)" in paired
    for p in (0.1, 1.0):
        _run(tmp_path / "t2", f"p{p}", 0, 0.0, table="toy_table2", adapter="full", t0=1.0, p=p,
             i2v_min_t=500 if p == 1.0 else 0)
    with pytest.raises(ValueError, match="i2v_min_t"):
        _script().render(_script().load_runs([str(tmp_path / "t2")]))


@pytest.mark.parametrize("result", ["metrics.json", "summary.json"])
def test_a_sweep_job_without_results_is_named_not_dropped_silently(tmp_path, capsys, result):
    """A -m sweep where one job was interrupted or failed: its folder (.hydra/ but no result file) is named in a
    note, for make_toy_tables.py (metrics.json) and make_tables.py (summary.json) alike; a folder that is not a job
    of the sweep is not."""
    from i2v.utils.tables import result_files

    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    for job in ("full_seed0", "none_seed0", "no_i2v_seed0"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
    (tmp_path / "full_seed0" / result).write_text("{}")
    (tmp_path / "notes").mkdir()                                   # not a job: no .hydra
    assert result_files([tmp_path], result) == [tmp_path / "full_seed0" / result]
    out = capsys.readouterr().out
    assert f"note: 2 job(s) of the sweep {tmp_path} have no {result} (interrupted or failed) and are left out: " \
           "no_i2v_seed0, none_seed0" in out and "notes" not in out
    with pytest.raises(FileNotFoundError, match=f"no {result} under"):
        result_files([tmp_path / "none_seed0"], result)
    script, reader = {"metrics.json": ("make_toy_tables", "load_runs"), "summary.json": ("make_tables", "find_runs")}[result]
    assert len(getattr(load_script(script), reader)([str(tmp_path)])) == 1    # what the table scripts read
    assert "are left out: no_i2v_seed0, none_seed0" in capsys.readouterr().out
