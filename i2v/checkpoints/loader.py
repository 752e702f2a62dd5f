"""One entry point: build a :class:`~i2v.models.unet.VideoUNet` from public checkpoints.

``unet``: a diffusers folder (model or pipeline with ``unet/``) or a single file (LDM/SGM ``.safetensors`` /
``.ckpt``, bare LDM UNet, or a diffusers-named ``diffusion_pytorch_model.safetensors``). ``motion``: an original
AnimateDiff file or a diffusers ``MotionAdapter`` folder. Every source tensor must land in the model and every
model tensor must be filled; otherwise one :class:`KeyMapError` names the format and the first offending keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from i2v.models.config import MotionConfig, UNetConfig
from i2v.models.unet import VideoUNet

from i2v.models.content import attach_ip_adapter
from i2v.checkpoints.diffusers_config import motion_config_from_diffusers, unet_config_from_diffusers

from .animatediff import MotionWeights, convert_original, read_motion
from .common import CheckpointError, load_exact, read_checkpoint, require_format
from .diffusers import UNET_CLASSES, read_diffusers_folder
from .ldm import LdmParts, infer_unet_config, layout_from_ldm, ldm_to_diffusers, split_ldm
from .official_base import OFFICIAL_IP_TOKENS, RELEASE_IP, split_unet3d

UNET_FILE_FORMATS = ("ldm", "ldm_unet", "diffusers_unet", "unet3d")
# reference/checkpoints.md *derived* totals: (tensors, parameters). Motion: tensors without the 2 pe per module
# (original files hold 560 / 588 / 560 / 420 with pe), parameters without pe.
RELEASE_UNETS = {"sd15": (UNetConfig.sd15, 686, 859_520_964), "sdxl": (UNetConfig.sdxl, 1680, 2_567_463_684)}
RELEASE_MOTION = {(320, 640, 1280, 1280): {False: (520, 417_137_600), True: (546, 453_209_280)},
                  (320, 640, 1280): {False: (390, 236_779_200)}}
NormSpec = Union[None, str, Mapping[str, str]]


@dataclass
class UNetWeights:
    """Spatial UNet tensors in diffusers names, its diffusers config, and what else the source held."""

    tensors: dict[str, torch.Tensor]
    config: dict
    fmt: str                          # "diffusers folder" | "ldm single file" | ...
    family: str                       # "sd15" | "sdxl" (layout family; tiny models included)
    source: str
    parts: Optional[LdmParts] = None  # VAE / text encoder / ignored keys of a single file
    skipped: list[str] = field(default_factory=list)
    motion: Optional[MotionWeights] = None    # motion modules inside the file (merged UNet3D base)
    ip_layers: dict[str, torch.Tensor] = field(default_factory=dict)  # its IP-Adapter to_k_ip/to_v_ip tensors


def _family(config: Mapping) -> str:
    """Layout family for messages: sdxl (text_time), sd2 (linear proj, context 1024), else sd15."""
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if config.get("use_linear_projection") and config.get("cross_attention_dim") == 1024 else "sd15"


def read_unet(path: Union[str, Path], *, use_ema: bool = False, hints: Optional[Mapping] = None,
              variant: Optional[str] = None) -> UNetWeights:
    """Read any supported UNet source into diffusers-named tensors plus a diffusers config dict.

    ``hints`` (single files only; see :data:`i2v.checkpoints.ldm.HINT_FIELDS`) supply what shapes cannot
    tell: head count, GroupNorm groups, SDXL time-id embedding size.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: UNet checkpoint not found (give a diffusers folder such as "
                              f"<sd-1.5>/unet, or a single file such as v1-5-pruned-emaonly.safetensors / "
                              f"sd_xl_base_1.0.safetensors)")
    if path.is_dir():
        if hints:
            raise CheckpointError(f"{path}: config hints {sorted(hints)} apply to single files only; a diffusers "
                                  f"folder carries its config.json")
        if use_ema:
            raise CheckpointError(f"{path}: use_ema applies to LDM single files only")
        folder = read_diffusers_folder(path, classes=UNET_CLASSES, subfolder="unet", variant=variant)
        return UNetWeights(folder.tensors, folder.config, "diffusers folder", _family(folder.config),
                           str(folder.path))
    raw = read_checkpoint(path)
    fmt = require_format(raw.tensors, UNET_FILE_FORMATS, path, "UNet checkpoint")
    parts, motion, ip_layers = None, None, {}
    if fmt == "unet3d":
        split = split_unet3d(raw.tensors, path)
        tensors, ip_layers = split.unet, split.ip_layers
        motion = convert_original(split.motion, f"{path}[motion_modules]")
        motion.ignored += raw.skipped
    elif fmt == "ldm":
        parts = split_ldm(raw.tensors, use_ema=use_ema, source=path)
        tensors = ldm_to_diffusers(parts.unet, layout_from_ldm(parts.unet), path)
    elif fmt == "ldm_unet":
        tensors = ldm_to_diffusers(raw.tensors, layout_from_ldm(raw.tensors), path)
    else:
        tensors = dict(raw.tensors)
    if use_ema and fmt != "ldm":
        raise CheckpointError(f"{path}: use_ema needs an LDM single file with model_ema.* keys, got {fmt}")
    config = infer_unet_config(tensors, hints, path)
    label = {"ldm": "ldm single file", "ldm_unet": "bare ldm unet", "diffusers_unet": "diffusers single file",
             "unet3d": "merged UNet3D file"}[fmt]
    return UNetWeights(tensors, config, label, _family(config), str(path), parts, raw.skipped, motion, ip_layers)


