"""Train the I2V-Adapter. All logic lives in i2v/train.py; see configs/train.yaml."""
import sys

import hydra
from omegaconf import DictConfig

from i2v.cli.config import quote_numeric_choices, refuse_renamed_keys, run_entry  # (importing i2v.cli.config registers the ${asset:...} resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig):
    from i2v.train import train

    result = run_entry(train, cfg)   # bad input: one line, no traceback
    if result.get("interrupted") is not None:   # the step reached is saved; a sweep stops too
        sys.exit(143 if result.get("signal") == "SIGTERM" else 130)   # the shell's status for that signal
    return result


if __name__ == "__main__":
    # stage=2 selects configs/stage/2.yaml; the run folder is `out_dir` (sample.py: `out`): out=... says so in a line
    sys.argv[1:] = quote_numeric_choices(refuse_renamed_keys(sys.argv[1:], {"out": "out_dir"}))
    main()
