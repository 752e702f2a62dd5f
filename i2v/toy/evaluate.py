"""Sample held-out synthetic clips with a bundle and score them against the ground truth (toy world).

Used after ``python train.py experiment=toy`` (``after_train.sample/evaluate``) and by the toy ablation tables:
each held-out clip gives its first frame (the input image) and caption (the prompt); the sampled video is written
as mp4/gif and scored with :class:`i2v.metrics.toy.ToyMetrics` (identity to frame 1, motion, stability), plus the
same scores for the ground-truth clips as a reference row.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from i2v.data.synthetic import BACKGROUND_DEFAULTS, SyntheticVideos
from i2v.utils.io import save_gif, save_json, save_mp4, save_strip
from i2v.metrics.toy import ToyMetrics
from i2v.pipeline.bundle import Bundle
from i2v.pipeline.sampling import I2VPipeline, SamplingSettings
from i2v.toy.oracle import ORACLES, check_oracle_steps, sampling_reference

EVAL_SEED = 10_000  # held-out scenes: training uses SyntheticVideos(seed=0)


def scene_options(backbone_cfg) -> dict:
    """``SyntheticVideos`` options of the world a toy base was pretrained on (``backbone.scenes`` in
    configs/backbone/toy.yaml: the background pattern), so held-out clips look like its training clips."""
    scenes = backbone_cfg.get("scenes") if backbone_cfg is not None else None
    if not scenes:
        return {}
    out = {k: type(d)(scenes.get(k, d)) for k, d in BACKGROUND_DEFAULTS.items()}
    if scenes.get("radius_range") is not None:
        out["radius_range"] = tuple(float(r) for r in scenes.get("radius_range"))
    return out


def held_out_scenes(n_items: int, num_frames: int, size, scenes: dict | None = None) -> SyntheticVideos:
    """The held-out synthetic clips (evaluation seed); ``scenes``: :func:`scene_options` of the backbone."""
    return SyntheticVideos(n_items=n_items, num_frames=num_frames, size=size, seed=EVAL_SEED, **(scenes or {}))


def _plain(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        v = float(v)
        out[k] = None if math.isnan(v) else round(v, 5)
    return out


HEADLINE = ("identity", "bg_err", "obj_err", "step_px", "direction_agree", "flicker", "lost_frac")


def headline(metrics: dict) -> str:
    """The metrics a reader looks at first, one short line (metrics.json holds all of them and their counts)."""
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in HEADLINE if metrics.get(k) is not None)


@torch.no_grad()
def score_pipeline(pipe: I2VPipeline, n_videos: int, num_frames: int, size: int, out_dir: Path | None = None,
                   seed: int = 0, overwrite: bool = False, write_videos: bool = True, scenes: dict | None = None,
                   oracle: str | None = None, oracle_steps=None) -> dict:
    """Sample ``n_videos`` held-out clips (``num_frames`` ground-truth frames each) with ``pipe``; returns
    {"model": metrics, "ground_truth": metrics, "videos": [...]}.

    With ``out_dir``: ``clipNNN.png`` (the sampled frames side by side, lossless; the contact sheets of
    ``scripts/make_toy_tables.py`` are built from them) and ``clipNNN_gt.png`` (the ground-truth clip) for every
    clip, plus ``clipNNN.mp4|gif`` when ``write_videos``. ``scenes``: :func:`scene_options` of the backbone.
    ``oracle``: sample through :class:`i2v.toy.oracle.FrameOneOracle` in that mode (``static``: a perfect reader of
    frame 1's unchanged content on this base; ``ground_truth``), a diagnostic bound, not a model; or
    ``first_frame_attention`` / ``noised_first_frame_kv``: zero-shot references that read frame 1 noised to t
    (:class:`~i2v.toy.oracle.FirstFrameAttention`, :class:`~i2v.toy.oracle.NoisedFirstFrameKV`). ``oracle_steps``:
    ``[lo, hi]``, the frame-1 oracle at those sampler timesteps only (None: every step)."""
    if pipe.settings.num_frames != num_frames:
        raise ValueError(f"the pipeline samples {pipe.settings.num_frames} frames but the ground truth has "
                         f"{num_frames}: score_pipeline needs one clip length")
    data = held_out_scenes(n_videos, num_frames, size, scenes)
    model_m, gt_m = ToyMetrics(), ToyMetrics()
    written = []
    denoiser, wrapper = pipe.denoiser, None
    if oracle is not None and pipe.bundle.noised_kv:
        raise ValueError(f"toy_eval.oracle={oracle} wraps the network as trained; it does not combine with "
                         f"adapter.noised_kv (the file or the config asks for it)")
    if oracle_steps is not None and oracle is None:
        raise ValueError("toy_eval.oracle_steps windows the frame-1 oracle: set toy_eval.oracle=static|ground_truth "
                         "too (or leave oracle_steps null)")
    if oracle is not None:
        pipe.denoiser = wrapper = sampling_reference(oracle, denoiser, pipe.bundle.schedule, pipe.bundle.unet,
                                                     steps=oracle_steps)
    try:
        for i in tqdm(range(n_videos), desc="toy eval", leave=False):
            written += _score_clip(pipe, data[i], i, model_m, gt_m, out_dir, seed, overwrite, write_videos, wrapper)
    finally:
        pipe.denoiser = denoiser
    return {"model": _plain(model_m.compute()), "ground_truth": _plain(gt_m.compute()), "videos": written}


def _score_clip(pipe: I2VPipeline, item: dict, i: int, model_m: ToyMetrics, gt_m: ToyMetrics,
                out_dir: Path | None, seed: int, overwrite: bool, write_videos: bool, oracle=None) -> list[dict]:
    """Sample held-out clip ``i`` (``item``) with ``pipe``, add it to both metrics, write its files; the written
    videos' entries. ``oracle``: the pipeline's wrapper (:func:`~i2v.toy.oracle.sampling_reference`), given this
    clip's latents."""
    image, prompt = item["video"][0], item["text"]
    if oracle is not None:
        param = next(pipe.bundle.unet.parameters())
        oracle.set_clip(pipe.bundle.encode_video(item["video"][None].to(param.device, param.dtype)))
    out = pipe(image, prompt, seed=seed * 1000 + i)
    video = out.video.cpu()
    model_m.update(video[None], image[None], [item["meta"]])
    gt_m.update(item["video"][None], image[None], [item["meta"]])
    if out_dir is None:
        return []
    stem = Path(out_dir) / f"clip{i:03d}"
    save_strip(video, stem.with_suffix(".png"), overwrite=overwrite)
    save_strip(item["video"], stem.with_name(stem.name + "_gt.png"), overwrite=overwrite)
    if not write_videos:
        return []
    save_mp4(video, stem.with_suffix(".mp4"), fps=pipe.settings.fps, overwrite=overwrite)
    save_gif(video, stem.with_suffix(".gif"), fps=pipe.settings.fps, overwrite=overwrite)
    return [{"video": str(stem.with_suffix(".mp4")), "prompt": prompt, "nfe": out.nfe}]


def sampling_record(sampling) -> dict:
    """What a toy ``metrics.json`` records of the sampler: t0, p, steps, guidance (``cfg``), the prior's blur
    (``fsp_blur``: [kernel_size, sigma]) and its noise's mean (``fsp_noise_dc``); scripts/make_toy_tables.py will
    not average runs that differ in either."""
    return {"t0": float(sampling.t0), "p": float(sampling.p), "steps": int(sampling.steps),
            "cfg": float(sampling.guidance_scale),
            "fsp_blur": [int(sampling.fsp.kernel_size), float(sampling.fsp.sigma)],
            "fsp_noise_dc": str(sampling.fsp.get("noise_dc", "keep"))}


def sample_and_score(cfg: DictConfig, bundle: Bundle, out_dir: Path) -> dict:
    """The after-training step of ``train.py``: writes ``samples/*.mp4|gif`` and ``metrics.json`` in the run dir."""
    if bundle.name != "toy":
        raise ValueError("after_train.sample/evaluate score against synthetic ground truth (toy world only); "
                         "for sd15/sdxl use sample.py and evaluate.py")
    # scored at the clip length it trained on (experiment=toy sets sampling.num_frames for sample.py, where there is
    # no data.num_frames; a run with data.num_frames=16 samples and scores 16 frames)
    settings = dataclasses.replace(SamplingSettings.from_config(cfg.sampling), num_frames=int(cfg.data.num_frames))
    pipe = I2VPipeline(bundle, settings)
    res = score_pipeline(pipe, int(cfg.after_train.n_videos), int(cfg.data.num_frames), int(cfg.data.size),
                         out_dir / "samples", seed=int(cfg.seed), overwrite=bool(cfg.overwrite),
                         scenes=scene_options(cfg.backbone))
    summary = {"adapter": cfg.adapter.name, "noised_kv": bundle.noised_kv, "i2v_min_t": bundle.active_i2v_min_t,
               "seed": int(cfg.seed),
               **sampling_record(cfg.sampling),
               "n_videos": int(cfg.after_train.n_videos), "frames": int(cfg.data.num_frames), **res}
    save_json(summary, out_dir / "metrics.json", overwrite=bool(cfg.overwrite))
    print("toy metrics:", headline(res["model"]))
    return {"metrics": res["model"], "metrics_file": str(out_dir / "metrics.json")}


def evaluate_toy(cfg: DictConfig, out_dir: Path) -> dict:
    """``evaluate.py mode=toy``: sample held-out synthetic clips with ``ckpt`` at this run's (t0, p, seed) and score
    them against the ground truth; writes ``metrics.json`` (read by scripts/make_toy_tables.py)."""
    from i2v.pipeline.bundle import load_bundle_for_sampling   # ckpt= and lora= loaded

    if cfg.backbone.name != "toy":
        raise ValueError("mode=toy scores synthetic clips with the toy backbone (experiment=toy_table2)")
    settings = SamplingSettings.from_config(cfg.sampling)
    torch.manual_seed(int(cfg.seed))
    bundle = load_bundle_for_sampling(cfg, torch.device("cpu"), torch.float32)
    pipe = I2VPipeline(bundle, settings)
    toy_eval = cfg.get("toy_eval") or {}
    n_videos = int(toy_eval.get("n_videos", 8))
    oracle = toy_eval.get("oracle")
    steps = toy_eval.get("oracle_steps")
    steps = None if steps is None else list(check_oracle_steps(steps))
    frames = settings.num_frames
    res = score_pipeline(pipe, n_videos, frames, int(cfg.backbone.resolution), out_dir / "samples",
                         seed=int(cfg.seed), overwrite=bool(cfg.overwrite),
                         write_videos=bool(toy_eval.get("write_videos", False)),
                         scenes=scene_options(cfg.backbone), oracle=oracle, oracle_steps=steps)
    summary = {"table": cfg.get("table"), "adapter": cfg.adapter.name, "noised_kv": bundle.noised_kv,
               "i2v_min_t": bundle.active_i2v_min_t, "oracle": oracle, "oracle_steps": steps,
               "seed": int(cfg.seed), **sampling_record(cfg.sampling),
               "n_videos": n_videos, "frames": frames, **res}
    save_json(summary, out_dir / "metrics.json", overwrite=bool(cfg.overwrite))
    tag = "" if not oracle else f", frame-1 oracle={oracle}" if oracle in ORACLES else f", reference={oracle}"
    tag += f" at t {steps[0]:g}..{steps[1]:g}" if steps else ""
    print(f"toy metrics (t0={cfg.sampling.t0}, p={cfg.sampling.p}, seed={cfg.seed}{tag}): {headline(res['model'])}; "
          f"all in {out_dir / 'metrics.json'}")
    return summary
