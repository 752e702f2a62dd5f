"""Config helpers shared by the entries and tests: the ``${asset:...}`` resolver and missing-path checks."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ASSETS = Path(__file__).resolve().parent / "assets"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def asset_path(rel: str) -> str:
    """Absolute path of a file shipped in ``i2v/assets`` (the toy checkpoints)."""
    return str(ASSETS / rel)


if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", asset_path)


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


def _pick_stage(stages: DictConfig, key) -> DictConfig:
    """``${pick_stage:${stages},${stage}}``: the settings of the active training stage (``stage=1|2|...``)."""
    k = str(key)
    if k not in stages:
        raise ValueError(f"stage={key!r} is not defined; choose one of {sorted(str(s) for s in stages)}")
    return stages[k]


if not OmegaConf.has_resolver("pick_stage"):
    OmegaConf.register_new_resolver("pick_stage", _pick_stage)
