"""The real configs compose for every backbone x stage x adapter with the README's data overrides, the stage group
sizes the data, SDXL refuses stage 1, weight paths come from configs/local once, missing inputs are named, and the
defaults the README states are the configs'."""
import re
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from i2v.cli.config import CONFIGS, quote_numeric_choices
from i2v.train import check_run_inputs, check_stage

DATA = {"1": ["data.dataset.csv_path=/d/webvid.csv", "data.dataset.video_folder=/d/videos"],
        "2": ["data.dataset.root=/d/videos"], "toy": []}
SIZING = {"1": (16, 4, 256, "WebVidDataset"), "2": (16, 4, 512, "FolderVideos"), "toy": (8, 1, 32, "SyntheticVideos")}


def _compose(name, overrides, configs=CONFIGS):
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        return compose(config_name=name, overrides=quote_numeric_choices(overrides), return_hydra_config=True)


@pytest.mark.parametrize("backbone,stage", [("sd15", "1"), ("sd15", "2"), ("sdxl", "2"), ("toy", "toy")])
@pytest.mark.parametrize("adapter", ["full", "no_i2v", "no_content", "none"])
def test_train_config_composes_with_the_readme_overrides(backbone, stage, adapter):
    cfg = _compose("train", [f"backbone={backbone}", f"stage={stage}", f"adapter={adapter}", *DATA[stage],
                             "data.batch_size=3"])
    check_stage(cfg)
    frames, stride, size, dataset = SIZING[stage]
    assert (cfg.data.num_frames, cfg.data.stride, cfg.data.size, cfg.data.batch_size) == (frames, stride, size, 3)
    assert cfg.data.dataset._target_ == f"i2v.data.{dataset}" and cfg.trainer.max_epochs == 1
    for arg in DATA[stage]:
        key, _, value = arg.partition("=")
        assert OmegaConf.select(cfg, key) == value
    assert not OmegaConf.missing_keys(cfg.data)
    assert cfg.sampling.num_frames == frames and cfg.optim.lr == 1e-4
    assert cfg.adapter.i2v == (adapter in ("full", "no_content"))


