"""Score a set of videos: build the metrics from config, pair videos with input images, write a per-video CSV and
a summary JSON (mean, sample std, n per metric + every metric's settings)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from i2v.metrics.video_io import find_image, find_videos, read_image, read_video

# Column -> (display name, higher is better). The first four are the paper's table columns.
COLUMNS = {
    "dover_vqa": ("DoverVQA", True), "clip_temp": ("CLIPTemp", True), "flow_score": ("FlowScore", True),
    "warping_error": ("WarpingError", False), "warping_error_raw": ("WarpingError raw", False),
    "warping_error_x255sq": ("WarpingError ×255²", False), "warping_error_x1e4": ("WarpingError ×1e4", False),
    "warping_visible": ("non-occluded fraction", True),
    "dover_aesthetic_raw": ("DOVER aesthetic raw", True),
    "toy_identity": ("toy identity", True), "toy_bg_err": ("toy bg err", False), "toy_obj_err": ("toy obj err", False),
    "toy_step_px": ("toy motion px/frame", True), "toy_flicker": ("toy flicker", False),
    "toy_lost_frac": ("toy lost frac", False),
}
TOY_KEYS = ("identity", "bg_err", "obj_err", "step_px", "flicker", "lost_frac")


class ToyScore(torch.nn.Module):
    """The toy world's ground-truth-free metrics (i2v.metrics.toy, colours estimated from the input image) behind the
    ``score(video, image) -> {name: (1,)}`` interface of the other metrics; no weights needed."""

    def score(self, video: torch.Tensor, image: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        from i2v.metrics.toy import ToyMetrics

        m = ToyMetrics()
        m.update(video.float().cpu(), None if image is None else image.float().cpu())
        out = m.compute()
        return {f"toy_{k}": out[k].reshape(1).float() for k in TOY_KEYS}

    def settings(self) -> dict:
        return {"colours": "estimated from the input image (frame 1)"}


def _get(section, key, default=None):
    return section.get(key, default) if section is not None else default


def build_metrics(mcfg: DictConfig, device: str | torch.device = "cpu") -> tuple[dict, dict[str, str]]:
    """``({name: metric}, {name: reason})`` from the ``metrics`` config section. A missing CLIP/RAFT file raises
    (clear message) unless ``metrics.missing=skip``; DOVER without checkout/weights is always skipped ("n/a")."""
    from i2v.metrics.clip_temp import CLIPTemp, build_clip_encoder
    from i2v.metrics.dover import DoverVQA, build_dover_scorer
    from i2v.metrics.flow import FlowScore, RaftConfig, RaftFlow, WarpingError

    mcfg = mcfg if isinstance(mcfg, DictConfig) else OmegaConf.create(mcfg)
    on_missing = _get(mcfg, "missing", "error")
    metrics, unavailable, missing = {}, {}, []

    def guarded(name, build):
        try:
            metrics[name] = build()
        except FileNotFoundError as e:
            if on_missing == "skip":
                unavailable[name] = str(e)
            else:
                missing.append(f"{name}: {e}")

    t = _get(mcfg, "toy")
    if t is not None and _get(t, "enabled", False):
        metrics["toy"] = ToyScore()

    c = _get(mcfg, "clip_temp")
    if c is not None and _get(c, "enabled", True):
        def clip():
            enc = build_clip_encoder(c.kind, c.weights, _get(c, "model_name", "ViT-B-32"),
                                     _get(c, "quick_gelu", True), device)
            return CLIPTemp(enc, mode=c.mode, preprocess=c.preprocess, include_first_frame=c.include_first_frame,
                            resize_image_to_video=_get(c, "resize_image_to_video", True), size=_get(c, "size", 224))
        guarded("clip_temp", clip)

    f = _get(mcfg, "flow")
    fs, we = _get(mcfg, "flow_score"), _get(mcfg, "warping_error")
    want_fs = fs is not None and _get(fs, "enabled", True)
    want_we = we is not None and _get(we, "enabled", True)
    if f is not None and _get(f, "enabled", True) and (want_fs or want_we):
        raft: list = []

        def flow_fn():
            if not raft:
                raft.append(RaftFlow(RaftConfig(weights=f.weights, num_flow_updates=f.num_flow_updates,
                                                batch_size=f.batch_size, min_size=_get(f, "min_size", 128),
                                                allow_random=_get(f, "allow_random", False))).to(device))
            return raft[0]
        if want_fs:
            guarded("flow_score", lambda: FlowScore(flow_fn(), unpad=fs.unpad))
        if want_we:
            guarded("warping_error", lambda: WarpingError(flow_fn(), raft_input=we.raft_input, resize=we.resize,
                                                          unpad=we.unpad, scale=we.scale))

    d = _get(mcfg, "dover")
    if d is not None and _get(d, "enabled", True):
        scorer, reason = build_dover_scorer(d.repo_dir, d.weights, device, _get(d, "seed", 0),
                                            _get(d, "branches", "technical"))
        if reason:
            print(reason)
            unavailable["dover_vqa"] = reason
        metrics["dover_vqa"] = DoverVQA(scorer, reason)
    if missing:  # every missing weights file at once, not one per attempt
        raise FileNotFoundError("metrics need local weights files (set them, or metrics.missing=skip, or switch the "
                                "metric off with metrics.<name>.enabled=false):\n  " + "\n  ".join(missing))
    for m in metrics.values():
        m.to(device)
    return metrics, unavailable


def collect_items(videos: str, images: Optional[str] = None, manifest: Optional[str] = None) -> list[dict]:
    """Pair each video in ``videos`` with its input image: by name through a manifest (``name``/``image``
    [/``video``/``prompt``]), else the same-stem image in ``images``, else beside the video, else the image (and
    prompt) that sample.py recorded in the video's ``.json``. Image may be None."""
    from i2v.metrics.mjhq import read_manifest

    found = find_videos(videos) if videos else {}
    if manifest:
        items = []
        for it in read_manifest(manifest):
            video = it.get("video") or found.get(it["name"])
            if video is None:
                print(f"note: no video for manifest item {it['name']!r} in {videos}")
                continue
            items.append({"name": it["name"], "video": str(video), "image": it["image"], "prompt": it.get("prompt")})
        return items
    items = []
    for stem, path in found.items():
        img = find_image(images, stem) if images else find_image(path.parent, stem)
        record = _sample_record(path) if img is None else {}
        if img is None and record.get("image"):
            if Path(record["image"]).is_file():
                img = record["image"]
            else:
                print(f"note: {stem}: the input image its .json names is gone ({record['image']})")
        items.append({"name": stem, "video": str(path), "image": str(img) if img else None,
                      "prompt": record.get("prompt")})
    return items


