"""The evaluation set (paper §4.3: "50 image-text pairs sampled from MJHQ-30K") and evaluation manifests.

The paper's own selection is unverified; this is the reproducible recipe of reference §6: group
``meta_data.json`` names by category, sort, draw ``per_category`` names per category with one
``random.Random(seed)`` in the card's category order (stratified, 10 × 5 = 50), or ``sample(sorted(all), n)``
(flat). Images are ``<root>/<category>/<name>.jpg`` (a wrapper folder above the categories is found by search).
A manifest (name, category, prompt, image, sha256, size) is written once and reused.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Optional

from i2v.utils.tables import read_rows

CATEGORIES = ("animals", "art", "fashion", "food", "indoor", "landscape", "logo", "people", "plants", "vehicles")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_meta(meta_path: str | Path) -> dict[str, dict]:
    """``meta_data.json``: ``{name: {"category": str, "prompt": str}}``."""
    p = Path(str(meta_path))
    if not p.is_file():
        raise FileNotFoundError(f"MJHQ-30K meta_data.json not found: {p} (from the playgroundai/MJHQ-30K dataset)")
    meta = json.loads(p.read_text())
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"{p}: expected a non-empty dict keyed by image name")
    for name, v in meta.items():
        if not isinstance(v, dict) or "category" not in v or "prompt" not in v:
            raise ValueError(f"{p}: entry {name!r} lacks 'category' or 'prompt'")
    return meta


def find_category_dirs(root: str | Path, max_depth: int = 3) -> dict[str, Path]:
    """Locate the 10 category folders under ``root`` (they may sit below a wrapper folder)."""
    root = Path(str(root))
    if not root.is_dir():
        raise FileNotFoundError(f"MJHQ-30K image folder not found: {root} (unzip mjhq30k_imgs.zip there)")
    frontier, found = [root], {}
    for _ in range(max_depth + 1):
        nxt = []
        for d in frontier:
            for c in sorted(p for p in d.iterdir() if p.is_dir()):
                if c.name in CATEGORIES and c.name not in found:
                    found[c.name] = c
                else:
                    nxt.append(c)
        if len(found) == len(CATEGORIES):
            break
        frontier = nxt
    return found


def select_names(meta: dict[str, dict], per_category: int = 5, seed: int = 0, stratified: bool = True,
                 n: int = 50) -> list[str]:
    """The selection recipe; depends only on ``meta`` (never on which images are present)."""
    rng = random.Random(seed)
    if not stratified:
        return rng.sample(sorted(meta), n)
    by_cat: dict[str, list[str]] = {}
    for name, v in meta.items():
        by_cat.setdefault(v["category"], []).append(name)
    cats = [c for c in CATEGORIES if c in by_cat] + sorted(c for c in by_cat if c not in CATEGORIES)
    names = []
    for c in cats:
        pool = sorted(by_cat[c])
        if len(pool) < per_category:
            raise ValueError(f"category {c!r} has {len(pool)} images, fewer than per_category={per_category}")
        names += rng.sample(pool, per_category)
    return names


def select_pairs(meta_path: str | Path, image_root: str | Path, per_category: int = 5, seed: int = 0,
                 stratified: bool = True, n: int = 50) -> list[dict]:
    """Selected items ``{name, category, prompt, image, sha256, width, height}``; a missing jpg is an error."""
    from PIL import Image

    meta = load_meta(meta_path)
    dirs = find_category_dirs(image_root)
    items = []
    for name in select_names(meta, per_category, seed, stratified, n):
        cat = meta[name]["category"]
        if cat not in dirs:
            raise FileNotFoundError(f"no folder for category {cat!r} under {image_root} (found {sorted(dirs)})")
        img = next((dirs[cat] / f"{name}{e}" for e in (".jpg", ".jpeg", ".png") if (dirs[cat] / f"{name}{e}").is_file()),
                   None)
        if img is None:
            raise FileNotFoundError(f"selected MJHQ image missing: {dirs[cat] / (name + '.jpg')}")
        with Image.open(img) as im:
            w, h = im.size
        items.append({"name": name, "category": cat, "prompt": meta[name]["prompt"], "image": str(img),
                      "sha256": sha256_file(img), "width": w, "height": h})
    return items


def write_manifest(items: list[dict], path: str | Path, recipe: Optional[dict] = None) -> Path:
    """JSON ``{"recipe": {...}, "items": [...]}`` (image paths as given)."""
    p = Path(str(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps({"recipe": recipe or {}, "items": items}, indent=2))
    tmp.replace(p)
    return p


def read_manifest(path: str | Path, verify: bool = False) -> list[dict]:
    """Items from a JSON (``{"items": [...]}`` or a list), JSONL or CSV manifest; each needs ``image`` and, for
    generation, ``prompt``; ``name`` defaults to the image stem. Relative paths resolve against the manifest's
    folder. ``verify=True`` checks recorded sha256 sums."""
    p = Path(str(path))
    if not p.is_file():
        raise FileNotFoundError(f"manifest not found: {p}")
    out = []
    for i, it in read_rows(p, other="document"):
        if isinstance(it, str):
            raise ValueError(f"{p}: item {i}: {it}")
        if not isinstance(it, dict) or not it.get("image"):
            raise ValueError(f"{p}: item {i} has no 'image' field")
        it = dict(it)
        for key in ("image", "video"):
            if it.get(key) and not Path(it[key]).is_absolute():
                it[key] = str((p.parent / it[key]).resolve())
        it.setdefault("name", Path(it["image"]).stem)
        if verify and it.get("sha256") and sha256_file(Path(it["image"])) != it["sha256"]:
            raise ValueError(f"{p}: sha256 mismatch for {it['image']} (the image changed since the manifest)")
        out.append(it)
    names = [it["name"] for it in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{p}: duplicate item names")
    return out


def mjhq_items(meta: str, images: str, manifest: Optional[str], per_category: int = 5, seed: int = 0,
               stratified: bool = True, n: int = 50) -> list[dict]:
    """Reuse ``manifest`` if it exists (verifying sha256), else select and write it."""
    if manifest and Path(str(manifest)).is_file():
        return read_manifest(manifest, verify=True)
    items = select_pairs(meta, images, per_category, seed, stratified, n)
    if manifest:
        write_manifest(items, manifest, {"source": "MJHQ-30K meta_data.json", "per_category": per_category,
                                         "seed": seed, "stratified": stratified, "n": n})
    return items
