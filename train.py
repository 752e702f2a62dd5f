"""Train the I2V-Adapter. All logic lives in i2v/train.py; see configs/train.yaml."""
import hydra
from omegaconf import DictConfig

import i2v.config  # noqa: F401  (registers the ${asset:...} resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig):
    from i2v.train import train

    return train(cfg)


if __name__ == "__main__":
    main()
