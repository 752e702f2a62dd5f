"""What ``sample.py`` samples: one ``image=``/``prompt=`` pair, or the rows of a ``prompts=`` CSV/JSONL file.

Every item is ``{row, image, prompt, seed, name}`` (``row`` = 1-based data row of the file; 0 for the single pair)
or ``{row, error}`` for a row that cannot be sampled: a bad row is reported by number while the others go on.
Output names stay under ``out=``: a ``name`` is reduced to one safe file stem (no folders, no ``..``, no absolute
paths); default names are ``<image stem>_<seed>`` and get ``_row<N>`` when an earlier row already has that name,
while two rows giving the same explicit ``name`` are an error for the second one (never a silent replacement).
CSV files may carry a UTF-8 byte-order mark (Excel writes one).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from omegaconf import DictConfig

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,@-]+")


def safe_name(name: str) -> str:
    """A single file stem from ``name``: folder parts, ``..`` and characters outside ``[A-Za-z0-9._+=,@-]``
    become ``_``; leading dots are dropped (no hidden files). Raises ValueError when nothing is left."""
    stem = _UNSAFE.sub("_", str(name).replace("\\", "/").replace("/", "_")).lstrip(".")
    stem = stem.replace("..", "_")
    if not stem.strip("_"):
        raise ValueError(f"output name {name!r} has no usable characters")
    return stem[:200]


def _read_rows(path: Path) -> list[tuple[int, object]]:
    """(data row number, row) pairs; a JSONL line that is not JSON becomes the error text instead of a row."""
    if path.suffix == ".jsonl":
        rows: list[tuple[int, object]] = []
        lines = [ln for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        for i, line in enumerate(lines, 1):
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((i, f"not valid JSON ({e})"))
        return rows
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(enumerate(csv.DictReader(f), 1))
    raise ValueError(f"prompts must be a .csv or .jsonl file, got {path}")


def _item(path: Path, n: int, r: object, default_seed: int) -> dict:
    if isinstance(r, str):
        raise ValueError(r)
    if not isinstance(r, dict):
        raise ValueError(f"expected an object with image and prompt, got {type(r).__name__}")
    if not r.get("image") or r.get("prompt") is None:
        raise ValueError(f"needs 'image' and 'prompt' columns, got {sorted(r)}")
    img = Path(str(r["image"]))
    img = img if img.is_absolute() else path.parent / img
    try:
        seed = int(r["seed"]) if r.get("seed") not in (None, "") else default_seed
    except (TypeError, ValueError):
        raise ValueError(f"seed {r.get('seed')!r} is not an integer") from None
    given = r.get("name")
    return {"row": n, "image": str(img), "prompt": str(r["prompt"]), "seed": seed,
            "name": safe_name(given) if given else None, "default_name": safe_name(f"{img.stem}_{seed}")}


def read_items(cfg: DictConfig) -> list[dict]:
    """Items ``{row, image, prompt, seed, name}`` (or ``{row, error}``) from ``image``+``prompt`` or ``prompts``."""
    if not cfg.get("prompts"):
        if not cfg.get("image") or cfg.get("prompt") is None:
            raise ValueError("give image=<file> and prompt=\"...\" (or prompts=<file.csv|jsonl>)")
        name = safe_name(cfg.get("name") or f"{Path(str(cfg.image)).stem}_{int(cfg.seed)}")
        return [{"row": 0, "image": str(cfg.image), "prompt": str(cfg.prompt), "seed": int(cfg.seed), "name": name}]
    path = Path(str(cfg.prompts))
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    items, used = [], {}
    for n, r in _read_rows(path):
        try:
            it = _item(path, n, r, int(cfg.seed))
        except ValueError as e:
            items.append({"row": n, "error": f"{path} row {n}: {e}"})
            continue
        name = it.pop("name")
        default = it.pop("default_name")
        if name is not None and name in used:
            items.append({"row": n, "error": f"{path} row {n}: name {name!r} is already used by row {used[name]}"})
            continue
        if name is None:
            name = default if default not in used else f"{default}_row{n}"
        used[name] = n
        items.append({**it, "name": name})
    if not items:
        raise ValueError(f"{path}: no rows")
    return items
