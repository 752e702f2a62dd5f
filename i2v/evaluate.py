"""``evaluate(cfg)``: score videos on the paper's metrics (§4.1), optionally generating them first (§4.3).

Modes (``configs/evaluate.yaml``):
- ``score``: the videos in ``cfg.videos`` (mp4/gif/frame folders), paired with input images by name
  (``cfg.manifest``, else same-stem files in ``cfg.images`` or beside the videos).
- ``generate``: take the evaluation pairs (``eval_set.manifest``, or the 50-pair MJHQ-30K selection), sample them
  with ``i2v.sampling.generate_videos`` (one :class:`i2v.pipeline.sampling.I2VPipeline`) using the config's ``sampling`` node, then score.
Writes ``per_video.csv``, ``summary.json`` (with the run's table/row keys) and ``resolved_config.yaml`` to
``cfg.out_dir``; ``scripts/make_tables.py`` collects them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from i2v.pipeline.sampling import resolve_device


def _choices() -> dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return {"choices": dict(hc.runtime.choices), "overrides": list(hc.overrides.task)}
    except (ValueError, ImportError):  # called outside a Hydra app (tests, notebooks)
        return {}


def run_info(cfg: DictConfig) -> dict[str, Any]:
    """The keys that identify a row of Tables 1-3, plus the Hydra choices/overrides of this job."""
    sel = lambda key: OmegaConf.select(cfg, key, default=None)  # noqa: E731
    info = {"table": sel("table"), "mode": sel("mode"), "t0": sel("sampling.t0"), "p": sel("sampling.p"),
            "seed": sel("seed"), "adapter": sel("adapter.name"), "backbone": sel("backbone.name"), "ckpt": sel("ckpt"),
            "steps": sel("sampling.steps"), "guidance": sel("sampling.guidance_scale"),
            "frames": sel("sampling.num_frames"), "fsp_row": sel("fsp_row")}
    info.update(_choices())
    return info


NO_EVAL_SET = ("mode=generate needs eval_set.manifest=<image/prompt manifest> or eval_set.mjhq.meta=<meta_data.json> "
               "with eval_set.mjhq.images=<folder>")


def eval_set_items(cfg: DictConfig, out_dir: Path) -> list[dict]:
    """Generation inputs ``[{image, prompt, seed, name}]`` from ``eval_set``."""
    from i2v.metrics.mjhq import mjhq_items, read_manifest

    es = cfg.eval_set
    if es.manifest:
        items = read_manifest(es.manifest)
    elif es.mjhq.meta:
        m = es.mjhq
        items = mjhq_items(m.meta, m.images, m.manifest or str(out_dir / "mjhq50.json"), m.per_category, m.seed,
                           m.stratified, m.n)
    else:
        raise ValueError(NO_EVAL_SET)
    missing = [it["name"] for it in items if not it.get("prompt")]
    if missing:
        raise ValueError(f"eval set items without a prompt: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    from i2v.pipeline.items import as_seed

    seed = lambda it: as_seed(it["seed"]) if it.get("seed") not in (None, "") else as_seed(cfg.seed)  # noqa: E731
    return [{"image": it["image"], "prompt": it["prompt"], "seed": seed(it), "name": it["name"]} for it in items]


def generate(cfg: DictConfig, items: list[dict], out_dir: Path) -> list[dict]:
    """Sample every item with the configured model; returns ``[{name, video, image, prompt}]``."""
    try:
        from i2v.sampling import generate_videos
    except ImportError as e:
        raise ImportError(f"mode=generate needs i2v.sampling.generate_videos (the sampler), which cannot be "
                          f"imported: {e}. Generate the videos with sample.py and use mode=score instead.") from e
    produced = generate_videos(cfg, items, out_dir)
    prompts = {it["name"]: it["prompt"] for it in items}
    out = []
    for r in produced:
        if "video" not in r or "name" not in r:
            raise ValueError(f"generate_videos returned an item without 'video'/'name': {r}")
        out.append({"name": r["name"], "video": str(r["video"]), "image": str(r.get("image") or ""),
                    "prompt": prompts.get(r["name"])})
    return out


def _save_config(cfg: DictConfig, out_dir: Path) -> None:
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception as e:  # an unresolvable interpolation (e.g. ${hydra:...} outside an app): keep it unresolved
        text = f"# not resolved: {e}\n" + OmegaConf.to_yaml(cfg, resolve=False)
    (out_dir / "resolved_config.yaml").write_text(text)


# What each mode writes into out_dir (checked before any model loads: an earlier run's results are never replaced
# unless overwrite=true).
RESULTS = {"toy": ("metrics.json", "samples/clip000.png"), "score": ("summary.json", "per_video.csv"),
           "generate": ("summary.json", "per_video.csv")}


def check_results_free(out_dir: Path, mode: str, overwrite: bool) -> None:
    """Refuse (FileExistsError) an ``out_dir`` that already holds this mode's results, unless ``overwrite``."""
    taken = [out_dir / name for name in RESULTS.get(mode, ()) if (out_dir / name).exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{taken[0]} exists (an earlier evaluation in out_dir={out_dir}); choose another "
                              f"out_dir, or pass overwrite=true to replace it")


def evaluate(cfg: DictConfig) -> dict:
    """Run one evaluation job (see module docstring); returns the summary dict also written to summary.json."""
    from i2v.metrics.scoring import build_metrics, collect_items, format_summary, score_items

    out_dir = Path(str(cfg.out_dir))
    check_results_free(out_dir, str(cfg.mode), bool(cfg.get("overwrite", False)))
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "toy":
        from i2v.toy.evaluate import evaluate_toy

        return evaluate_toy(cfg, out_dir)
    device = str(resolve_device(OmegaConf.select(cfg, "device", default="auto"))[0])
    torch.manual_seed(int(OmegaConf.select(cfg, "seed", default=0) or 0))
    # before generating: every missing weights file of this run (the metrics', the sampler's) said at once
    problems = []
    if cfg.mode == "generate":
        from i2v.pipeline.bundle import sampling_input_problems

        problems = sampling_input_problems(cfg)
        if not cfg.eval_set.manifest and not cfg.eval_set.mjhq.meta:
            problems.append(NO_EVAL_SET)
    try:
        metrics, unavailable = build_metrics(cfg.metrics, device)
    except FileNotFoundError as e:
        problems.insert(0, str(e))
    if problems:
        raise FileNotFoundError("\n".join(problems))
    if not metrics:
        raise ValueError("no metric enabled (metrics.*.enabled)")
    if cfg.mode == "generate":
        items = eval_set_items(cfg, out_dir)
        if cfg.max_items:
            items = items[: int(cfg.max_items)]
        items = generate(cfg, items, out_dir / "videos")
    elif cfg.mode == "score":
        if not cfg.videos and not cfg.manifest:
            raise ValueError("mode=score needs videos=<folder> (and images=<folder> or manifest=<file>)")
        items = collect_items(cfg.videos, cfg.images, cfg.manifest)
        if cfg.max_items:
            items = items[: int(cfg.max_items)]
    else:
        raise ValueError(f"mode must be 'score', 'generate' or 'toy', got {cfg.mode!r}")
    if not items:
        raise ValueError(f"nothing to score (videos={cfg.videos}, manifest={cfg.manifest})")
    _save_config(cfg, out_dir)
    summary = score_items(items, metrics, out_dir, device, cfg.max_frames, unavailable, run_info(cfg))
    print(format_summary(summary))
    print(f"wrote {out_dir / 'summary.json'} and {out_dir / 'per_video.csv'}")
    return summary
