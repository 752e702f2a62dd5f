"""Sample videos from an image and a prompt. All logic lives in i2v/sampling.py; see configs/sample.yaml."""
import hydra
from omegaconf import DictConfig

import i2v.config  # noqa: F401  (registers the ${asset:...} resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig):
    from i2v.sampling import sample

    return sample(cfg)


if __name__ == "__main__":
    main()
