"""What ``sample.py`` samples: one ``image=``/``prompt=`` pair, every image of an ``image=<folder>`` with that prompt, or
the rows of a ``prompts=`` CSV/JSONL file.

Every item is ``{row, image, prompt, seed, name}`` (``row`` = 1-based data row of the file; 0 for the single pair)
or ``{row, error}`` for a row that cannot be sampled: a bad row is reported by number while the others go on.
Output names stay under ``out=``: a ``name`` is reduced to one safe file stem (no folders, no ``..``, no absolute
paths); default names are ``<image stem>_<seed>`` and get ``_row<N>`` when an earlier row already has that name,
while two rows giving the same explicit ``name`` are an error for the second one (never a silent replacement).
A default name whose files in ``out=`` were made from another prompt gets ``_<prompt hash>`` (:func:`preflight`), so
the same image and seed with a second prompt never collides; the same prompt again is refused unless overwrite=true.
CSV files may carry a UTF-8 byte-order mark (Excel writes one).

:func:`preflight` runs before any model loads: every input image exists and decodes (a note when it will be resized
or cropped), and every output is free.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from i2v.utils.io import IMAGE_EXTS, image_files, image_size
from i2v.utils.tables import read_rows

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
    if path.suffix not in (".csv", ".jsonl"):
        raise ValueError(f"prompts must be a .csv or .jsonl file, got {path}")
    return read_rows(path)


def _item(path: Path, n: int, r: object, default_seed: int) -> dict:
    if isinstance(r, str):
        raise ValueError(r)
    if not isinstance(r, dict):
        raise ValueError(f"expected an object with image and prompt, got {type(r).__name__}")
    if not r.get("image") or r.get("prompt") is None:
        raise ValueError(f"needs 'image' and 'prompt' columns, got {sorted(r)}")
    img = Path(str(r["image"]))
    where = str(r["image"]) if is_url(str(r["image"])) else str(img if img.is_absolute() else path.parent / img)
    seed = as_seed(r["seed"]) if r.get("seed") not in (None, "") else default_seed
    given = r.get("name")
    return {"row": n, "image": where, "prompt": str(r["prompt"]), "seed": seed,
            "name": safe_name(given) if given else None, "default_name": safe_name(f"{img.stem}_{seed}")}


def is_url(text: str) -> bool:
    """``https://...``, ``s3://...``: an address, not a local file."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def is_batch(cfg: DictConfig) -> bool:
    """Several items (``prompts=`` or ``image=<folder>``): a bad one is reported by row while the others go on."""
    return bool(cfg.get("prompts")) or (bool(cfg.get("image")) and Path(str(cfg.image)).is_dir())


def _free_name(default: str, used, n: int) -> str:
    """``default`` (``<image stem>_<seed>``), or ``<default>_row<N>`` when an earlier item of the batch has it."""
    return default if default not in used else f"{default}_row{n}"


def _folder_items(folder: Path, prompt: str, seed: int, name) -> list[dict]:
    """``image=<folder>``: one item per image file in it (:func:`~i2v.utils.io.image_files`; rows 1..N), all with
    ``prompt`` and ``seed``, named ``<image stem>_<seed>``."""
    if name:
        raise ValueError(f"name= names one video; image={folder} is a folder (each video is named after its image)")
    files = image_files(folder)
    if not files:
        raise ValueError(f"image={folder} is a folder with no image file ({', '.join(IMAGE_EXTS)})")
    items, used = [], set()
    for n, f in enumerate(files, start=1):
        stem = _free_name(safe_name(f"{f.stem}_{seed}"), used, n)     # a.png and a.jpg
        used.add(stem)
        items.append({"row": n, "image": str(f), "prompt": prompt, "seed": seed, "name": stem, "auto_name": True})
    return items


def as_seed(value, key: str = "seed") -> int:
    """``value`` as a seed: an integer, or text or a float that is one (``"7"``, ``7.0``); anything else (``1.5``,
    ``abc``, ``true``) is a ValueError naming it, not silently truncated."""
    if isinstance(value, bool):
        raise ValueError(f"{key} {value!r} is not an integer")
    if isinstance(value, int):
        return value
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(f"{key} {value!r} is not an integer") from None
    if not number.is_integer():
        raise ValueError(f"{key} {value!r} is not an integer")
    return int(number)


