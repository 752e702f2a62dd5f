"""Make the shipped toy-world checkpoints in ``i2v/assets/toy`` (DESIGN.md "Toy world"), deterministically.

Phase A pretrains the toy text-to-video model (UNet + motion module + text encoder; the SD + AnimateDiff stand-in),
phase B a toy Content-Adapter (image encoder + Resampler + ``to_k_ip``/``to_v_ip``; the IP-Adapter Plus stand-in);
see :mod:`i2v.toy.pretrain`. Writes, atomically and only with ``--overwrite`` over existing files:

* ``base_unet.safetensors``     -- ``VideoUNet`` state dict; metadata ``toy_base`` = JSON ``{"build_overrides":
  kwargs of build_video_unet("toy", motion="v2", ...), "prediction_type": ..., "codec_scale": ...}`` (motion
  version, codec and schedule are also in the MANIFEST);
* ``text_encoder.safetensors``  -- :class:`ToyTextEncoder` (``load_toy_state_dict``);
* ``image_encoder.safetensors`` -- :class:`ToyImageEncoder` (``load_toy_state_dict``);
* ``ip_adapter.safetensors``    -- official flat IP-Adapter layout ``image_proj.*`` +
  ``ip_adapter.{i}.to_{k,v}_ip.weight``
  (read by ``i2v.checkpoints.ip_adapter.load_ip_adapter``);
* ``MANIFEST.json``             -- command, arguments, losses, sha256 of each file, wall time.

Same arguments and ``--threads`` give byte-identical safetensors files. Usage (from the repository root)::

    PYTHONPATH=. python scripts/make_toy_checkpoint.py --overwrite          # the shipped files
    PYTHONPATH=. python scripts/make_toy_checkpoint.py --quick --out /tmp/toy
    PYTHONPATH=. python scripts/make_toy_checkpoint.py <the same arguments> --peek /tmp/now   # a run in progress
    PYTHONPATH=. python scripts/make_toy_checkpoint.py <arguments> --init-from i2v/assets/toy --out /tmp/more  # continue
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from i2v.checkpoints.ip_adapter import ip_adapter_key_map  # noqa: E402
from i2v.utils.io import atomic_write, save_json  # noqa: E402
from i2v.models.toy import toy_state_dict  # noqa: E402
from i2v.toy.pretrain import (CODEC_SCALE, MOTION, RESAMPLER, SCHEDULE, ClipStream, PretrainConfig,  # noqa: E402
                              ToyModels, base_file_metadata, build_base, peek_base, pretrain_base,
                              train_content_adapter, unet_build_overrides)

FILES = ("base_unet.safetensors", "text_encoder.safetensors", "image_encoder.safetensors", "ip_adapter.safetensors")
QUICK = dict(base_steps=3, ip_steps=2, batch_size=2, log_every=1)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    d = PretrainConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "i2v" / "assets" / "toy"), help="output folder")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--base-steps", type=int, default=d.base_steps,
                    help="phase A (text-to-video) steps; 0 with --init-from: keep that base as it is and train the "
                         "Content-Adapter (phase B) on it")
    ap.add_argument("--ip-steps", type=int, default=d.ip_steps, help="phase B (Content-Adapter) steps")
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr, help="phase A peak AdamW learning rate (warm-up + cosine)")
    ap.add_argument("--ip-lr", type=float, default=d.ip_lr, help="phase B peak AdamW learning rate")
    ap.add_argument("--offset-noise", type=float, default=d.offset_noise,
                    help="per-video and per-frame channel offset added to the noise (see PretrainConfig)")
    ap.add_argument("--clean-distractor", type=float, default=d.clean_distractor,
                    help="probability that a clip's frame 1 is a clean frame of another clip, no loss on it "
                         "(see PretrainConfig)")
    ap.add_argument("--object-weight", type=float, default=d.object_weight,
                    help="extra ε-loss weight where the moving object is (1 + this there; see PretrainConfig)")
    ap.add_argument("--texture", type=float, default=d.texture,
                    help="amplitude of the clips' static background pattern (0 = flat backgrounds)")
    ap.add_argument("--texture-cells", type=int, default=d.texture_cells,
                    help="the background pattern has n x n cells over the image")
    ap.add_argument("--texture-tiles", type=int, default=d.texture_tiles,
                    help="the background pattern is one random tile repeated k x k times")
    ap.add_argument("--texture-smooth", type=float, default=d.texture_smooth,
                    help="amplitude of a smooth colour field on the backgrounds, per channel (0 = none)")
    ap.add_argument("--texture-smooth-knots", type=int, default=d.texture_smooth_knots,
                    help="the smooth colour field is bilinear between n x n random knots")
    ap.add_argument("--radius-range", type=float, nargs=2, metavar=("LO", "HI"), default=list(d.radius_range),
                    help="the moving object's radius range, as fractions of the image side")
    ap.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=d.prediction_type,
                    help="what the base UNet outputs (see PretrainConfig.prediction_type)")
    ap.add_argument("--codec-scale", type=float, default=d.codec_scale,
                    help="latent scale of the toy codec (configs: backbone.vae_scale)")
    ap.add_argument("--position-channels", type=int, default=d.position_channels,
                    help="fixed sin/cos position codes appended to the latents (multiple of 4; see PatchCodec)")
    ap.add_argument("--attn-init-scale", type=float, default=d.attn_init_scale,
                    help="initial to_q/to_k of the UNet's self-attentions x this (sharper starting attention)")
    ap.add_argument("--unet-overrides", type=json.loads, default={},
                    help='JSON of UNetConfig fields changed from the toy preset, e.g. \'{"transformer_layers_per_block": [2, 1]}\'')
    ap.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA of the weights that are exported")
    ap.add_argument("--init-from", metavar="DIR", default=None,
                    help="start phase A from the base UNet and text encoder in DIR (files this script wrote, e.g. "
                         "i2v/assets/toy) instead of a fresh init: continue a base, e.g. on another world or with "
                         "another GroupNorm mode ('{\"motion_spatial_norm\": \"across_frames\"}'); the UNet "
                         "overrides must keep every parameter's shape")
    ap.add_argument("--state-dir", default=None,
                    help="resumable training state (default <out>/.pretrain_state); rerunning the same command "
                         "continues from it; removed after the files are written")
    ap.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between saved states")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (part of the determinism contract)")
    ap.add_argument("--device", default="cpu",
                    help="where the models train (e.g. cuda; the random draws stay on the CPU, so a GPU run sees the "
                         "same clips, timesteps and noise, but its arithmetic differs in the last bits)")
    ap.add_argument("--workers", type=int, default=0,
                    help="processes that render the clips ahead (same clips, same order; for --device cuda)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing files")
    ap.add_argument("--quick", action="store_true", help=f"tiny run for tests ({QUICK}; overrides step flags)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines only)")
    ap.add_argument("--peek", metavar="DIR", default=None,
                    help="do not train: write the base UNet and text encoder (EMA weights) of the run with these "
                         "same arguments, as of its last saved state, to DIR and exit -- to check a long run "
                         "while it trains (python scripts/diagnose_adapter.py experiment=toy adapter=none "
                         "backbone.unet=DIR/base_unet.safetensors backbone.text_encoder=DIR/text_encoder.safetensors)")
    args = ap.parse_args(argv)
    if min(args.ip_steps, args.batch_size, args.threads) < 1 or args.base_steps < 0:
        ap.error("--ip-steps, --batch-size and --threads must be >= 1, --base-steps >= 0")
    if args.base_steps == 0 and not args.init_from:
        ap.error("--base-steps 0 keeps the base as loaded: it needs --init-from DIR (the base to keep)")
    if args.base_steps == 0 and args.peek:
        ap.error("--peek exports a base phase in progress; --base-steps 0 has none")
    if args.workers < 0:
        ap.error("--workers must be >= 0")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        ap.error(f"--device {args.device}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no CUDA device here")
    if args.init_from and Path(args.init_from).resolve() == Path(args.out).resolve():
        ap.error("--init-from and --out are one folder: write the continued base elsewhere (its source files must "
                 "stay to regenerate it)")
    return args


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    cfg = PretrainConfig(seed=args.seed, base_steps=args.base_steps, ip_steps=args.ip_steps,
                         batch_size=args.batch_size, lr=args.lr, ip_lr=args.ip_lr, offset_noise=args.offset_noise,
                         clean_distractor=args.clean_distractor, object_weight=args.object_weight,
                         texture=args.texture, texture_cells=args.texture_cells, texture_tiles=args.texture_tiles,
                         texture_smooth=args.texture_smooth, texture_smooth_knots=args.texture_smooth_knots,
                         radius_range=tuple(args.radius_range),
                         prediction_type=args.prediction_type, codec_scale=args.codec_scale,
                         position_channels=args.position_channels,
                         attn_init_scale=args.attn_init_scale, unet_overrides=dict(args.unet_overrides),
                         ema_decay=args.ema_decay, checkpoint_every=args.checkpoint_every,
                         init_sha256=source_digests(args.init_from) if args.init_from else None,
                         state_dir=args.state_dir or str(Path(args.out) / ".pretrain_state"),
                         progress=not args.no_progress)
    quick = {**QUICK, **({"base_steps": 0} if args.base_steps == 0 else {})}   # --base-steps 0 is kept
    return dataclasses.replace(cfg, **quick) if args.quick else cfg


def _repo_relative(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


INIT_FILES = ("base_unet.safetensors", "text_encoder.safetensors")   # what --init-from reads


def source_digests(folder: str) -> dict:
    """sha256 of the files ``--init-from folder`` reads (the resume key holds them); a clear error if one is missing."""
    digests = {}
    for name in INIT_FILES:
        path = Path(folder) / name
        if not path.is_file():
            raise FileNotFoundError(f"--init-from {folder}: no {name} there (a folder this script wrote)")
        digests[name] = sha256(path)
    return digests


def init_from(models: ToyModels, folder: str, digests: dict) -> dict:
    """Load the base UNet and text encoder of ``folder`` (strict: same keys and shapes) into fresh phase-A models;
    returns what MANIFEST.json records: the folder, the two files' sha256 (``digests``: :func:`source_digests`),
    the folder's own regenerate command and base-phase loss (first / last) and, when that folder was itself
    continued, its ``init_from`` record (so a chain of continuations is written down back to its fresh start)."""
    from safetensors.torch import load_file

    src = Path(folder)
    record = {"dir": _repo_relative(folder), "files": dict(digests)}
    for name, module in zip(INIT_FILES, (models.unet, models.text)):
        path = src / name
        try:
            module.load_state_dict(load_file(str(path)), strict=True)
        except RuntimeError as e:
            raise ValueError(f"--init-from {path} does not fit the base these arguments build (--unet-overrides "
                             f"must keep every parameter's shape): {str(e).splitlines()[0]}") from e
    if (src / "MANIFEST.json").is_file():
        manifest = json.loads((src / "MANIFEST.json").read_text())
        record["command"] = manifest.get("command")
        base_loss = manifest.get("losses", {}).get("base", {})
        if "first" in base_loss:
            record["base_loss"] = {"first": base_loss["first"], "last": base_loss["last"]}
        if manifest.get("init_from"):
            record["init_from"] = manifest["init_from"]
    return record


def command_line(args: argparse.Namespace, cfg: PretrainConfig) -> str:
    """The canonical command that regenerates the files (explicit values, not the defaults)."""
    return (f"PYTHONPATH=. python scripts/make_toy_checkpoint.py --out {_repo_relative(args.out)} --seed {cfg.seed} "
            f"--base-steps {cfg.base_steps} --ip-steps {cfg.ip_steps} --batch-size {cfg.batch_size} "
            f"--lr {cfg.lr:g} --ip-lr {cfg.ip_lr:g} --offset-noise {cfg.offset_noise:g} "
            + (f"--clean-distractor {cfg.clean_distractor:g} " if cfg.clean_distractor else "")
            + (f"--object-weight {cfg.object_weight:g} " if cfg.object_weight else "")
            + (f"--texture {cfg.texture:g} --texture-cells {cfg.texture_cells} --texture-tiles {cfg.texture_tiles} "
               if cfg.texture else "")
            + (f"--texture-smooth {cfg.texture_smooth:g} --texture-smooth-knots {cfg.texture_smooth_knots} "
               if cfg.texture_smooth else "")
            + ("--radius-range {:g} {:g} ".format(*cfg.radius_range)
               if tuple(cfg.radius_range) != PretrainConfig.radius_range else "")
            + (f"--prediction-type {cfg.prediction_type} " if cfg.prediction_type != "epsilon" else "")
            + (f"--codec-scale {cfg.codec_scale:g} " if cfg.codec_scale != CODEC_SCALE else "")
            + (f"--position-channels {cfg.position_channels} " if cfg.position_channels else "")
            + (f"--attn-init-scale {cfg.attn_init_scale:g} " if cfg.attn_init_scale != 1.0 else "")
            + (f"--unet-overrides '{json.dumps(cfg.unet_overrides)}' " if cfg.unet_overrides else "")
            + f"--ema-decay {cfg.ema_decay:g} "
            + (f"--init-from {_repo_relative(args.init_from)} " if args.init_from else "")
            + f"--threads {args.threads}"
            + (f" --device {args.device}" if args.device != "cpu" else "")
            + (f" --workers {args.workers}" if args.workers else "")
            + (" --quick" if args.quick else "") + " --overwrite")


def ip_adapter_tensors(models: ToyModels) -> dict[str, torch.Tensor]:
    """Official flat IP-Adapter layout: ``image_proj.<resampler key>`` + ``ip_adapter.{i}.to_{k,v}_ip.weight``
    (the inverse of :func:`ip_adapter_key_map`, so ``load_ip_adapter`` reads it back exactly)."""
    sd = models.unet.state_dict()
    flat = {f"image_proj.{k}": v for k, v in toy_state_dict(models.image_proj).items()}
    for file_key, ours in ip_adapter_key_map(models.unet).items():
        flat[f"ip_adapter.{file_key}"] = sd[ours].detach().clone().contiguous()
    return flat


def peek(args: argparse.Namespace, cfg: PretrainConfig) -> dict:
    """``--peek DIR``: the base UNet and text encoder of the run in progress (same arguments) into ``DIR``, plus
    ``PEEK.json`` (step, state file, the run's command). Returns ``{"paths": {name: Path}, "step": int}``."""
    out = Path(args.peek)
    existing = [str(out / n) for n in ("base_unet.safetensors", "text_encoder.safetensors", "PEEK.json")
                if (out / n).exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"refusing to overwrite {existing}; pass --overwrite")
    models, step = peek_base(cfg)
    files = export(models, cfg.unet_overrides, cfg.prediction_type, cfg.codec_scale, cfg.position_channels,
                   base_only=True)
    paths = {name: write_safetensors(out / name, tensors, meta, args.overwrite) for name, (tensors, meta) in files.items()}
    info = {"step": step, "of_steps": cfg.base_steps, "state_dir": str(cfg.state_dir), "run": command_line(args, cfg),
            "files": {name: {"sha256": sha256(p)} for name, p in paths.items()}}
    paths["PEEK.json"] = save_json(info, out / "PEEK.json", overwrite=args.overwrite)
    print(f"[make_toy_checkpoint] base phase at step {step}/{cfg.base_steps}: wrote {', '.join(sorted(files))} to "
          f"{out}")
    return {"paths": paths, "step": step}


def export(models: ToyModels, unet_overrides: Optional[dict] = None, prediction_type: str = "epsilon",
           codec_scale: float = CODEC_SCALE, position_channels: int = 0, base_only: bool = False
           ) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
    """file name -> (tensors, safetensors metadata). The base UNet excludes the phase-B ip layers. ``base_only``:
    the phase-A files (base UNet, text encoder) alone."""
    ip_keys = ("to_k_ip.weight", "to_v_ip.weight")
    unet = {k: v for k, v in toy_state_dict(models.unet).items() if not k.endswith(ip_keys)}
    # One metadata key per file: safetensors writes its header's metadata map in hash order, so several keys
    # would make the bytes (and the MANIFEST sha256) differ between identical runs.
    files = {
        "base_unet.safetensors": (unet, base_file_metadata(unet_overrides, prediction_type, codec_scale,
                                                             position_channels)),
        "text_encoder.safetensors": (toy_state_dict(models.text), {"format": "i2v ToyTextEncoder"}),
    }
    if base_only:
        return files
    return {
        **files,
        "image_encoder.safetensors": (toy_state_dict(models.image_encoder), {"format": "i2v ToyImageEncoder"}),
        "ip_adapter.safetensors": (ip_adapter_tensors(models), {"format": "IP-Adapter Plus (flat), toy"}),
    }


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], overwrite: bool) -> Path:
    """Atomic write (temp name + rename), world-readable like any other repository file."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=meta)
        tmp.chmod(0o644)

    return atomic_write(path, write, overwrite=overwrite)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def loss_summary(hist: dict, n: int = 20) -> dict:
    """Mean of the first / last ``n`` raw losses, plus the EMA log ``[[step, ema], ...]``."""
    losses = hist["losses"]
    k = min(n, len(losses))
    if not k:                 # a phase of 0 steps (--base-steps 0)
        return {"first": None, "last": None, "ema_log": hist["log"]}
    return {"first": round(sum(losses[:k]) / k, 5), "last": round(sum(losses[-k:]) / k, 5), "ema_log": hist["log"]}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run both phases and write the files (``--peek``: only export the base phase of a run in progress).

    Returns ``{"paths": {name: Path}, "manifest": dict, "models": ToyModels}``."""
    args = parse_args(argv)
    cfg = pretrain_config(args)
    if args.peek:
        return peek(args, cfg)
    out = Path(args.out)
    targets = [out / name for name in FILES + ("MANIFEST.json",)]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"refusing to overwrite {existing}; pass --overwrite")
    torch.set_num_threads(args.threads)
    start = time.time()

    models = build_base(cfg.seed, cfg.attn_init_scale, cfg.unet_overrides, cfg.prediction_type, cfg.codec_scale,
                        cfg.position_channels)
    source = init_from(models, args.init_from, cfg.init_sha256) if args.init_from else None
    models.to(args.device)
    stream = ClipStream(cfg, workers=args.workers)
    g = torch.Generator().manual_seed(cfg.seed + 12345)  # t, ε, caption/image drops, frame choice
    n_unet = sum(p.numel() for p in models.unet.parameters())
    print(f"[make_toy_checkpoint] phase A: UNet {n_unet:,} + text encoder "
          f"{sum(p.numel() for p in models.text.parameters()):,} parameters, {cfg.base_steps} steps x "
          f"batch {cfg.batch_size} x {cfg.num_frames} frames, {args.threads} thread(s), on {args.device}"
          + (f", {args.workers} clip workers" if args.workers else ""))
    base = pretrain_base(models, stream, cfg, g) if cfg.base_steps else {"losses": [], "log": []}
    t_base = time.time() - start
    content = train_content_adapter(models, stream, cfg, g)
    t_train = time.time() - start
    models.to("cpu")

    paths = {name: write_safetensors(out / name, tensors, meta, args.overwrite)
             for name, (tensors, meta) in export(models, cfg.unet_overrides, cfg.prediction_type, cfg.codec_scale,
                                                 cfg.position_channels).items()}
    manifest = {
        "command": command_line(args, cfg),
        "seed": cfg.seed, "threads": args.threads, "quick": args.quick,
        **({"init_from": source} if source else {}),
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("state_dir", "progress")},
        "unet": {"preset": "toy", "motion": MOTION, **unet_build_overrides(cfg.unet_overrides, cfg.position_channels)},
        "resampler": RESAMPLER,
        "schedule": {**SCHEDULE, "prediction_type": cfg.prediction_type},
        "codec": {"kind": "patch", "scale": cfg.codec_scale, "position_channels": cfg.position_channels},
        "losses": {"base": loss_summary(base), "content": loss_summary(content)},
        "files": {name: {"sha256": sha256(p), "bytes": p.stat().st_size} for name, p in paths.items()},
        "wall_time_s": {"base": round(t_base, 1), "content": round(t_train - t_base, 1),
                        "total": round(time.time() - start, 1)},
        "torch": torch.__version__,
        "device": str(torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"),
    }
    paths["MANIFEST.json"] = save_json(manifest, out / "MANIFEST.json", overwrite=args.overwrite)
    paths["MANIFEST.json"].chmod(0o644)
    shutil.rmtree(cfg.state_dir, ignore_errors=True)  # the files are written: the resumable state is spent
    lb, lc = manifest["losses"]["base"], manifest["losses"]["content"]
    base_line = (f"base loss {lb['first']:.4f} -> {lb['last']:.4f}" if cfg.base_steps
                 else f"base kept as loaded from {args.init_from}")
    print(f"[make_toy_checkpoint] {base_line}, content loss {lc['first']:.4f} -> {lc['last']:.4f}; "
          f"{manifest['wall_time_s']['total']:.0f} s; wrote {out}")
    print(f"[make_toy_checkpoint] regenerate with:\n  {manifest['command']}")
    return {"paths": paths, "manifest": manifest, "models": models}


if __name__ == "__main__":
    main()
