"""Collect toy-world runs (``metrics.json`` from ``train.py experiment=toy*`` / ``evaluate.py experiment=toy_table2``)
into markdown tables with mean ± std over seeds.

    python scripts/make_toy_tables.py multirun/toy_table3/<date> [multirun/toy_table2/<date> ...] [--out toy.md] \
        [--sheets docs]

Rows are grouped by the adapter (Table 3) or by (t0, p) (Table 2); the ground-truth clips are scored with the same
metrics as a reference row. Columns: identity (↑, frame-1 consistency in [0, 1]), background error (↓), object
colour error (↓), motion per frame in px (toy FlowScore analogue), direction agreement (↑), flicker (↓).
Under Table 3 a paired table gives the full model minus each other row on identity and background error, seed by
seed (mean ± std of the differences, and on how many seeds the full model is better): every row of a seed samples
the same clips from the same noise, so the differences are free of the sampling luck that a row's seed std holds.
For Table 2 it also prints the Spearman rank correlation of each sweep (t0 at p = 1, p at t0 = 1) with motion and
flicker, per seed and averaged over seeds. ``--sheets DIR`` writes contact sheets (``toy_table3.png``,
``toy_table2_t0.png``, ``toy_table2_p.png``): per row one held-out clip of the lowest seed, input frame first, frames
upscaled nearest-neighbour, from the lossless ``samples/clipNNN.png`` strips the runs write.
Runs sampled through the frame-1 oracle (``evaluate.py mode=toy toy_eval.oracle=...``) are bounds, not models: they
get a table of their own (by adapter and oracle) and stay out of Tables 2/3, the trends and the sheets.
Runs that sampled with ``adapter.noised_kv``, ``adapter.i2v_min_t`` or ``sampling.fsp.noise_dc=remove`` get Table 3
rows of their own; Table 2 runs that mix any of them on and off, or mix the prior's blur
(``sampling.fsp.kernel_size``/``sigma``: the toy's changed from 9x9 to 5x5), are refused.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# bg_err_affine: the background error left after refitting each frame's colour and contrast; net_px: the object's
# net speed while tracked (both in i2v/metrics/toy.py); "n/a" for runs written before a metric existed
COLUMNS = [("identity", "identity ↑"), ("bg_err", "bg err ↓"), ("bg_err_affine", "bg pattern err ↓"),
           ("obj_err", "obj err ↓"), ("step_px", "motion px/frame"), ("net_px", "net px/frame"),
           ("direction_agree", "direction ↑"), ("flicker", "flicker ↓")]
# Table 2's trends: the tracked path per step (step_px, jitter included), the net speed while tracked (net_px), the
# net travel (total_px: shorter when the object is lost early) and the background's frame-to-frame change
SWEEP_METRICS = ("step_px", "net_px", "total_px", "flicker")
ADAPTER_ORDER = ["none", "no_i2v", "no_content", "full"]
ADAPTER_LABEL = {"none": "w/o I2V-Adapter and Content-Adapter", "no_i2v": "w/o I2V-Adapter",
                 "no_content": "w/o Content-Adapter", "full": "Full model"}
# what a Table 3 row key adds after "+" (row_adapter) when a run sampled another way than the paper
VARIANT_LABEL = {"noised_kv": "noised K/V", "noise_dc=remove": "noise DC removed"}


def variant_label(v: str) -> str:
    """``i2v_min_t=500`` -> "branch at t >= 500"; the others from VARIANT_LABEL."""
    if v.startswith("i2v_min_t="):
        return f"branch at t >= {v.split('=', 1)[1]}"
    return VARIANT_LABEL.get(v, v)


def adapter_label(key: str) -> str:
    """``full`` -> "Full model"; ``full+noised_kv`` -> "Full model + noised K/V (not the paper's)"."""
    base, *variants = key.split("+")
    label = " + ".join([ADAPTER_LABEL.get(base, base)] + [variant_label(v) for v in variants])
    return label + (" (not the paper's)" if variants else "")


def adapter_sort_key(key: str) -> tuple:
    """The paper's rows first, in Table 3's order, then each sampling variant's rows in the same order."""
    base, *variants = key.split("+")
    return (len(variants), variants, ADAPTER_ORDER.index(base) if base in ADAPTER_ORDER else len(ADAPTER_ORDER), key)


