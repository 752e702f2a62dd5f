"""The real configs compose for every backbone × stage × adapter, and missing weight paths fail at once, by name."""
import itertools

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from i2v.config import CONFIGS


def _compose(name, overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("backbone,stage,adapter", list(itertools.product(
    ["sd15", "sdxl", "toy"], ["1", "2"], ["full", "no_i2v", "no_content", "none"])))
def test_train_config_composes(backbone, stage, adapter):
    from i2v.train import attach_stage_data

    cfg = _compose("train", [f"backbone={backbone}", f"stage={stage}", f"adapter={adapter}"])
    assert cfg.backbone.name == backbone and cfg.adapter.name == adapter
    assert cfg.stage_cfg.resolution == {"1": 256, "2": 512}[stage]
    assert cfg.stage_cfg.n_frames == 16 and cfg.stage_cfg.stride == 4
    assert cfg.optim.lr == 1e-4
    # stage 2 switches the data to the self-collected folder datamodule
    attach_stage_data(cfg)
    assert cfg.data.size == cfg.stage_cfg.resolution
    target = cfg.data.dataset._target_
    assert target.endswith("FolderVideos" if stage == "2" else "WebVidDataset")
    # everything but Hydra's runtime interpolations resolves
    OmegaConf.to_container(cfg.backbone, resolve=True)
    assert cfg.adapter.i2v == (adapter in ("full", "no_content"))
    assert cfg.adapter.content == (adapter in ("full", "no_i2v"))


def test_schedules_match_the_motion_releases():
    sd15 = _compose("train", ["backbone=sd15"]).backbone.schedule
    sdxl = _compose("train", ["backbone=sdxl"]).backbone.schedule
    assert (sd15.beta_schedule, sd15.beta_end) == ("linear", 0.012)
    assert (sdxl.beta_schedule, sdxl.beta_end) == ("scaled_linear", 0.020)


def test_sample_config_composes_with_cli_keys():
    cfg = _compose("sample", ["backbone=toy", "t0=0.8", "p=0.5", "ckpt=x.safetensors"])
    assert (cfg.t0, cfg.p, cfg.ckpt, cfg.steps, cfg.cfg, cfg.frames, cfg.seed) == (0.8, 0.5, "x.safetensors", 25, 7.5,
                                                                                  16, 42)


def test_toy_experiment_composes():
    cfg = _compose("train", ["experiment=toy"])
    assert cfg.backbone.name == "toy" and cfg.trainer.accelerator == "cpu"
    assert cfg.data.dataset._target_ == "i2v.data.SyntheticVideos"
    assert OmegaConf.to_container(cfg.backbone, resolve=True)["unet"].endswith("toy/base_unet.safetensors")


def test_unknown_stage_is_a_clear_error():
    cfg = _compose("train", ["stage=3"])
    with pytest.raises(Exception, match="stage=3 is not defined"):
        cfg.stage_cfg.resolution


def test_missing_paths_are_named_at_once():
    from i2v.bundle import check_paths
    from i2v.train import attach_stage_data, check_run_inputs

    cfg = attach_stage_data(_compose("train", ["backbone=sdxl", "stage=2"]))
    with pytest.raises(FileNotFoundError) as e:
        check_run_inputs(cfg)
    msg = str(e.value)
    assert "data.dataset.root" in msg
    for key in ["unet", "motion", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "ip_adapter",
                "image_encoder"]:
        assert f"backbone.{key} (unset)" in msg
    cfg = _compose("train", ["backbone=sd15", "backbone.unet=/nonexistent/unet.safetensors"])
    with pytest.raises(FileNotFoundError, match="backbone.unet=/nonexistent/unet.safetensors \\(no such file"):
        check_paths(cfg.backbone, cfg.adapter)


def test_toy_experiment_composes_for_sampling():
    cfg = _compose("sample", ["experiment=toy", "image=x.png", "prompt=a red circle"])
    assert cfg.backbone.name == "toy" and cfg.frames == 8
    assert OmegaConf.to_container(cfg, resolve=False)["ckpt"] == "${asset:toy/adapter.safetensors}"
