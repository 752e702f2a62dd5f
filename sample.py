"""Sample videos from an image and a prompt. All logic lives in i2v/sampling.py; see configs/sample.yaml."""
import sys

import hydra
from omegaconf import DictConfig

from i2v.config import quote_numeric_choices  # (importing i2v.config registers the ${asset:...} resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig):
    from i2v.sampling import sample

    return sample(cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_numeric_choices(sys.argv[1:])   # stage=2 selects configs/stage/2.yaml
    main()
