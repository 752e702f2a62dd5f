"""hydra/launcher=local: a toy Table 2 sweep runs as real submitit jobs (hydra-submitit-launcher's local executor,
the same code path as hydra/launcher=slurm without the cluster), each job writing its metrics into a folder named
by its (t0, p)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_local_launcher_runs_a_two_row_toy_sweep_through_submitit(tmp_path):
    sweep = tmp_path / "sweep"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "evaluate.py", "-m", "experiment=toy_table2", "hydra/launcher=local", "fsp_row=0,6",
           "toy_eval.n_videos=1", "sampling.steps=2", f"hydra.sweep.dir={sweep}"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in res.stdout + res.stderr
    rows = {}
    for folder in ("t0_1.0_p_1.0_seed42", "t0_1.0_p_0.7_seed42"):     # Table 2 rows 0 and 6, named by (t0, p)
        metrics = json.loads((sweep / folder / "metrics.json").read_text())
        rows[folder] = (metrics["t0"], metrics["p"], metrics["steps"], metrics["n_videos"], metrics["fsp_blur"])
        assert 0.0 <= metrics["model"]["identity"] <= 1.0
    blur = [5, 10.0]                                                     # the toy's prior blur, recorded
    assert rows == {"t0_1.0_p_1.0_seed42": (1.0, 1.0, 2, 1, blur), "t0_1.0_p_0.7_seed42": (1.0, 0.7, 2, 1, blur)}
    results = sorted((sweep / ".submitit").glob("*/*_result.pkl"))    # two submitit jobs, each finished
    assert len(results) == 2
