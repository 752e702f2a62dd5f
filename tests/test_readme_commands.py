"""Every ``python train.py|sample.py|evaluate.py|app.py ...`` command in README.md and in the toy world's record
(docs/toy_world.md) composes with Hydra exactly as written (placeholder paths swapped for temp files), and the
README's toy-world ones run for real with tiny step counts."""
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from i2v.cli.config import CONFIGS, expand_sampling_aliases, quote_numeric_choices

README = Path(__file__).resolve().parents[1] / "README.md"
TOY_RECORD = README.parent / "docs" / "toy_world.md"
ENTRIES = {"train.py": "train", "sample.py": "sample", "evaluate.py": "evaluate", "app.py": "app"}
COMMAND = re.compile(r"python (train|sample|evaluate|app)\.py\b")


def readme_commands(text: str) -> list[str]:
    """Commands in fenced blocks (``\\`` continuations joined) and in inline code spans (line breaks joined)."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            m = COMMAND.search(line)
            if m:
                found.append(line[m.start():].split(" && ")[0].strip())
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", outside):
        span = " ".join(span.split())
        if COMMAND.match(span):
            found.append(span)
    return found


def split_command(command: str, tmp: Path) -> tuple[str, bool, list[str]]:
    """(config name, multirun?, overrides); a placeholder value (``...``, ``<run>``) becomes a temp file."""
    args = shlex.split(command)[1:]
    name = ENTRIES[args.pop(0)]
    multirun = "-m" in args
    overrides = []
    for i, arg in enumerate(a for a in args if a != "-m"):
        key, _, value = arg.partition("=")
        if "..." in value or "<" in value:
            path = tmp / f"placeholder{i}{Path(value).suffix}"
            path.touch()
            arg = f"{key}={path}"
        overrides.append(arg)
    overrides = quote_numeric_choices(overrides)
    if name in ("sample", "evaluate", "app"):   # as sample.py / evaluate.py / app.py do before Hydra parses the command line
        overrides = expand_sampling_aliases(overrides)
    return name, multirun, overrides


def jobs(name: str, overrides: list[str], multirun: bool) -> list[list[str]]:
    """A multirun's jobs as the basic sweeper expands them: the experiment's ``hydra.sweeper.params`` plus the
    command line's sweeps (which win for the same key); else the command itself."""
    if not multirun:
        return [overrides]
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    params = _compose(name, fixed).hydra.sweeper.params or {}
    given = {o.key_or_group for o in parser.parse_overrides(overrides)}
    swept = [f"{k}={v}" for k, v in params.items() if k not in given]
    batches = BasicSweeper.split_arguments(parser.parse_overrides(swept + overrides), max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def _compose(name: str, overrides: list[str], hydra_node: bool = True):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=hydra_node)


COMMANDS = readme_commands(README.read_text())
RECORD_COMMANDS = readme_commands(TOY_RECORD.read_text())


def test_the_readme_has_the_headline_commands():
    assert "python train.py backbone=sdxl stage=2 data.dataset.root=/data/videos" in COMMANDS
    assert "python train.py experiment=toy" in COMMANDS
    assert any("hydra/launcher=slurm" in c and "trainer.num_nodes=2" in c for c in COMMANDS)
    assert any(c.startswith("python evaluate.py -m experiment=table1") for c in COMMANDS)
    assert len(jobs("evaluate", ["experiment=table2"], multirun=True)) == 10     # the sweeper params expand too
    assert len(COMMANDS) >= 12


def test_the_toy_record_has_commands():
    assert len(RECORD_COMMANDS) >= 4 and all("experiment=toy" in c for c in RECORD_COMMANDS)


@pytest.mark.parametrize("command", COMMANDS + RECORD_COMMANDS)
def test_readme_command_composes(command, tmp_path):
    name, multirun, overrides = split_command(command, tmp_path)
    for job in jobs(name, overrides, multirun):
        cfg = _compose(name, job)
        # everything but Hydra's runtime interpolations resolves (missing ??? values only in data nodes)
        for key in cfg:
            if key not in ("hydra", "out_dir", "data", "eval_set", "out", "trainer", "logger"):
                OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        if "hydra/launcher=slurm" in job:
            launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
            assert launcher["_target_"].endswith("SlurmLauncher")
            assert launcher["nodes"] == OmegaConf.select(cfg, "trainer.num_nodes", default=1)
            assert launcher["tasks_per_node"] == launcher["gpus_per_node"]
        if name == "train":
            from i2v.train import check_stage

            check_stage(cfg)
            for arg in job:      # the user's data keys land where they wrote them
                key, _, value = arg.partition("=")
                if key.startswith("data.") and key.count(".") >= 1:
                    assert str(OmegaConf.select(cfg, key)) == value.strip("'\"")


def test_readme_toy_commands_run(tmp_path):
    """Every ``train.py experiment=toy ...`` and ``sample.py experiment=toy ...`` of the README as written, each in its
    own run folder, with tiny step counts (the commands' own ``trainer.max_steps``/``val_check_interval`` replaced)."""
    from i2v.data.synthetic import SyntheticVideos
    from i2v.utils.io import save_frames, save_mp4
    from i2v.sampling import sample
    from i2v.train import train

    toy = sorted({c for c in COMMANDS if "experiment=toy " in c + " " and " -m " not in c})
    assert {c.split()[1] for c in toy} == {"train.py", "sample.py"}
    save_frames(SyntheticVideos(1, num_frames=1, size=32, seed=7, texture=0.5, texture_cells=16)[0]["video"],
                tmp_path / "toy_input")
    videos = tmp_path / "videos"               # data.dataset.root=<videos>: a folder of clips with .txt captions
    for j, item in enumerate(SyntheticVideos(6, num_frames=8, size=48, seed=5)):
        save_mp4(item["video"], videos / f"clip{j}.mp4")
        (videos / f"clip{j}.txt").write_text(item["text"])
    tiny = {"train": ["trainer.max_steps=2", "after_train.n_videos=1", "sampling.steps=2", "logger=csv",
                      "data.num_workers=0"],
            "sample": ["sampling.steps=2", f"out={tmp_path / 'samples'}"]}
    for i, command in enumerate(toy):
        name, _, overrides = split_command(command.replace("toy_input/", f"{tmp_path}/toy_input/"), tmp_path)
        run = tmp_path / f"run{i}"
        overrides = [o for o in overrides if not o.startswith(("trainer.max_steps=", "trainer.val_check_interval="))]
        overrides = [f"data.dataset.root={videos}" if o.startswith("data.dataset.root=") else o for o in overrides]
        extra = tiny[name] + ([f"out_dir={run}"] if name == "train" else [])
        cfg = _compose(name, overrides + extra, hydra_node=False)
        if name == "train":
            assert train(cfg)["steps"] == 2 and (run / "metrics.json").is_file()
        else:
            assert Path(sample(cfg)[0]["video"]).is_file()
