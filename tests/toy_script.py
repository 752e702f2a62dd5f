"""scripts/make_toy_checkpoint.py loaded as a module, for the tests that call its parser, config and ``main``."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_toy_checkpoint_script():
    spec = importlib.util.spec_from_file_location("make_toy_checkpoint", ROOT / "scripts" / "make_toy_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
