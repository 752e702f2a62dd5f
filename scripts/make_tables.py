"""Collect evaluation runs (summary.json + resolved_config.yaml written by evaluate.py) into markdown tables
printed beside the paper's numbers (i2v/assets/paper_tables.json).

    python scripts/make_tables.py multirun/evaluate/2026-11-25_12-00-00 [more run dirs ...] [--out tables.md]

One row per run, labelled with the config keys that produced it (t0/p, adapter, backbone) and its run folder;
paper rows with no matching run are listed with "—". Unmatched runs go to an "other runs" table.
"""
from __future__ import annotations

import sys

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "i2v" / "assets" / "paper_tables.json"
METRICS = ("dover_vqa", "clip_temp", "flow_score", "warping_error")
SETTINGS_SHOWN = {"clip_temp": ("mode", "preprocess", "include_first_frame", "encoder"),
                  "flow_score": ("unpad", "flow"), "warping_error": ("raft_input", "resize", "scale", "flow"),
                  "dover_vqa": ("available", "scorer")}


def find_runs(paths: list[str]) -> list[dict]:
    """Every ``summary.json`` under ``paths`` -> ``{"dir", "summary", "run"}`` (sorted by folder)."""
    from i2v.utils.tables import result_files

    runs = []
    for f in result_files(paths, "summary.json"):
        s = json.loads(f.read_text())
        runs.append({"dir": str(f.parent), "summary": s, "run": s.get("run", {})})
    return runs


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else str(v)


def _matches(run: dict, match: dict) -> bool:
    for k, want in match.items():
        got = run.get(k)
        if isinstance(want, float):
            if got is None or not math.isclose(float(got), want, abs_tol=1e-9):
                return False
        elif got != want:
            return False
    return True


def _value(run: dict, metric: str, warp_column: str):
    key = warp_column if metric == "warping_error" else metric
    s = run["summary"]["metrics"].get(key)
    return None if s is None else s["mean"]


def _settings_line(runs: list[dict]) -> str:
    parts = []
    for m, keys in SETTINGS_SHOWN.items():
        vals = {json.dumps({k: r["summary"].get("settings", {}).get(m, {}).get(k) for k in keys}, sort_keys=True)
                for r in runs}
        shown = "; ".join(sorted(vals)) if len(vals) > 1 else next(iter(vals))
        parts.append(f"{m}: {shown}{' (MIXED across runs)' if len(vals) > 1 else ''}")
    return "\n".join(f"- {p}" for p in parts)


def _run_cell(r: dict) -> str:
    """The run folder plus the command-line overrides that produced it (Hydra's task overrides)."""
    ov = r["run"].get("overrides") or []
    return f"`{r['dir']}`" + (f" ({' '.join(ov)})" if ov else "")


def render_table(name: str, spec: dict, runs: list[dict], names: dict, warp_column: str) -> str:
    """Markdown for one paper table: paper rows in order, each followed by the runs that match it."""
    keys = spec.get("keys", [])
    head = ["row"] + keys
    for m in METRICS:
        head += [names[m], "paper"]
    head += ["n", "run"]
    lines = [f"### {spec.get('title', name)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    used = set()
    for prow in spec["rows"]:
        matched = [r for r in runs if prow.get("match") and _matches(r["run"], prow["match"])]
        for r in matched or [None]:
            cells = [prow["label"]] + [_fmt(r["run"].get(k), 2) if r else "—" for k in keys]
            for m in METRICS:
                cells += [_fmt(_value(r, m, warp_column)) if r else "—", _fmt(prow.get(m))]
            n = r["summary"].get("n_videos") if r else "—"
            cells += [str(n), _run_cell(r) if r else "—"]
            lines.append("| " + " | ".join(cells) + " |")
            if r:
                used.add(id(r))
    extra = [r for r in runs if id(r) not in used]
    if extra:
        lines.append("")
        lines.append(f"Runs of {name} matching no paper row: " + ", ".join(f"`{r['dir']}` {r['run']}" for r in extra))
    if runs:
        lines += ["", f"Settings ({len(runs)} runs; WarpingError column: `{warp_column}`):", _settings_line(runs)]
    if spec.get("note"):
        lines += ["", f"Note: {spec['note']}"]
    return "\n".join(lines)


def render_other(runs: list[dict], names: dict, warp_column: str) -> str:
    head = ["run", "table", "t0", "p", "adapter", "backbone"] + [names[m] for m in METRICS] + ["n"]
    lines = ["### Other runs", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [f"`{r['dir']}`"] + [_fmt(r["run"].get(k), 2) for k in ("table", "t0", "p", "adapter", "backbone")]
        cells += [_fmt(_value(r, m, warp_column)) for m in METRICS] + [str(r["summary"].get("n_videos"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(runs: list[dict], paper: dict, tables: list[str] | None = None,
           warp_column: str = "warping_error") -> str:
    """All tables as one markdown string. ``tables`` limits the output (default: tables that have runs)."""
    names = paper["metrics"]
    by_table: dict[str, list[dict]] = {}
    for r in runs:
        by_table.setdefault(r["run"].get("table") or "", []).append(r)
    wanted = tables or [t for t in ("table1", "table2", "table3") if t in by_table]
    parts = [render_table(t, paper[t], by_table.get(t, []), names, warp_column) for t in wanted]
    other = [r for t, rs in by_table.items() if t not in ("table1", "table2", "table3") for r in rs]
    if other:
        parts.append(render_other(other, names, warp_column))
    header = (f"Paper numbers: {paper['source']}. Ours: mean over videos (see per_video.csv for std). "
              "Compare only runs scored with the same settings.")
    return header + "\n\n" + "\n\n".join(parts) + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (searched recursively for summary.json)")
    ap.add_argument("--table", action="append", choices=["table1", "table2", "table3"],
                    help="only these tables (repeatable); default: every table that has runs")
    ap.add_argument("--warp-column", default="warping_error",
                    choices=["warping_error", "warping_error_raw", "warping_error_x255sq", "warping_error_x1e4"])
    ap.add_argument("--paper", default=str(PAPER))
    ap.add_argument("--out", default=None, help="also write the markdown here")
    args = ap.parse_args(argv)
    paper = json.loads(Path(args.paper).read_text())
    text = render(find_runs(args.runs), paper, args.table, args.warp_column)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    from i2v.cli.config import run_script

    sys.exit(run_script(main, None))
