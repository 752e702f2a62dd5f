"""Score videos (and optionally generate them first). All logic lives in i2v/evaluate.py; see configs/evaluate.yaml."""
import sys

import hydra
from omegaconf import DictConfig

from i2v.cli.config import expand_sampling_aliases, quote_free_text, quote_numeric_choices, refuse_renamed_keys, run_entry  # (importing i2v.cli.config registers the ${asset:...} resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig):
    from i2v.evaluate import evaluate

    return run_entry(evaluate, cfg)   # bad input: one line, no traceback


if __name__ == "__main__":
    # stage=2 selects configs/stage/2.yaml; t0=0.8 p=0.5 steps=... cfg=... are the sampling.* keys
    sys.argv[1:] = quote_free_text(expand_sampling_aliases(quote_numeric_choices(refuse_renamed_keys(sys.argv[1:]))))
    main()
