"""One-way layers (STYLE.md): ``models`` (plain modules) and ``diffusion`` import no framework (Lightning, Hydra,
OmegaConf) and nothing above them (``checkpoints``, ``pipeline``, ``training``, the entries, the toy world)."""
import subprocess
import sys
from pathlib import Path

import pytest

import i2v

PACKAGE = Path(i2v.__file__).parent
FORBIDDEN = ("lightning", "hydra", "omegaconf", "i2v.checkpoints", "i2v.pipeline", "i2v.training", "i2v.toy",
             "i2v.sampling", "i2v.train", "i2v.evaluate")


@pytest.mark.parametrize("layer", ["models", "diffusion"])
def test_lower_layers_import_nothing_above_them(layer):
    modules = sorted(f"i2v.{layer}.{p.stem}" for p in (PACKAGE / layer).glob("*.py") if p.stem != "__init__")
    code = ("import sys\n"
            f"for m in {modules!r}: __import__(m)\n"
            f"bad = sorted(n for n in sys.modules if n.split('.')[0] in ('lightning', 'hydra', 'omegaconf') "
            f"or any(n == f or n.startswith(f + '.') for f in {FORBIDDEN!r}))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"i2v.{layer} pulls in: {out.stdout.strip()}"


@pytest.mark.parametrize("layer", ["models", "diffusion"])
def test_lower_layers_have_no_import_of_higher_layers_in_their_source(layer):
    """Also the lazy imports inside functions, which the import test above cannot see."""
    for path in (PACKAGE / layer).glob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                name = words[1]
                assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), f"{path.name}:{n}: {line}"


ENTRY_LOGIC = ("i2v.cli", "i2v.sampling", "i2v.train", "i2v.evaluate")


@pytest.mark.parametrize("layer", ["checkpoints", "data", "metrics", "pipeline", "training", "toy", "utils", "app"])
def test_library_layers_do_not_import_the_entries_logic(layer):
    """The entries (sample.py, train.py, evaluate.py, app.py) sit on top: their logic (``i2v.sampling``, ``i2v.train``,
    ``i2v.evaluate``) and their Hydra helpers (``i2v.cli``) are imported by no library package, lazily or not."""
    for path in (PACKAGE / layer).rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                name = words[1]
                assert not any(name == f or name.startswith(f + ".") for f in ENTRY_LOGIC), \
                    f"{path.relative_to(PACKAGE)}:{n}: {line}"