def check_release_counts(cfg: UNetConfig, tensors: Mapping[str, torch.Tensor], source: object,
                         motion: Optional[MotionConfig] = None) -> None:
    """At release sizes (SD1.5 / SDXL UNet, AnimateDiff motion widths) assert the derived tensor and
    parameter totals of §1.2, §2 and §4.2; tiny models and custom motion layouts are not checked."""
    def check(what: str, items: list, want: tuple[int, int]) -> None:
        got = (len(items), sum(t.numel() for t in items))
        if got != want:
            raise CheckpointError(f"{source}: {what} holds {got[0]} tensors / {got[1]:,} parameters, the release "
                                  f"has {want[0]} / {want[1]:,}")
    spatial = [v for k, v in tensors.items() if ".motion_modules." not in k and not k.endswith("_ip.weight")]
    ip = [v for k, v in tensors.items() if k.endswith(("attn2.to_k_ip.weight", "attn2.to_v_ip.weight"))]
    for family, (preset, n, params) in RELEASE_UNETS.items():
        if cfg.replace(sample_size=preset().sample_size) == preset():
            check(f"{family} UNet", spatial, (n, params))
            if ip and family in RELEASE_IP:
                check(f"{family} IP-Adapter layers", ip, RELEASE_IP[family])
    if motion is not None and motion.version != "custom" and motion.block_out_channels in RELEASE_MOTION:
        want = RELEASE_MOTION[motion.block_out_channels].get(motion.use_mid_block)
        if want is not None:
            check(f"{motion.version} motion module", [v for k, v in tensors.items() if ".motion_modules." in k], want)


def _norms(spec: NormSpec) -> dict:
    if spec is None:
        return {}
    if spec == "diffusers":
        return {"spatial_norm": "per_frame", "motion_norm": "across_frames"}
    if isinstance(spec, Mapping) and set(spec) <= {"spatial_norm", "motion_norm"}:
        return dict(spec)
    raise ValueError(f"norm must be None (the release's defaults), 'diffusers', or a dict with spatial_norm/"
                     f"motion_norm, got {spec!r}")


MOTION_HINT_FIELDS = ("num_heads", "norm_num_groups")


def motion_config(weights: MotionWeights, unet_cfg: UNetConfig, norm: NormSpec = None,
                  hints: Optional[Mapping] = None) -> MotionConfig:
    """MotionConfig of a motion checkpoint for ``unet_cfg``: release defaults (norms, pe length, 8 heads for
    original files, GroupNorm groups of the UNet) + ``norm`` + ``hints`` (``num_heads``, ``norm_num_groups``)."""
    hints, norms = dict(hints or {}), _norms(norm)
    if bad := sorted(set(hints) - set(MOTION_HINT_FIELDS)):
        raise CheckpointError(f"{weights.source}: unknown motion hints {bad}; allowed: {list(MOTION_HINT_FIELDS)}")
    widths = [weights.tensors[k].shape[0] for k in sorted(weights.tensors)
              if k.startswith("down_blocks.") and k.endswith(".motion_modules.0.proj_in.weight")]
    if tuple(widths) != unet_cfg.block_out_channels:
        raise CheckpointError(f"{weights.source}: motion modules ({weights.version}) have widths {widths} per "
                              f"level but the UNet has {list(unet_cfg.block_out_channels)} (SD1.5 motion module "
                              f"on an SDXL UNet or the reverse?)")
    cfg = MotionConfig.for_version(weights.family, unet_cfg).replace(version=weights.version, num_heads=8)
    if weights.fmt == "motion_adapter":
        cfg = motion_config_from_diffusers(weights.adapter_config, weights.version,
                                                  spatial_norm=cfg.spatial_norm, motion_norm=cfg.motion_norm)
    try:
        return cfg.replace(max_seq_length=weights.max_seq_length, **norms, **hints)
    except ValueError as e:
        raise CheckpointError(f"{weights.source}: {e}") from e


