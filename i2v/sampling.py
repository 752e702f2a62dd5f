"""``sample(cfg)`` behind ``python sample.py`` and ``generate_videos`` used by evaluation (paper §3.3, §4.5).

For each (image, prompt): frame 1 = the encoded input image, kept exactly clean; frames 2..F start from the Frame
Similarity Prior (or pure noise with ``fsp.enabled=false``) and are denoised with classifier-free guidance. Writes
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

from i2v.batch_items import preflight, read_items  # read_items re-exported: sample.py's items
from i2v.bundle import Bundle, build_bundle
from i2v.io import RESIZE_MODES, load_image, save_frames, save_gif, save_json, save_mp4


class BatchFailed(RuntimeError):
    """Some rows of a ``prompts=`` batch failed; the others were written. The message lists each failed row."""


def check_sampling_args(sampling: DictConfig) -> None:
    """One clear error for out-of-range settings of the sampling config (``cfg.sampling``)."""
    for key in ("t0", "p"):
        if sampling.get(key) is None:
            raise ValueError(f"sampling.{key} is null (experiment=table2: fsp_row must be 0..9)")
    for key in ("t0", "p", "guidance_scale"):
        if not math.isfinite(float(sampling[key])):
            raise ValueError(f"sampling.{key} must be a finite number, got {sampling[key]}")
    if int(sampling.get("fps", 8)) < 1:
        raise ValueError(f"sampling.fps must be >= 1, got {sampling.get('fps')}")
    if not (0.0 < float(sampling.t0) <= 1.0):
        raise ValueError(f"sampling.t0 must lie in (0, 1], got {sampling.t0}")
    if not (0.0 <= float(sampling.p) <= 1.0):
        raise ValueError(f"sampling.p must lie in [0, 1], got {sampling.p}")
    if int(sampling.steps) < 1:
        raise ValueError(f"sampling.steps must be >= 1, got {sampling.steps}")
    if int(sampling.num_frames) < 2:
        raise ValueError(f"sampling.num_frames must be >= 2 (frame 1 is the input image), got {sampling.num_frames}")


def resolve_device(cfg: DictConfig) -> tuple[torch.device, torch.dtype]:
    dev = cfg.get("device", "auto")
    dev = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else ("cpu" if dev == "auto" else dev))
    dt = cfg.get("dtype", "auto")
    if dt == "auto":
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, str(dt))
    return dev, dtype


def load_bundle_for_sampling(cfg: DictConfig, device, dtype) -> Bundle:
    from i2v.checkpoints.adapter_io import load_adapter

    bundle = build_bundle(cfg.backbone, cfg.adapter, device="cpu", dtype=torch.float32, for_training=False)
    ckpt = cfg.get("ckpt")
    if cfg.adapter.i2v:
        if not ckpt:
            raise ValueError(f"adapter={cfg.adapter.name} uses the I2V-Adapter: give ckpt=<adapter.safetensors>")
        load_adapter(bundle.unet, str(ckpt), backbone=cfg.backbone.name)
    for spec in cfg.get("lora") or []:
        from i2v.checkpoints.lora import merge_lora

        merge_lora(bundle.unet, str(spec["path"]), scale=float(spec.get("scale", 1.0)), text_encoder=bundle.text)
    return bundle.to(device=device, dtype=dtype)


def color_match_settings(sampling: DictConfig) -> Optional[dict]:
    """``sampling.post.color_match`` as keyword arguments of :func:`i2v.diffusion.color.color_match`, or ``None``
    when off. Accepts ``{enabled, reference, channels}`` or a plain bool (reference ``input``, channels ``ab``)."""
    spec = (sampling.get("post") or {}).get("color_match")
    if not isinstance(spec, (dict, DictConfig)):
        return {"reference": "input", "channels": "ab"} if spec else None
    if not spec.get("enabled", False):
        return None
    return {"reference": str(spec.get("reference", "input")), "channels": str(spec.get("channels", "ab"))}


@torch.no_grad()
def generate_one(bundle: Bundle, sampling: DictConfig, image: torch.Tensor, prompt: str, seed: int,
                 controlnet=None, control=None, progress: bool = True, callback=None) -> dict:
    """One video with the settings of ``sampling`` (``cfg.sampling``: steps, guidance_scale, t0, p, num_frames, fsp,
    ...). ``image`` (3, H, W) in [-1, 1]. ``callback(i, t, latents)`` runs after every sampler step (the web demo's
    progress bar). Returns {"video": (F, 3, H, W), "latents", "nfe", ...}."""
    from i2v.diffusion.guidance import negative_prompt
    from i2v.diffusion.sampler import sample_video
    from i2v.diffusion.schedule import make_scheduler

    dev = next(bundle.unet.parameters()).device
    dtype = next(bundle.unet.parameters()).dtype
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    img = image[None].to(dev, dtype)
    first = bundle.encode_video(img[:, None], generator=g)[:, :, 0]              # (1, C, h, w)
    hw = tuple(image.shape[-2:])
    cond = bundle.condition([prompt], img, hw=hw)
    uncond = bundle.condition([negative_prompt(sampling.get("negative_prompt"))], None, hw=hw)
    scheduler = make_scheduler(str(sampling.scheduler), bundle.schedule)
    fsp = sampling.fsp
    res = sample_video(bundle.unet, first, cond["context"], uncond["context"], scheduler=scheduler,
                       schedule=bundle.schedule, steps=int(sampling.steps), cfg=float(sampling.guidance_scale),
                       n_frames=int(sampling.num_frames), t0=float(sampling.t0), p=float(sampling.p),
                       fsp=bool(fsp.enabled), blur_kernel=int(fsp.kernel_size), blur_sigma=float(fsp.sigma),
                       generator=g, added_cond=cond["added_cond"], added_uncond=uncond["added_cond"],
                       controlnet=controlnet, control=control, callback=callback, progress=progress)
    if not torch.isfinite(res["latents"]).all():
        raise FloatingPointError("the sampled latents hold NaN/Inf (non-finite adapter or model weights, or an "
                                 "fp16 overflow: try dtype=float32); nothing was written")
    video = bundle.decode_video(res["latents"])[0].float()
    if (match := color_match_settings(sampling)) is not None:
        from i2v.diffusion.color import color_match

        video = color_match(video, image.to(video), **match)
    return {"video": video, "latents": res["latents"], "nfe": res["nfe"], "steps_run": res.get("steps")}


def generate_videos(cfg: DictConfig, items: list[dict], out_dir, bundle: Optional[Bundle] = None) -> list[dict]:
    """Sample every item ``{image, prompt, seed, name}`` and write its files into ``out_dir``. Settings, ``out=``,
    the input images and the output names are all checked before the model loads."""
    s = cfg.sampling
    check_sampling_args(s)
    resize = str(s.get("resize", "crop"))
    if resize not in RESIZE_MODES:
        raise ValueError(f"sampling.resize must be one of {RESIZE_MODES}, got {resize!r}")
    use_controlnet = bool(cfg.get("controlnet", {}).get("path"))
    if use_controlnet and resize == "fit":
        raise ValueError("sampling.resize=fit gives each image its own size; with a ControlNet use resize=crop and "
                         "set sampling.height/width")
    if use_controlnet and not cfg.controlnet.get("control"):
        raise ValueError("controlnet.path is set: also give controlnet.control=<folder of images or a video>")
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    side = (bundle.resolution if bundle is not None else None) or cfg.backbone.get("resolution")
    size = (int(s.get("height") or side), int(s.get("width") or side)) if side else None
    items = preflight(items, out_dir, lambda name: output_paths(cfg, out_dir, name),
                      overwrite=bool(cfg.get("overwrite", False)), size=size, resize=resize,
                      strict=not cfg.get("prompts"))
    if all("error" in it for it in items):   # a batch with no good row: say so before loading anything
        raise BatchFailed(f"all {len(items)} rows failed, nothing was sampled:\n  "
                          + "\n  ".join(it["error"] for it in items))
    device, dtype = resolve_device(cfg)
    bundle = bundle or load_bundle_for_sampling(cfg, device, dtype)
    res = int(s.get("height") or bundle.resolution), int(s.get("width") or bundle.resolution)
    bundle.check_video_shape(*res, int(s.num_frames))
    controlnet = control = None
    if use_controlnet:
        from i2v.diffusion.controlnet import VideoControlNet, load_control_frames

        text_tokens = None
        if bundle.content_enabled:  # the ControlNet sees the text tokens only, not the Content-Adapter's
            text_tokens = bundle.condition([""])["context"].shape[1] - bundle.image_tokens(None, 1).shape[1]
        controlnet = VideoControlNet.from_folder(str(cfg.controlnet.path),
                                                 conditioning_scale=float(cfg.controlnet.scale),
                                                 num_text_tokens=text_tokens, dtype=dtype, device=device)
        control = load_control_frames(str(cfg.controlnet.control), n_frames=int(s.num_frames), size=res)[None]
        control = control.to(device, dtype)
    versions = package_versions()
    resolved = resolved_sampling_config(cfg)
    results, failed = [], []
    todo, done, start = sum("error" not in it for it in items), 0, time.perf_counter()
    for item in items:
        if "error" in item:
            failed.append(item["error"])
            continue
        done += 1
        try:
            r = _sample_item(cfg, bundle, item, out_dir, res, resize, controlnet, control,
                             {"versions": versions, "config": resolved})
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


def _sample_item(cfg, bundle, item, out_dir, res, resize, controlnet, control, extra) -> dict:
    s = cfg.sampling
    overwrite = bool(cfg.get("overwrite", False))
    stem = out_dir / item["name"]
    if stem.resolve().parent != out_dir.resolve():
        raise ValueError(f"output name {item['name']!r} leaves out={out_dir}")
    for path in output_paths(cfg, out_dir, item["name"]):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    # fit (official): short side to min(height, width), sides at multiples of 64 (and of the model's multiple)
    image = load_image(item["image"], size=res, resize=resize, multiple=math.lcm(64, bundle.pixel_multiple))
    if tuple(image.shape[-2:]) != res:
        bundle.check_video_shape(*image.shape[-2:], int(s.num_frames))
    t_start = time.perf_counter()
    out = generate_one(bundle, s, image, item["prompt"], item["seed"], controlnet, control)
    seconds = time.perf_counter() - t_start
    meta = {"prompt": item["prompt"], "image": item["image"], "seed": item["seed"], "steps": int(s.steps),
            "t0": float(s.t0), "p": float(s.p), "guidance_scale": float(s.guidance_scale), "nfe": out["nfe"],
            "num_frames": int(s.num_frames), "height": image.shape[-2], "width": image.shape[-1],
            "resize": resize, "seconds": round(seconds, 3),
            "scheduler": str(s.scheduler), "fsp": bool(s.fsp.enabled), "backbone": cfg.backbone.name,
            "adapter": cfg.adapter.name, "ckpt": cfg.get("ckpt"), **extra}
    save_mp4(out["video"], Path(f"{stem}.mp4"), fps=int(s.fps), overwrite=overwrite)
    if cfg.get("write_gif", True):
        save_gif(out["video"], Path(f"{stem}.gif"), fps=int(s.fps), overwrite=overwrite)
    if cfg.get("write_frames"):
        save_frames(out["video"], out_dir / f"{item['name']}_frames", overwrite=overwrite)
    save_json(meta, Path(f"{stem}.json"), overwrite=overwrite, allow_nan=False)
    return {"video": str(Path(f"{stem}.mp4")), "image": item["image"], "name": item["name"],
            "prompt": item["prompt"], "nfe": out["nfe"], "seconds": seconds, "tensor": out["video"]}


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