def _sample_record(video: Path) -> dict:
    """What sample.py wrote beside a video (``<stem>.json``: its input ``image``, its ``prompt``), or {}."""
    sidecar = video.with_suffix(".json") if video.is_file() else video.with_name(video.name + ".json")
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and "image" in record and "prompt" in record else {}


def _is_frame_strip(image_path: str, video: torch.Tensor) -> bool:
    """The same-stem image beside a video is its own frames side by side (``clipNNN.png`` of a toy run's samples),
    not the input image: as tall as one frame, as wide as all of them, and showing them (mean difference under 5%
    of the range: a lossy mp4 of the toy's strips differs by ~1%)."""
    from i2v.utils.io import image_size, read_strip

    (w, h), (f, _, fh, fw) = image_size(image_path), video.shape
    if (w, h) != (f * fw, fh) or f < 2:
        return False
    return bool((read_strip(image_path, f) - video.float()).abs().mean() < 0.1)


def _summary_stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    n = len(vals)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def score_items(items: list[dict], metrics: dict, out_dir: str | Path, device: str | torch.device = "cpu",
                max_frames: Optional[int] = None, unavailable: Optional[dict] = None,
                run: Optional[dict[str, Any]] = None) -> dict:
    """Score every item ``{name, video, image}``; writes ``per_video.csv`` and ``summary.json`` into ``out_dir``.
    Unreadable videos are skipped and listed; a metric that fails on one video leaves NaN there (noted)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for it in items:
        try:
            video = read_video(it["video"], max_frames)
            if it.get("image") and _is_frame_strip(it["image"], video):
                print(f"note: {it['image']} is the frames of {it['name']} side by side (a toy run's strip), not an "
                      f"input image: scored against the video's first frame")
                it = {**it, "image": None}
            image = read_image(it["image"], size=tuple(video.shape[-2:])) if it.get("image") else None
        except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
            skipped.append({"name": it["name"], "reason": str(e)})
            print(f"skip {it['name']}: {e}")
            continue
        v, img = video[None].to(device), (image[None].to(device) if image is not None else None)
        row: dict[str, Any] = {"name": it["name"], "video": it["video"], "image": it.get("image"),
                               "frames": video.shape[0], "height": video.shape[-2], "width": video.shape[-1]}
        notes = []
        for mname, metric in metrics.items():
            try:
                vals = metric.score(v, img)
                row.update({k: float(t[0]) for k, t in vals.items()})
            except ValueError as e:
                notes.append(f"{mname}: {e}")
        row["notes"] = "; ".join(notes)
        rows.append(row)
        shown = ", ".join(f"{k}={row[k]:.4g}" for k in COLUMNS if isinstance(row.get(k), float))
        print(f"{it['name']}: {shown}{' | ' + row['notes'] if notes else ''}")
    cols = ["name", "video", "image", "frames", "height", "width"]
    cols += [k for k in COLUMNS if any(k in r for r in rows)] + ["notes"]
    with open(out / "per_video.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    summary = {
        "n_videos": len(rows), "n_skipped": len(skipped), "skipped": skipped,
        "metrics": {k: _summary_stats([r.get(k, math.nan) for r in rows]) for k in cols if k in COLUMNS},
        "settings": {name: m.settings() for name, m in metrics.items()},
        "unavailable": dict(unavailable or {}),
        "run": run or {},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def format_summary(summary: dict) -> str:
    """A short human-readable block: one line per metric with mean ± std (n), or n/a."""
    lines = [f"videos: {summary['n_videos']} scored, {summary['n_skipped']} skipped"]
    for k, s in summary["metrics"].items():
        name = COLUMNS.get(k, (k,))[0]
        lines.append(f"  {name:22s} " + ("n/a" if s["mean"] is None else f"{s['mean']:.4f} ± {s['std']:.4f} "
                                                                          f"(n={s['n']})"))
    for k, why in summary.get("unavailable", {}).items():
        lines.append(f"  {k}: {why}")
    return "\n".join(lines)
