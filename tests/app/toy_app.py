"""The toy app.py config used by the app tests: 4 steps, outputs under ``tmp_path``."""
from hydra import compose, initialize_config_dir

from i2v.cli.config import CONFIGS


def app_cfg(tmp_path, *over):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="app", overrides=[f"out={tmp_path}", "sampling.steps=4", *over])