def _hydra_config(run: dict):
    """The run's ``.hydra/config.yaml`` (what runs written before a metrics.json key existed still tell), or None."""
    return _load_config(str(Path(run["dir"]) / ".hydra" / "config.yaml"))


@functools.lru_cache(maxsize=None)
def _load_config(path: str):   # each run's file read once, however many of its keys are asked for
    if not Path(path).is_file():
        return None
    from omegaconf import OmegaConf

    return OmegaConf.load(path)


def noised_kv(run: dict) -> bool:
    """Whether a run sampled with ``adapter.noised_kv`` (metrics.json's key; runs written before it existed: their
    ``.hydra/config.yaml``)."""
    if "noised_kv" in run:
        return bool(run["noised_kv"])
    cfg = _hydra_config(run)
    return bool(cfg is not None and cfg.get("adapter", {}).get("noised_kv", False))


def blur(run: dict) -> Optional[tuple]:
    """The Frame Similarity Prior's blur ``(kernel_size, sigma)`` a run sampled with (metrics.json's ``fsp_blur``;
    runs written before it existed: their ``.hydra/config.yaml``; None when neither says)."""
    if run.get("fsp_blur") is not None:
        return tuple(run["fsp_blur"])
    cfg = _hydra_config(run)
    fsp = None if cfg is None else cfg.get("sampling", {}).get("fsp")
    return None if fsp is None else (int(fsp.kernel_size), float(fsp.sigma))


def noise_dc(run: dict) -> str:
    """How the prior's noise was drawn (metrics.json's ``fsp_noise_dc``; runs written before it existed: ``keep``)."""
    return str(run.get("fsp_noise_dc") or "keep")


def i2v_min_t(run: dict) -> int:
    """``adapter.i2v_min_t`` a run sampled with (metrics.json's key; runs written before it existed: 0)."""
    return int(run.get("i2v_min_t") or 0)


def row_adapter(run: dict) -> str:
    """Table 3's row of a run: its adapter config, ``+noised_kv`` / ``+noise_dc=remove`` / ``+i2v_min_t=N`` when it
    sampled that way."""
    dc, min_t = noise_dc(run), i2v_min_t(run)
    return (run["adapter"] + ("+noised_kv" if noised_kv(run) else "") + ("" if dc == "keep" else f"+noise_dc={dc}")
            + (f"+i2v_min_t={min_t}" if min_t else ""))


def load_runs(paths: list[str]) -> list[dict]:
    from i2v.utils.tables import result_files

    return [dict(json.loads(f.read_text()), dir=str(f.parent)) for f in result_files(paths, "metrics.json")]