def read_items(cfg: DictConfig) -> list[dict]:
    """Items ``{row, image, prompt, seed, name}`` (or ``{row, error}``) from ``image``+``prompt`` or ``prompts``."""
    seed = as_seed(cfg.seed)
    if not cfg.get("prompts"):
        if not cfg.get("image") or cfg.get("prompt") is None:
            raise ValueError("give image=<file or folder> and prompt=\"...\" (or prompts=<file.csv|jsonl>)")
        if Path(str(cfg.image)).is_dir():
            return _folder_items(Path(str(cfg.image)), str(cfg.prompt), seed, cfg.get("name"))
        name = safe_name(cfg.get("name") or f"{Path(str(cfg.image)).stem}_{seed}")
        return [{"row": 0, "image": str(cfg.image), "prompt": str(cfg.prompt), "seed": seed, "name": name,
                 "auto_name": not cfg.get("name")}]
    path = Path(str(cfg.prompts))
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    items, used = [], {}
    for n, r in _read_rows(path):
        try:
            it = _item(path, n, r, seed)
        except ValueError as e:
            items.append({"row": n, "error": f"{path} row {n}: {e}"})
            continue
        name = it.pop("name")
        default = it.pop("default_name")
        if name is not None and name in used:
            items.append({"row": n, "error": f"{path} row {n}: name {name!r} is already used by row {used[name]}"})
            continue
        auto = name is None
        if auto:
            name = _free_name(default, used, n)
        used[name] = n
        items.append({**it, "name": name, "auto_name": auto})
    if not items:
        raise ValueError(f"{path}: no rows")
    return items


def prompt_tag(prompt: str) -> str:
    """8 hex digits of the prompt's SHA-1: tells apart outputs of one image and seed with different prompts."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]


def _made_from_other_prompt(json_path: Path, prompt: str) -> bool:
    try:
        return json.loads(json_path.read_text()).get("prompt") != prompt
    except (OSError, ValueError, AttributeError):
        return False      # unreadable: treat as taken (refused below unless overwrite)


def preflight(items: list[dict], out_dir: Path, outputs: Callable[[str], list[Path]], overwrite: bool,
              size: tuple[int, int] | None, resize: str, strict: bool) -> list[dict]:
    """Check every item before any model loads. ``strict`` (no ``prompts=`` batch): raise at the first problem
    (FileNotFoundError, ValueError or FileExistsError); else a failing item becomes ``{row, error}`` and the batch
    reports it by row number. ``outputs(name)`` lists the paths one item writes;
    ``size`` = (height, width) the images are brought to (``None``: unknown here). Prints a note per image that
    will be resized or cropped."""
    checked, claimed = [], set()

    def fail(it: dict, exc: type, msg: str) -> None:
        if strict:
            raise exc(msg)
        checked.append({"row": it.get("row"), "error": f"row {it.get('row')}: {msg}"})

    for it in items:
        if "error" in it:
            checked.append(it)
            continue
        if is_url(it["image"]):
            fail(it, ValueError, f"image {it['image']} is a URL: images are read from local files (nothing is "
                                 "downloaded); save it and give its path")
            continue
        image = Path(it["image"])
        try:
            w, h = image_size(image)
        except (FileNotFoundError, ValueError) as e:
            fail(it, type(e), str(e))
            continue
        name = it["name"]
        if it.get("auto_name") and _made_from_other_prompt(out_dir / f"{name}.json", it["prompt"]):
            name = f"{name}_{prompt_tag(it['prompt'])}"
        taken = [p for p in outputs(name) if p.exists() or p in claimed]
        if taken and not overwrite:
            fail(it, FileExistsError, f"{taken[0]} exists; pass overwrite=true to replace it")
            continue
        claimed.update(outputs(name))
        if size is not None and resize == "crop" and (h, w) != tuple(size):
            how = "resized" if h * size[1] == w * size[0] else "resized and centre-cropped"
            print(f"note: {image.name} is {w}x{h}; {how} to {size[1]}x{size[0]} (sampling.resize=crop; "
                  "sampling.resize=fit keeps the whole image)")
        checked.append({**it, "name": name})
    return checked
