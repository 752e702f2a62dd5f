"""``sample(cfg)`` behind ``python sample.py`` and ``generate_videos`` used by evaluation (paper §3.3, §4.5).

Each (image, prompt) is sampled by one :class:`i2v.pipeline.sampling.I2VPipeline` built once per run. Writes
``<name>.mp4``, ``<name>.gif`` (optional frames) and ``<name>.json`` with the settings, NFE, timing, the resolved
config and package versions -- atomically, never overwriting unless ``overwrite=true``.
"""
from __future__ import annotations

import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from i2v.pipeline.bundle import Bundle, load_bundle_for_sampling
from i2v.pipeline.items import is_batch, preflight, read_items  # read_items re-exported: sample.py's items
from i2v.pipeline.sampling import I2VPipeline, SamplingSettings, resolve_device
from i2v.utils.io import load_image, save_frames, save_gif, save_json, save_mp4


class BatchFailed(RuntimeError):
    """Some rows of a ``prompts=`` batch failed; the others were written. The message lists each failed row."""


def generate_videos(cfg: DictConfig, items: list[dict], out_dir, bundle: Optional[Bundle] = None) -> list[dict]:
    """Sample every item ``{image, prompt, seed, name}`` and write its files into ``out_dir``. Settings, ``out=``,
    the input images and the output names are all checked before the model loads."""
    settings = SamplingSettings.from_config(cfg.sampling)
    resize = settings.resize
    use_controlnet = bool(cfg.get("controlnet", {}).get("path"))
    if use_controlnet and resize == "fit":
        raise ValueError("sampling.resize=fit gives each image its own size; with a ControlNet use resize=crop and "
                         "set sampling.height/width")
    if use_controlnet and not cfg.controlnet.get("control"):
        raise ValueError("controlnet.path is set: also give controlnet.control=<folder of images or a video>")
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    side = (bundle.resolution if bundle is not None else None) or cfg.backbone.get("resolution")
    size = (settings.height or int(side), settings.width or int(side)) if side else None
    items = preflight(items, out_dir, lambda name: output_paths(cfg, out_dir, name),
                      overwrite=bool(cfg.get("overwrite", False)), size=size, resize=resize,
                      strict=not is_batch(cfg))
    if all("error" in it for it in items):   # a batch with no good row: say so before loading anything
        raise BatchFailed(f"all {len(items)} rows failed, nothing was sampled:\n  "
                          + "\n  ".join(it["error"] for it in items))
    device, dtype = resolve_device(cfg.get("device", "auto"), cfg.get("dtype", "auto"))
    bundle = bundle or load_bundle_for_sampling(cfg, device, dtype)
    res = settings.height or bundle.resolution, settings.width or bundle.resolution
    bundle.check_video_shape(*res, settings.num_frames)
    controlnet = control = None
    if use_controlnet:
        from i2v.diffusion.controlnet import VideoControlNet, load_control_frames

        text_tokens = None
        if bundle.content_enabled:  # the ControlNet sees the text tokens only, not the Content-Adapter's
            text_tokens = bundle.condition([""])["context"].shape[1] - bundle.image_tokens(None, 1).shape[1]
        controlnet = VideoControlNet.from_folder(str(cfg.controlnet.path),
                                                 conditioning_scale=float(cfg.controlnet.scale),
                                                 num_text_tokens=text_tokens, dtype=dtype, device=device)
        control = load_control_frames(str(cfg.controlnet.control), num_frames=settings.num_frames, size=res)[None]
        control = control.to(device, dtype)
    pipe = I2VPipeline(bundle, settings, controlnet=controlnet, control=control)
    extra = {"scheduler": settings.scheduler, "backbone": cfg.backbone.name, "adapter": cfg.adapter.name,
             "noised_kv": bundle.noised_kv, "i2v_min_t": bundle.active_i2v_min_t,
             "ckpt": cfg.get("ckpt"), "versions": package_versions(),
             "config": resolved_sampling_config(cfg)}
    writes = {"overwrite": bool(cfg.get("overwrite", False)), "gif": bool(cfg.get("write_gif", True)),
              "frames": bool(cfg.get("write_frames")), "paths": lambda name: output_paths(cfg, out_dir, name)}
    results, failed = [], []
    todo, done, start = sum("error" not in it for it in items), 0, time.perf_counter()
    for item in items:
        if "error" in item:
            failed.append(item["error"])
            continue
        done += 1
        try:
            r = _sample_item(pipe, item, out_dir, res, writes, extra)
            results.append(r)
            print(f"wrote {r['video']} ({r['nfe']} UNet calls, {r['seconds']:.1f} s) "
                  f"[{progress_note(done, todo, time.perf_counter() - start)}]", flush=True)
        except Exception as e:  # noqa: BLE001 - one bad row never stops a batch; all are reported below
            if not cfg.get("prompts"):
                raise
            failed.append(f"row {item['row']} ({item['name']}): {type(e).__name__}: {e}")
            print(f"row {item['row']} failed: {type(e).__name__}: {e}")
    if failed:
        raise BatchFailed(f"{len(failed)} of {len(items)} rows failed ({len(results)} written to {out_dir}):\n  "
                          + "\n  ".join(failed))
    return results


