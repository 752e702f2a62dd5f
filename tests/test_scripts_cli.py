"""The scripts of scripts/ answer --help and stop on bad input with one line, as the entries do."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize("script,first_words", [
    ("diagnose_adapter", "Learning diagnostic for an I2V-Adapter"),
    ("ceiling_check", "Ceiling check for the I2V-Adapter"),
    ("export_adapter", "Convert an I2V-Adapter checkpoint"),
    ("make_toy_tables", "usage: make_toy_tables.py"),
    ("make_tables", "usage: make_tables.py"),
])
def test_help(script, first_words):
    r = _run(f"scripts/{script}.py", "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(first_words), r.stdout[:300]


@pytest.mark.parametrize("args,message", [
    (["scripts/diagnose_adapter.py", "experiment=toy", "ckpt=none"], "error: adapter=full uses the I2V-Adapter"),
    (["scripts/diagnose_adapter.py", "experiment=toy", "backbone.no_such_key=1"], "error: "),
    (["scripts/ceiling_check.py", "experiment=toy", "adapter=no_such_adapter"], "error: "),
    (["scripts/make_toy_tables.py", "no/such/folder"], "error: no metrics.json under no/such/folder"),
])
def test_bad_input_is_one_line(args, message):
    r = _run(*args)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.startswith(message) and "Traceback" not in r.stderr, r.stderr[-2000:]
