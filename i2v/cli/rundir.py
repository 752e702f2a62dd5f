"""One run, one folder: a Hydra callback that claims ``hydra.run.dir`` before Hydra writes anything into it.

Run folders are named by the start time (``outputs/toy/<time>``), so two runs started in the same second would
share one folder (mixed ``.hydra`` snapshots, one run refused only after all its training), and re-running into an
interrupted run's folder would replace its checkpoints. :func:`claim_run_dir` creates the folder with an atomic
``mkdir``; when the name is taken it takes ``<name>_1``, ``<name>_2``, ... instead. ``overwrite=true`` reuses an
existing folder. Hydra writes ``.hydra/`` only after ``on_run_start``, so a finished run's snapshot is never
rewritten by a later run.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)
MAX_SUFFIX = 10_000


def claim_run_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create and return a folder no other run uses: ``path`` itself if it does not exist (or ``overwrite``),
    else the first free ``path_<n>``. Safe against concurrent claims (each name is taken by one ``mkdir``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite and path.is_dir():
        return path
    for n in range(MAX_SUFFIX):
        cand = path if n == 0 else path.with_name(f"{path.name}_{n}")
        try:
            cand.mkdir()
        except FileExistsError:
            continue
        return cand
    raise FileExistsError(f"{path}: {MAX_SUFFIX} run folders with this name exist; choose hydra.run.dir=...")


class UniqueRunDir(Callback):
    """``hydra.callbacks.unique_run_dir`` in configs/train.yaml: claims the run folder at ``on_run_start``."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        wanted = Path(str(config.hydra.run.dir))
        got = claim_run_dir(wanted, overwrite=bool(config.get("overwrite", False)))
        if got != wanted:
            print(f"note: {wanted} is in use (another run, or an earlier one); this run writes to {got}")
        with open_dict(config):
            config.hydra.run.dir = str(got)