def progress_note(done: int, total: int, elapsed: float) -> str:
    """``video 3/8, ETA 0:00:42`` (ETA from the mean time per finished video)."""
    left = elapsed / done * (total - done) if done else 0.0
    return f"video {done}/{total}, ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"


def output_paths(cfg: DictConfig, out_dir: Path, name: str) -> list[Path]:
    """Every path one sample writes; all are checked before any is written."""
    stem = out_dir / name
    paths = [Path(f"{stem}.mp4"), Path(f"{stem}.json")]
    if cfg.get("write_gif", True):
        paths.append(Path(f"{stem}.gif"))
    if cfg.get("write_frames"):
        paths.append(out_dir / f"{name}_frames")
    return paths


def check_out_dir(out_dir: Path) -> None:
    """Create ``out=`` and prove it is writable before any model is loaded or sampled."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=out_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"out={out_dir} is not a writable folder ({e.strerror or e})") from None


def _sample_item(pipe: I2VPipeline, item: dict, out_dir: Path, res: tuple[int, int], writes: dict,
                 extra: dict) -> dict:
    s, bundle = pipe.settings, pipe.bundle
    overwrite = writes["overwrite"]
    stem = out_dir / item["name"]
    if stem.resolve().parent != out_dir.resolve():
        raise ValueError(f"output name {item['name']!r} leaves out={out_dir}")
    for path in writes["paths"](item["name"]):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    # fit (official): short side to min(height, width), sides at multiples of 64 (and of the model's multiple)
    image = load_image(item["image"], size=res, resize=s.resize, multiple=math.lcm(64, bundle.pixel_multiple))
    if tuple(image.shape[-2:]) != res:
        bundle.check_video_shape(*image.shape[-2:], s.num_frames)
    t_start = time.perf_counter()
    out = pipe(image, item["prompt"], seed=item["seed"], progress=True)
    seconds = time.perf_counter() - t_start
    meta = {"prompt": item["prompt"], "image": item["image"], "seed": item["seed"], "steps": s.steps,
            "t0": s.t0, "p": s.p, "guidance_scale": s.guidance_scale, "nfe": out.nfe,
            "num_frames": s.num_frames, "height": image.shape[-2], "width": image.shape[-1],
            "resize": s.resize, "seconds": round(seconds, 3), "scheduler": extra["scheduler"],
            "fsp": s.fsp.enabled, "backbone": extra["backbone"], "adapter": extra["adapter"],
            "noised_kv": extra["noised_kv"], "i2v_min_t": extra["i2v_min_t"], "ckpt": extra["ckpt"],
            "versions": extra["versions"], "config": extra["config"]}
    save_mp4(out.video, Path(f"{stem}.mp4"), fps=s.fps, overwrite=overwrite)
    if writes["gif"]:
        save_gif(out.video, Path(f"{stem}.gif"), fps=s.fps, overwrite=overwrite)
    if writes["frames"]:
        save_frames(out.video, out_dir / f"{item['name']}_frames", overwrite=overwrite)
    save_json(meta, Path(f"{stem}.json"), overwrite=overwrite, allow_nan=False)
    return {"video": str(Path(f"{stem}.mp4")), "image": item["image"], "name": item["name"],
            "prompt": item["prompt"], "nfe": out.nfe, "seconds": seconds, "tensor": out.video}


def resolved_sampling_config(cfg: DictConfig) -> dict:
    """The resolved config minus the training-only groups an experiment file may carry (data, trainer, logger)."""
    keep = [k for k in cfg if k not in ("data", "trainer", "logger", "stage", "hydra")]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keep), resolve=True)


def package_versions() -> dict:
    import diffusers
    import transformers

    import i2v

    return {"i2v": i2v.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def sample(cfg: DictConfig) -> list[dict]:
    """``python sample.py``: every video, its .json and (by default) this run's log land in one folder, ``out=``."""
    start = time.perf_counter()
    out_dir = Path(str(cfg.out))
    results = generate_videos(cfg, read_items(cfg), out_dir)
    took = time.perf_counter() - start
    print(f"{len(results)} video(s) with their .json settings in {out_dir}/ ({took:.1f} s wall, model load included)")
    return results