def load_video_unet(unet: Union[str, Path], motion: Union[str, Path, None] = None, *, norm: NormSpec = None,
                    device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                    use_ema: bool = False, unet_hints: Optional[Mapping] = None,
                    motion_version: Optional[str] = None, motion_hints: Optional[Mapping] = None,
                    variant: Optional[str] = None,
                    verbose: bool = True) -> VideoUNet:
    """Build a VideoUNet from a UNet checkpoint (+ an AnimateDiff motion module) on ``device`` in ``dtype``.

    norm: ``None`` -> the detected motion release's GroupNorm modes (v1: spatial across frames); ``"diffusers"``
    -> diffusers ``UNetMotionModel``'s (:meth:`MotionConfig.diffusers_norms`); or an explicit dict.
    use_ema: take an LDM file's ``model_ema`` copy. unet_hints: see :func:`read_unet`.
    motion_version: only for original files without ``pe`` buffers (v1 vs v3). motion_hints: see
    :func:`motion_config`. variant: e.g. ``"fp16"`` (diffusers folders).
    Raises :class:`CheckpointError` / :class:`KeyMapError` for anything that does not match one to one.
    """
    _norms(norm)                      # validated even without a motion module (it then has no effect)
    uw = read_unet(unet, use_ema=use_ema, hints=unet_hints, variant=variant)
    try:
        cfg = unet_config_from_diffusers(uw.config)
    except ValueError as e:
        raise CheckpointError(f"{uw.source}: unsupported UNet config ({e})") from e
    mw = read_motion(motion, motion_version) if motion is not None else uw.motion
    if motion is not None and uw.motion is not None:
        print(f"[i2v.checkpoints] note: {mw.source} replaces the {uw.motion.version} motion modules inside "
              f"{uw.source}")
    elif motion is None and mw is not None and motion_version is not None and motion_version != mw.version:
        raise CheckpointError(f"{uw.source}: motion_version={motion_version!r} given, but the motion modules "
                              f"inside the file are {mw.version!r}")
    mcfg = motion_config(mw, cfg, norm, motion_hints) if mw is not None else None
    if mw is not None and mw.note:
        print(f"[i2v.checkpoints] note: {mw.note}")
    with torch.device(device):
        model = VideoUNet(cfg, mcfg).to(dtype)
    sd = dict(uw.tensors)
    if uw.ip_layers:                  # merged base: its IP-Adapter layers (image tokens: Plus' 16 until the
        attach_ip_adapter(model, OFFICIAL_IP_TOKENS)  # image projection is loaded, see load_ip_adapter)
        sd.update(uw.ip_layers)
    if mw is not None:
        if clash := sorted(set(sd) & set(mw.tensors)):
            raise CheckpointError(f"{uw.source} and {mw.source} both hold {clash[:5]}")
        sd.update(mw.tensors)
    fmt = f"{uw.family} {uw.fmt}" + (f" + {mw.version} {mw.fmt}" if mw else "")
    source = uw.source if mw is None else f"{uw.source} + {mw.source}"
    load_exact(model, sd, fmt=fmt, source=source)
    check_release_counts(cfg, sd, source, mcfg)
    if verbose:
        msg = f"[i2v.checkpoints] loaded {len(uw.tensors)} UNet tensors ({uw.family}, {uw.fmt})"
        if mw is not None:
            n_pe = sum(k.endswith(("pos_encoder.pe", "pos_embed.pe")) for k in mw.ignored)
            msg += (f", {len(mw.tensors)} motion tensors + {n_pe} pe buffers checked ({mw.version}, {mw.fmt}; "
                    f"norms spatial {mcfg.spatial_norm}, motion {mcfg.motion_norm}; pe length {mcfg.max_seq_length})")
        if uw.ip_layers:
            msg += f"; {len(uw.ip_layers)} IP-Adapter to_k_ip/to_v_ip tensors from the same file"
        if uw.parts is not None:
            msg += (f"; also in the file: {len(uw.parts.vae)} VAE, {len(uw.parts.text)} text-encoder tensors; "
                    f"ignored {', '.join(f'{len(v)} {k}' for k, v in uw.parts.ignored.items()) or 'nothing'}")
        print(msg)
    return model.eval()
