"""Paths of the shipped files and path checks: ``${asset:<rel>}`` (registered as an OmegaConf resolver on import),
portable paths for files that leave this machine, and the one missing-path check of configs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"


def asset_path(rel: str) -> str:
    """Absolute path of a file shipped in ``i2v/assets`` (the toy checkpoints)."""
    return str(ASSETS / rel)


if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", asset_path)


def portable_paths(obj: Any, cwd: Path | None = None) -> Any:
    """``obj`` (a resolved config: dicts, lists, strings) with absolute paths made portable for files that leave
    this machine (adapter metadata): under ``i2v/assets`` -> ``${asset:<rel>}``, under ``cwd`` -> relative."""
    if isinstance(obj, dict):
        return {k: portable_paths(v, cwd) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_paths(v, cwd) for v in obj]
    if not isinstance(obj, str) or not os.path.isabs(obj):
        return obj
    path, cwd = Path(obj), (cwd or Path.cwd()).resolve()
    for root, fmt in ((ASSETS, "${{asset:{}}}"), (cwd, "{}")):
        if path == root or root in path.parents:
            return fmt.format(path.relative_to(root).as_posix() or ".")
    return obj


def missing_paths(section: DictConfig, keys: list[str], prefix: str) -> list[str]:
    """Names (``prefix.key``) of required path keys that are unset, and of set paths that do not exist."""
    out = []
    for k in keys:
        v = section.get(k)
        if v in (None, "", "???"):
            out.append(f"{prefix}.{k} (unset)")
        elif not Path(str(v)).exists():
            out.append(f"{prefix}.{k}={v} (no such file or folder)")
    return out
