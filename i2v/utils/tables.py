"""One reader for the row files users hand us: CSV, JSON lines and JSON documents (``sample.py prompts=``,
``evaluate.py manifest=``, folder-dataset manifests, the MJHQ selection)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Union

Row = Union[dict, str]  # a parsed row, or the text of why a JSON line could not be parsed


def read_rows(path: Union[str, Path], other: str = "error") -> list[tuple[int, Row]]:
    """``(row number, row)`` pairs of a table file, numbered from 1 over its data rows.

    ``.csv``: one dict per data row (header = keys; a UTF-8 BOM is accepted). ``.jsonl``: one value per non-empty line;
    a line that is not JSON becomes the error text in its place, so callers can report every bad row at once. Any
    other suffix is read as JSON lines (``other="lines"``), as one JSON document holding a list or ``{"items": [...]}``
    (``other="document"``), or refused (``other="error"``). Rows are returned as parsed: callers check their fields.
    """
    p = Path(str(path))
    if not p.is_file():
        raise FileNotFoundError(f"file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        with open(p, newline="", encoding="utf-8-sig") as f:
            return list(enumerate(csv.DictReader(f), 1))
    mode = "lines" if suffix == ".jsonl" else other
    if mode == "lines":
        rows: list[tuple[int, Row]] = []
        lines = [ln for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        for i, line in enumerate(lines, 1):
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((i, f"not valid JSON ({e})"))
        return rows
    if mode == "document":
        data = json.loads(p.read_text(encoding="utf-8-sig"))
        items = data.get("items") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ValueError(f"{p}: expected a JSON list or {{\"items\": [...]}}")
        return list(enumerate(items, 1))
    raise ValueError(f"expected a .csv or .jsonl file, got {p}")


def result_files(paths: list[Union[str, Path]], name: str) -> list[Path]:
    """Every ``name`` (``metrics.json``, ``summary.json``) under ``paths`` (files of that name, or folders searched
    recursively), in folder order; a folder without one is a FileNotFoundError. A job of a ``-m`` sweep (a folder
    beside its ``multirun.yaml``) without one, interrupted or failed, is named in a note: its row would otherwise be
    missing from the tables without a word."""
    found = []
    for p in map(Path, paths):
        if p.name == name:
            found.append(p)
            continue
        files = sorted(p.rglob(name))
        if not files:
            raise FileNotFoundError(f"no {name} under {p}")
        found += files
        for sweep in sorted(f.parent for f in p.rglob("multirun.yaml")):
            missing = sorted(d.name for d in sweep.iterdir() if (d / ".hydra").is_dir() and not (d / name).exists())
            if missing:
                shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
                print(f"note: {len(missing)} job(s) of the sweep {sweep} have no {name} (interrupted or failed) "
                      f"and are left out: {shown}")
    return found
