"""Collect toy-world runs (``metrics.json`` from ``train.py experiment=toy*`` / ``evaluate.py experiment=toy_table2``)
into markdown tables with mean ± std over seeds.

    python scripts/make_toy_tables.py multirun/toy_table3/<date> [multirun/toy_table2/<date> ...] [--out toy.md]

Rows are grouped by the adapter (Table 3) or by (t0, p) (Table 2); the ground-truth clips are scored with the same
metrics as a reference row. Columns: identity (↑, frame-1 consistency in [0, 1]), background error (↓), object
colour error (↓), motion per frame in px (toy FlowScore analogue), direction agreement (↑), flicker (↓).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

COLUMNS = [("identity", "identity ↑"), ("bg_err", "bg err ↓"), ("obj_err", "obj err ↓"), ("step_px", "motion px/frame"),
           ("direction_agree", "direction ↑"), ("flicker", "flicker ↓")]
ADAPTER_ORDER = ["none", "no_i2v", "no_content", "full"]
ADAPTER_LABEL = {"none": "w/o I2V-Adapter and Content-Adapter", "no_i2v": "w/o I2V-Adapter",
                 "no_content": "w/o Content-Adapter", "full": "Full model"}


def load_runs(paths: list[str]) -> list[dict]:
    runs = []
    for p in paths:
        files = [Path(p)] if Path(p).name == "metrics.json" else sorted(Path(p).rglob("metrics.json"))
        if not files:
            raise FileNotFoundError(f"no metrics.json under {p}")
        runs += [dict(json.loads(f.read_text()), dir=str(f.parent)) for f in files]
    return runs


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


def render(runs: list[dict]) -> str:
    out = []
    t3 = defaultdict(list)
    t2 = defaultdict(list)
    for r in runs:
        if r.get("table") == "toy_table2":
            t2[(r["t0"], r["p"])].append(r)
        else:
            t3[r["adapter"]].append(r)
    gt = [r["ground_truth"] for r in runs]
    if t3:
        groups = {a: t3[a] for a in ADAPTER_ORDER if a in t3}
        out.append(table(groups, lambda a: ADAPTER_LABEL.get(a, a), "Toy Table 3: model design", gt))
    if t2:
        keys = sorted(t2, key=lambda k: (-(k[1] == 1.0), -k[0], -k[1]))
        out.append(table({k: t2[k] for k in keys}, lambda k: f"t0={k[0]:g} p={k[1]:g}",
                         "Toy Table 2: Frame Similarity Prior", gt))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    text = render(load_runs(args.paths))
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