def test_stage_choices_are_numbers_on_the_command_line():
    assert quote_numeric_choices(["stage=2", "stage=1,2", "backbone=sdxl", "seed=2"]) == \
        ["stage='2'", "stage='1','2'", "backbone=sdxl", "seed=2"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        with pytest.raises(ValueError, match="must be a string"):   # why the quoting exists
            compose(config_name="train", overrides=["stage=2"])


def test_sdxl_refuses_stage_1_in_one_line():
    for over in (["backbone=sdxl", "stage=1"], ["backbone=sdxl"]):
        with pytest.raises(ValueError, match=r"^backbone=sdxl trains on stage 2 only \(paper §4.1\), not stage=1: "
                                             r"pass stage=2$"):
            check_stage(_compose("train", over))


def test_an_unknown_stage_is_a_clear_error():
    with pytest.raises(Exception, match="Could not find 'stage/3'"):
        _compose("train", ["stage=3"])


def test_missing_inputs_are_named_by_their_real_keys():
    cfg = _compose("train", ["backbone=sdxl", "stage=2"])
    with pytest.raises(FileNotFoundError) as e:
        check_run_inputs(cfg)
    msg = str(e.value)
    assert "stage=2 data (FolderVideos) needs: data.dataset.root" in msg and "data.data." not in msg
    for key in ["unet", "motion", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "ip_adapter",
                "image_encoder"]:
        assert f"backbone.{key} (unset)" in msg


def test_data_paths_that_do_not_exist_are_named_before_any_model_loads(tmp_path):
    cfg = _compose("train", ["stage=1", f"data.dataset.csv_path={tmp_path / 'no.csv'}",
                             f"data.dataset.video_folder={tmp_path}"])
    with pytest.raises(FileNotFoundError) as e:
        check_run_inputs(cfg)
    assert f"data.dataset.csv_path={tmp_path / 'no.csv'} is not a file" in str(e.value)
    assert "video_folder" not in str(e.value)   # it exists
    cfg = _compose("train", ["experiment=toy", "data=selfcollected", f"data.dataset.root={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match=f"^data.dataset.root={tmp_path / 'nowhere'} is not a folder$"):
        check_run_inputs(cfg)
    check_run_inputs(_compose("train", ["experiment=toy", "data=selfcollected", f"data.dataset.root={tmp_path}"]))


def test_one_sampling_config_for_every_entry():
    for name in ("train", "sample", "evaluate"):
        cfg = _compose(name, ["experiment=toy", "sampling.guidance_scale=2.5"])
        s = OmegaConf.to_container(cfg.sampling, resolve=True)
        assert (s["steps"], s["guidance_scale"], s["t0"], s["p"], s["num_frames"]) == (20, 2.5, 1.0, 0.0, 8)
        # the toy's blur, for its 16² latents; the prior's noise as drawn (the paper's)
        assert s["fsp"] == {"enabled": True, "kernel_size": 5, "sigma": 10.0, "noise_dc": "keep"}
        assert not {"t0", "p", "steps", "cfg", "frames", "sample"} & set(cfg)
    s = _compose("sample", []).sampling
    assert (s.steps, s.guidance_scale, s.num_frames, s.scheduler) == (25, 7.5, 16, "ddim")
    for backbone in ("sd15", "sdxl"):   # the official blur for real latents
        s = OmegaConf.to_container(_compose("sample", [f"backbone={backbone}"]).sampling, resolve=True)
        assert s["fsp"] == {"enabled": True, "kernel_size": 9, "sigma": 18.0, "noise_dc": "keep"}


def test_weight_paths_come_from_configs_local_once(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    shutil.rmtree(configs / "local")
    (configs / "local").mkdir()
    shutil.copy(CONFIGS / "local" / "example.yaml", configs / "local" / "default.yaml")
    example = OmegaConf.load(CONFIGS / "local" / "example.yaml").weights
    for backbone in ("sd15", "sdxl"):
        cfg = _compose("evaluate", ["experiment=table1", f"backbone={backbone}"], configs)
        assert cfg.backbone.unet == example[backbone].unet and cfg.backbone.motion == example[backbone].motion
        assert cfg.metrics.flow.weights == example.raft and cfg.metrics.clip_temp.weights == example.clip_temp
    cfg = _compose("train", ["backbone=sdxl", "stage=2", "backbone.unet=/cli/unet"], configs)
    assert cfg.backbone.unet == "/cli/unet" and cfg.backbone.image_encoder == example.sdxl.image_encoder
    assert _compose("train", ["backbone=sdxl", "stage=2"]).backbone.unet is None     # no local file: unset


def test_schedules_match_the_motion_releases():
    sd15 = _compose("train", ["backbone=sd15"]).backbone.schedule
    sdxl = _compose("train", ["backbone=sdxl", "stage=2"]).backbone.schedule
    assert (sd15.beta_schedule, sd15.beta_end) == ("linear", 0.012)
    assert (sdxl.beta_schedule, sdxl.beta_end) == ("scaled_linear", 0.020)


def test_launchers_and_table2_folders():
    cfg = _compose("train", ["backbone=sdxl", "stage=2", "hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2",
                             "hydra.launcher.gpus_per_node=8"])
    slurm = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (slurm["nodes"], slurm["tasks_per_node"], slurm["gpus_per_node"]) == (2, 8, 8)
    assert {"partition", "timeout_min", "mem_gb", "array_parallelism"} <= set(slurm)
    assert _compose("evaluate", ["hydra/launcher=slurm"]).hydra.launcher.nodes == 1
    assert _compose("evaluate", ["hydra/launcher=local"]).hydra.launcher._target_.endswith("LocalLauncher")
    cfg = _compose("evaluate", ["experiment=table2", "fsp_row=2"])
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=True)["subdir"] == "t0_0.8_p_1.0"


def test_old_frame_key_on_the_command_line_names_the_new_one():
    """``data.n_frames=16`` (the key before issue 13) stops before Hydra with one line naming ``data.num_frames``."""
    import subprocess
    import sys

    from i2v.cli.config import refuse_renamed_keys

    assert refuse_renamed_keys(["data.num_frames=16", "frames=8"]) == ["data.num_frames=16", "frames=8"]
    out = subprocess.run([sys.executable, "train.py", "experiment=toy", "data.n_frames=16"], capture_output=True,
                         text=True, cwd=CONFIGS.parent)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: data.n_frames is now data.num_frames (write data.num_frames=16)"


def test_the_toy_experiment_runs_as_long_as_its_max_steps():
    """experiment=toy has no epoch limit, so trainer.max_steps beyond one epoch of its clips is what runs."""
    cfg = _compose("train", ["experiment=toy", "trainer.max_steps=1600"])
    per_epoch = cfg.data.dataset.n_items // cfg.data.batch_size
    assert per_epoch < 1600 and cfg.trainer.max_steps == 1600 and cfg.trainer.max_epochs == -1

def test_the_toy_trains_in_fp32_on_a_gpu_too():
    """trainer=gpu's bf16-mixed is for SD-sized models; the toy experiment keeps fp32 on either trainer."""
    assert _compose("train", ["trainer=gpu"]).trainer.precision == "bf16-mixed"
    for trainer in ("cpu", "gpu"):
        cfg = _compose("train", ["experiment=toy", f"trainer={trainer}"])
        assert cfg.trainer.precision == "32-true" and cfg.trainer.accelerator == trainer


@pytest.mark.parametrize("entry,given,key", [("sample.py", "out_dir", "out"), ("train.py", "out", "out_dir")])
def test_the_run_folder_key_of_the_other_entry_names_this_ones(entry, given, key):
    """train.py writes to ``out_dir``, sample.py to ``out``: the other entry's key stops before Hydra with one line
    naming this entry's (Hydra's own message was "Key 'out_dir' is not in struct")."""
    import subprocess
    import sys

    from i2v.cli.config import refuse_renamed_keys

    assert refuse_renamed_keys(["out=/tmp/a"], {"out_dir": "out"}) == ["out=/tmp/a"]
    out = subprocess.run([sys.executable, entry, "experiment=toy", f"{given}=/tmp/run"], capture_output=True,
                         text=True, cwd=CONFIGS.parent)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {given} is called {key} in this command (write {key}=/tmp/run)"


def test_short_sampling_keys_on_the_sample_and_evaluate_command_line():
    """`python sample.py ckpt=... t0=0.8 p=0.5` (the design card's command) sets the sampling.* keys."""
    from i2v.cli.config import expand_sampling_aliases

    args = expand_sampling_aliases(["t0=0.8", "p=0.1,0.5", "cfg=3", "frames=8", "steps=4", "+scheduler=euler",
                                    "seed=2", "sampling.p=0.2", "fsp_row=1"])
    assert args == ["sampling.t0=0.8", "sampling.p=0.1,0.5", "sampling.guidance_scale=3", "sampling.num_frames=8",
                    "sampling.steps=4", "sampling.scheduler=euler", "seed=2", "sampling.p=0.2", "fsp_row=1"]
    cfg = _compose("sample", expand_sampling_aliases(["experiment=toy", "t0=0.8", "p=0.5", "cfg=2.5", "frames=6"]))
    s = cfg.sampling
    assert (s.t0, s.p, s.guidance_scale, s.num_frames) == (0.8, 0.5, 2.5, 6)


def _readme_text():
    return " ".join((Path(CONFIGS).parent / "README.md").read_text().split())


def _readme_defaults(sentence_start):
    """The `key=value` pairs in backticks of the README sentence that starts with ``sentence_start``."""
    text = _readme_text()
    start = text.index(sentence_start)
    sentence = text[start:text.index(".", text.index("(", start))]
    return dict(re.findall(r"`([\w.]+)=([\w.]+)`", sentence))


SHORT = {"steps": "steps", "cfg": "guidance_scale", "frames": "num_frames", "t0": "t0", "p": "p"}


def test_the_readme_states_the_toy_sampling_defaults_the_config_has():
    stated = _readme_defaults("`experiment=toy` sets the toy world's own sampling defaults")
    stated.pop("experiment")
    assert set(stated) == set(SHORT), stated
    cfg = _compose("sample", ["experiment=toy"])
    for key, value in stated.items():
        assert float(cfg.sampling[SHORT[key]]) == float(value), (key, value, cfg.sampling[SHORT[key]])


def test_the_readme_states_the_sampling_and_progress_defaults_the_configs_have():
    stated = re.findall(r"`((?:sampling|train)\.[\w.]+)`(?: \(|=)([0-9.]+)", _readme_text())
    assert {key for key, _ in stated} >= {"sampling.steps", "sampling.guidance_scale", "sampling.num_frames",
                                          "train.progress_every_n_steps"}, stated
    cfgs = {"sampling": _compose("sample", []), "train": _compose("train", ["stage=2", *DATA["2"]])}
    for key, value in stated:
        assert float(OmegaConf.select(cfgs[key.split(".")[0]], key)) == float(value), (key, value)


@pytest.mark.parametrize("text", [
    "a red ball, moving left", "it's raining", "a cat: 4k, [masterpiece] {x} = y", "ends with a backslash\\",
    "a \\' quote after a backslash", 'say "hi"', "ünïcödé ☃", "a, b, c", "'", "\\",
    "costs ${price}", "a \\${x} and \\\\${y}", "$ {x} $5 ${", "${a}'s ${b}\\"])
def test_a_prompt_is_taken_as_typed(text):
    """sample.py quotes prompt=/negative_prompt= values for Hydra: what Hydra parses back, and OmegaConf then
    resolves, is the text as typed (unquoted, a comma is a list or sweep and an apostrophe a lexer error; ``${x}``
    an interpolation that fails)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from i2v.cli.config import expand_sampling_aliases, quote_free_text

    parser = OverridesParser.create()
    for arg in quote_free_text(expand_sampling_aliases([f"prompt={text}", f"negative_prompt={text}"])):
        assert OmegaConf.create({"v": parser.parse_override(arg).value()}).v == text, arg


def test_quoting_leaves_quoted_null_and_multirun_values_alone():
    from i2v.cli.config import quote_free_text

    kept = ["prompt='a, b'", 'prompt="a, b"', "prompt=null", "prompt=", "seed=1,2", "image=a,b.png"]
    assert quote_free_text(kept) == kept
    assert quote_free_text(["-m", "prompt=a,b"]) == ["-m", "prompt=a,b"]     # a sweep over two prompts


def test_sample_py_takes_a_prompt_with_commas_and_an_apostrophe(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "in.png")
    prompt = "it's a red circle, moving left for ${price}"
    r = subprocess.run([sys.executable, "sample.py", "experiment=toy", f"image={tmp_path / 'in.png'}",
                        f"prompt={prompt}", "steps=2", f"out={tmp_path / 'out'}"], capture_output=True, text=True,
                       cwd=CONFIGS.parent, env={**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    (meta,) = (tmp_path / "out").glob("*.json")
    assert json.loads(meta.read_text())["prompt"] == prompt


def test_ctrl_c_in_an_entry_is_one_line_and_status_130(capsys, monkeypatch):
    """sample.py / evaluate.py / a script stopped with Ctrl-C: one line, exit status 130, no KeyboardInterrupt
    traceback through the UNet (HYDRA_FULL_ERROR=1 keeps Python's)."""
    from i2v.cli.config import run_entry

    def pressed(cfg):
        raise KeyboardInterrupt

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        try:
            run_entry(pressed, None)
        except KeyboardInterrupt:        # (let through, it would stop the whole test session)
            pytest.fail("Ctrl-C went through run_entry as a KeyboardInterrupt")
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted (Ctrl-C); the files written before it are complete"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(KeyboardInterrupt):
        run_entry(pressed, None)
