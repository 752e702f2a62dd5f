"""Web demo: animate an image in the browser. All logic lives in i2v/app/; see configs/app.yaml."""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from i2v.cli.config import expand_sampling_aliases, quote_free_text, quote_numeric_choices, refuse_renamed_keys, run_entry  # (importing i2v.cli.config registers the ${asset:...} resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="app")
def main(cfg: DictConfig):
    from i2v.app import serve

    hc = HydraConfig.get()
    return run_entry(lambda c: serve(c, list(hc.overrides.task), hc.runtime.choices.get("experiment")), cfg)


if __name__ == "__main__":
    # t0=0.8 p=0.5 steps=... cfg=... frames=... set the page's starting values (the sampling.* keys)
    # backbone=sd15|sdxl drops the default toy experiment (i2v.app.app_argv)
    from i2v.app import app_argv

    sys.argv[1:] = app_argv(quote_free_text(expand_sampling_aliases(quote_numeric_choices(refuse_renamed_keys(sys.argv[1:])))))
    main()
