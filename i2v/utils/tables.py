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
