"""Score videos (and optionally generate them first). All logic lives in i2v/evaluate.py; see configs/evaluate.yaml."""
import hydra
from omegaconf import DictConfig

import i2v.config  # noqa: F401  (registers the ${asset:...} resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig):
    from i2v.evaluate import evaluate

    return evaluate(cfg)


if __name__ == "__main__":
    main()