def mean_std(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def table(groups: dict, label, title: str, gt: list[dict]) -> str:
    head = "| " + " | ".join(["row", "seeds"] + [c[1] for c in COLUMNS]) + " |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(COLUMNS) + 2)]
    for key, runs in groups.items():
        cells = [mean_std([r["model"].get(k) for r in runs]) for k, _ in COLUMNS]
        lines.append("| " + " | ".join([label(key), str(len(runs))] + cells) + " |")
    if gt:
        cells = [mean_std([g.get(k) for g in gt[:1]]) for k, _ in COLUMNS]
        lines.append("| " + " | ".join(["ground-truth clips", "-"] + cells) + " |")
    return "\n".join(lines) + "\n"


# the paired comparison under Table 3: the full model against each other row, seed by seed
PAIRED = [("identity", "identity", 1), ("bg_err", "bg err", -1)]


def paired_table(groups: dict, label) -> str:
    """Full model − each other row, over the seeds both have. Every seed samples the same held-out clips from the same
    starting noise for every row, so a seed's sampling luck moves all rows alike: a row's seed std holds it, the
    per-seed difference does not. Each cell: mean ± std of the differences, then on how many seeds the full model
    is better ("3/3"). Rows of another sampling variant are paired with that variant's full model."""
    lines = []
    for key, runs in groups.items():
        base, *variants = key.split("+")
        ref_key = "+".join(["full"] + variants)
        if base == "full" or ref_key not in groups:
            continue
        ref = {r.get("seed"): r["model"] for r in groups[ref_key]}
        cells, n = [], 0
        for metric, _, sign in PAIRED:
            diffs = [ref[r.get("seed")].get(metric) - r["model"].get(metric) for r in runs
                     if r.get("seed") in ref and ref[r.get("seed")].get(metric) is not None
                     and r["model"].get(metric) is not None]
            n = max(n, len(diffs))
            if not diffs:
                cells.append("n/a")
                continue
            spread = f" ± {statistics.stdev(diffs):.3f}" if len(diffs) > 1 else ""
            better = sum(1 for d in diffs if sign * d > 0)
            cells.append(f"{statistics.mean(diffs):+.3f}{spread} ({better}/{len(diffs)})")
        lines.append("| " + " | ".join([f"{adapter_label(ref_key)} − {label(key)}", str(n)] + cells) + " |")
    if not lines:
        return ""
    head = "| " + " | ".join(["difference", "seeds"] + [f"{c} (better on)" for _, c, _ in PAIRED]) + " |"
    return "\n".join(["### Toy Table 3, paired by seed (the full model better: identity +, bg err −)", "", head,
                      "|" + "---|" * (len(PAIRED) + 2)] + lines) + "\n"


def split_oracle(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(model runs, frame-1 oracle runs): the runs whose metrics.json names an ``oracle`` are bounds, not models."""
    return [r for r in runs if not r.get("oracle")], [r for r in runs if r.get("oracle")]


def render(runs: list[dict]) -> str:
    runs, oracle_runs = split_oracle(runs)
    out = []
    t3 = defaultdict(list)
    t2 = defaultdict(list)
    for r in runs:
        if r.get("table") == "toy_table2":
            t2[(r["t0"], r["p"])].append(r)
        else:
            t3[row_adapter(r)].append(r)
    gt = [r["ground_truth"] for r in runs]
    # rows sampled another way are another table (the prior's blur is what Table 2 sweeps); unknown (None) is no kind
    for what, kind in (("adapter.noised_kv", noised_kv), ("the prior's blur (kernel_size, sigma)", blur),
                       ("sampling.fsp.noise_dc", noise_dc), ("adapter.i2v_min_t", i2v_min_t)):
        kinds = {kind(r) for v in t2.values() for r in v} - {None}
        if len(kinds) > 1:
            raise ValueError(f"these Table 2 runs mix {what}: {sorted(kinds)}; collect each kind on its own")
    if t3:
        groups = {a: t3[a] for a in sorted(t3, key=adapter_sort_key)}
        out.append(table(groups, adapter_label, "Toy Table 3: model design", gt))
        paired = paired_table(groups, adapter_label)
        if paired:
            out.append(paired)
    if t2:
        keys = sorted(t2, key=lambda k: (-(k[1] == 1.0), -k[0], -k[1]))
        out.append(table({k: t2[k] for k in keys}, lambda k: f"t0={k[0]:g} p={k[1]:g}",
                         "Toy Table 2: Frame Similarity Prior", gt))
    if oracle_runs:
        bound = defaultdict(list)
        for r in oracle_runs:
            bound[(row_adapter(r), r["oracle"], r["t0"], r["p"], tuple(r.get("oracle_steps") or ()))].append(r)
        keys = sorted(bound, key=lambda k: (k[1], adapter_sort_key(k[0]), k))
        out.append(table({k: bound[k] for k in keys},
                         lambda k: f"{adapter_label(k[0])}, oracle={k[1]}"
                                   + (" at t {:g}..{:g}".format(*k[4]) if k[4] else "") + f" (t0={k[2]:g} p={k[3]:g})",
                         "Sampling-time frame-1 oracle (a bound, not a model)", [r["ground_truth"] for r in oracle_runs]))
    return "\n".join(out)


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant or has NaNs."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(x) < 3 or any(v is None or math.isnan(v) for v in x + y):
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return float("nan")
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / (sx * sy)


def sweeps(runs: list[dict]) -> dict:
    """``{(sweep, metric): {"per_seed": {seed: rho}, "mean": rho}}`` for the t0 sweep at p = 1 and the p sweep at
    t0 = 1 of Table 2, metric in SWEEP_METRICS."""
    t2 = [r for r in split_oracle(runs)[0] if r.get("table") == "toy_table2"]
    out = {}
    for sweep, fixed, var in (("t0 (p=1)", "p", "t0"), ("p (t0=1)", "t0", "p")):
        for metric in SWEEP_METRICS:
            per_seed = {}
            for seed in sorted({r["seed"] for r in t2}):
                rows = sorted((r for r in t2 if r["seed"] == seed and r[fixed] == 1.0), key=lambda r: r[var])
                if len(rows) >= 3:
                    per_seed[seed] = spearman([r[var] for r in rows], [r["model"].get(metric) for r in rows])
            vals = [v for v in per_seed.values() if not math.isnan(v)]
            out[(sweep, metric)] = {"per_seed": per_seed, "mean": statistics.mean(vals) if vals else float("nan")}
    return out


def render_sweeps(runs: list[dict]) -> str:
    res = sweeps(runs)
    if not any(v["per_seed"] for v in res.values()):
        return ""
    lines = ["### Toy Table 2 trends (Spearman ρ of the swept value with the metric)", "",
             "| sweep | metric | ρ per seed | mean ρ |", "|---|---|---|---|"]
    def rho(r: float) -> str:   # n/a: a constant side, or runs written before the metric existed
        return "n/a" if math.isnan(r) else f"{r:+.2f}"

    for (sweep, metric), v in res.items():
        per = ", ".join(f"{s}: {rho(r)}" for s, r in v["per_seed"].items())
        lines.append(f"| {sweep} | {metric} | {per} | {rho(v['mean'])} |")
    return "\n".join(lines) + "\n"


def _strip(run: dict, clip: int, gt: bool = False):
    from i2v.utils.io import read_strip

    path = Path(run["dir"]) / "samples" / f"clip{clip:03d}{'_gt' if gt else ''}.png"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: contact sheets need the runs' samples/clipNNN.png strips")
    return read_strip(path, num_frames=int(run.get("frames", 8)))


def write_sheets(runs: list[dict], out_dir: str, clip: int = 0, scale: int = 4) -> list[Path]:
    """Contact sheets of Table 3 and of the two Table 2 sweeps (see module docstring)."""
    from i2v.utils.io import save_contact_sheet

    def first_seed(rs: list[dict]) -> dict:
        return min(rs, key=lambda r: r["seed"])

    def label(name: str, run: dict) -> str:
        m = run["model"]
        return f"{name}\nidentity {m['identity']:.2f}\nmotion {m['step_px']:.2f} px/f"

    written = []
    t3, t2 = defaultdict(list), defaultdict(list)
    for r in split_oracle(runs)[0]:
        (t2[(r["t0"], r["p"])] if r.get("table") == "toy_table2" else t3[row_adapter(r)]).append(r)
    if t3:
        rows = [(label(adapter_label(a).replace(" and ", " and\n").replace(" + ", "\n+ ").replace(" (", "\n("),
                       first_seed(t3[a])),
                 _strip(first_seed(t3[a]), clip)) for a in sorted(t3, key=adapter_sort_key)]
        anyrun = first_seed(next(iter(t3.values())))
        rows.append(("ground truth", _strip(anyrun, clip, gt=True)))
        written.append(save_contact_sheet(rows, Path(out_dir) / "toy_table3.png", scale=scale, overwrite=True))
    for name, fixed, var in (("toy_table2_t0.png", 1, 0), ("toy_table2_p.png", 0, 1)):
        keys = sorted((k for k in t2 if k[fixed] == 1.0), key=lambda k: -k[var])
        if len(keys) < 2:
            continue
        rows = [(label(f"t0={k[0]:g} p={k[1]:g}", first_seed(t2[k])), _strip(first_seed(t2[k]), clip)) for k in keys]
        rows.append(("ground truth", _strip(first_seed(t2[keys[0]]), clip, gt=True)))
        written.append(save_contact_sheet(rows, Path(out_dir) / name, scale=scale, overwrite=True))
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    ap.add_argument("--sheets", default=None, help="folder for the contact-sheet PNGs")
    ap.add_argument("--clip", type=int, default=0, help="which held-out clip the sheets show")
    args = ap.parse_args(argv)
    runs = load_runs(args.paths)
    text = render(runs) + render_sweeps(runs)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.sheets:
        for p in write_sheets(runs, args.sheets, clip=args.clip):
            print(f"wrote {p}")


if __name__ == "__main__":
    from i2v.cli.config import run_script

    sys.exit(run_script(main, None))
