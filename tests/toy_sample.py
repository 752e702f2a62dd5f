"""The toy sample.py config used by the sampling tests: 2 steps, 3 frames, outputs under ``tmp_path/out``."""
from hydra import compose, initialize_config_dir

from i2v.cli.config import CONFIGS


def toy_sample_cfg(tmp_path, *over):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="sample", overrides=["experiment=toy", "sampling.steps=2", "sampling.num_frames=3",
                                                        f"out={tmp_path / 'out'}", *over])
