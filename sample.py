"""Sample videos from an image and a prompt. All logic lives in i2v/sampling.py; see configs/sample.yaml."""
import sys

import hydra
from omegaconf import DictConfig

from i2v.cli.config import expand_sampling_aliases, quote_free_text, quote_numeric_choices, refuse_renamed_keys, run_entry  # (importing i2v.cli.config registers the ${asset:...} resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig):
    from i2v.sampling import sample

    return run_entry(sample, cfg)   # bad input: one line, no traceback


if __name__ == "__main__":
    # stage=2 selects configs/stage/2.yaml; t0=0.8 p=0.5 steps=... cfg=... are the sampling.* keys
    # its run folder is `out` (train.py and evaluate.py: `out_dir`): out_dir=... stops with one line saying so
    sys.argv[1:] = quote_free_text(expand_sampling_aliases(quote_numeric_choices(refuse_renamed_keys(sys.argv[1:], {"out_dir": "out"}))))
    main()
