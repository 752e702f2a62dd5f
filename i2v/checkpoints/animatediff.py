"""AnimateDiff motion modules (reference/checkpoints.md §4): original files and diffusers ``MotionAdapter`` folders.

Both are converted to diffusers ``UNetMotionModel`` key names without the ``pos_embed.pe`` buffers (our
model regenerates them): original keys lose ``.temporal_transformer`` and rename ``norms.0/1`` ->
``norm1/2``, ``ff_norm`` -> ``norm3``, ``attention_blocks.0/1`` -> ``attn1/2`` (§4.4). Every stored ``pe``
is checked: one length L for all modules, equal to the standard sinusoid. Layouts are judged by their tensors
(levels, mid block, pe length): a known release gets its name, any other consistent layout (64-frame
long-context modules, custom-trained adapters) loads as ``custom`` with one note (:func:`classify`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch

from .common import CheckpointError, KeyMapError, read_checkpoint, require_format
from .diffusers import MOTION_CLASSES, read_diffusers_folder

RELEASE_PE = {"v1": 24, "v2": 32, "v3": 32, "sdxl_beta": 32}
ORIG_KEY = re.compile(
    r"^(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+\.temporal_transformer\."
    r"(?:norm|proj_in|proj_out|transformer_blocks\.0\.(?:norms\.[01]|ff_norm|ff\.net\.0\.proj|ff\.net\.2|"
    r"attention_blocks\.[01]\.(?:to_q|to_k|to_v|to_out\.0)))\.(?:weight|bias)$")
ORIG_PE = re.compile(r"^.*\.motion_modules\.\d+\.temporal_transformer\.transformer_blocks\.0\."
                     r"attention_blocks\.[01]\.pos_encoder\.pe$")
RENAMES = ((".temporal_transformer.", "."), (".norms.0.", ".norm1."), (".norms.1.", ".norm2."),
           (".ff_norm.", ".norm3."), (".attention_blocks.0.", ".attn1."), (".attention_blocks.1.", ".attn2."))


@dataclass
class MotionWeights:
    """Motion-module tensors in diffusers names (no ``pe``), with what identifies the release."""

    tensors: dict[str, torch.Tensor]
    version: str                       # v1 | v2 | v3 | sdxl_beta | custom (judged by the tensors)
    max_seq_length: int                # pe length L (frame-count cap)
    fmt: str                           # "animatediff" (original file) | "motion_adapter" (diffusers folder)
    source: str
    adapter_config: dict = field(default_factory=dict)   # diffusers MotionAdapter config.json (folders only)
    ignored: list[str] = field(default_factory=list)     # pe buffers and non-tensor entries, by name
    family: str = ""                   # nearest release (its GroupNorm modes); == version for a release
    note: Optional[str] = None         # set when the layout is not exactly an AnimateDiff release

    def __post_init__(self):
        self.family = self.family or self.version


def orig_to_diffusers_key(key: str) -> str:
    """``down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight``
    -> ``down_blocks.0.motion_modules.1.transformer_blocks.0.attn1.to_q.weight``."""
    for old, new in RENAMES:
        key = key.replace(old, new)
    return key


def sinusoid_pe(length: int, dim: int) -> torch.Tensor:
    """AnimateDiff/diffusers positional table ``(1, length, dim)``: sin on even channels, cos on odd, base 10000."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe[None].float()


def check_pe(pes: Mapping[str, torch.Tensor], source: object) -> int:
    """All ``pe`` buffers ``(1, L, C)`` share L and equal the standard sinusoid (to the file's precision);
    return L."""
    lengths = {k: int(v.shape[1]) for k, v in pes.items()}
    if len(set(lengths.values())) != 1:
        raise CheckpointError(f"{source}: positional tables of different lengths {sorted(set(lengths.values()))}")
    for key, pe in pes.items():
        if pe.ndim != 3 or pe.shape[0] != 1:
            raise CheckpointError(f"{source}: {key} has shape {tuple(pe.shape)}, expected (1, L, C)")
        err = (pe.float() - sinusoid_pe(pe.shape[1], pe.shape[2])).abs().max().item()
        if err > max(2e-3, 2 * torch.finfo(pe.dtype).eps):          # fp16 / bf16 files round the table
            raise CheckpointError(f"{source}: {key} differs from the standard sinusoid by {err:.3g}; this model "
                                  f"regenerates pe, so the file cannot be reproduced faithfully")
    return next(iter(lengths.values()))


def detect_version(keys, levels: int, has_mid: bool, pe_len: Optional[int], source: object) -> str:
    """The release family of a layout (§4.2): mid block -> v2; three levels (no ``up_blocks.3``) -> SDXL beta;
    pe length 24 -> v1, else v3. The family sets the GroupNorm defaults; :func:`classify` says whether the
    layout *is* that release.

    The level count is the structural form of diffusers' ``up_blocks.2...norm.weight`` == [320] rule; it also
    holds for tiny test widths.
    """
    if has_mid:
        return "v2"
    if levels == 3:
        return "sdxl_beta"
    if levels != 4:
        raise CheckpointError(f"{source}: motion modules on {levels} levels; AnimateDiff layouts have 4 (SD1.5) "
                              f"or 3 (SDXL)")
    if pe_len is None:
        raise CheckpointError(f"{source}: no pos_encoder.pe buffers, so v1 and v3 cannot be told apart; pass "
                              f"motion_version='v1' or 'v3'")
    return "v1" if pe_len == 24 else "v3"


def classify(levels: int, has_mid: bool, pe_len: int, source: object) -> tuple[str, str, Optional[str]]:
    """``(version, family, note)`` of a layout judged by its tensors: a known release when (levels, mid block,
    pe length) are exactly that release's (``version == family``, ``note`` None), else ``version="custom"``
    with the nearest release as ``family`` (its GroupNorm modes are used) and a one-line ``note``."""
    family = detect_version((), levels, has_mid, pe_len, source)
    if pe_len == RELEASE_PE[family]:
        return family, family, None
    note = (f"{source}: motion layout pe length {pe_len}, {'with' if has_mid else 'no'} mid block, {levels} levels "
            f"is not an AnimateDiff release; loaded as 'custom' (GroupNorm modes of {family}; release totals not "
            f"checked; up to {pe_len} frames)")
    return "custom", family, note


def _levels(keys) -> int:
    return len({int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.motion_modules\.", k))})


def convert_original(sd: Mapping[str, torch.Tensor], source: object = None,
                     version: Optional[str] = None) -> MotionWeights:
    """Original AnimateDiff state dict (``mm_sd_v15*.ckpt``, ``v3_sd15_mm``, ``mm_sdxl_v10_beta``) ->
    :class:`MotionWeights`. ``version`` overrides detection (needed only for files without ``pe``)."""
    pes = {k: v for k, v in sd.items() if ORIG_PE.match(k)}
    bad = sorted(k for k in sd if k not in pes and not ORIG_KEY.match(k))
    if bad:
        raise KeyMapError("not an AnimateDiff motion-module key", fmt="animatediff", source=source, unexpected=bad)
    pe_len = check_pe(pes, source) if pes else None
    has_mid = any(k.startswith("mid_block.motion_modules.") for k in sd)
    if pe_len is None:                 # no pe buffers: only a release name (v1/v3) can say the length
        family = detect_version(sd, _levels(sd), has_mid, RELEASE_PE.get(version or ""), source)
        detected, note, pe_len = family, None, RELEASE_PE[family]
    else:
        detected, family, note = classify(_levels(sd), has_mid, pe_len, source)
    if version is not None and version != detected:
        raise CheckpointError(f"{source}: motion_version={version!r} given, but the file's layout is {detected!r}")
    tensors = {orig_to_diffusers_key(k): v for k, v in sd.items() if k not in pes}
    return MotionWeights(tensors, detected, pe_len, "animatediff", str(source), ignored=sorted(pes),
                         family=family, note=note)


def read_motion_adapter(path: str | Path, variant: Optional[str] = None) -> MotionWeights:
    """diffusers ``MotionAdapter`` folder -> :class:`MotionWeights`. Layout from the tensors: levels and mid block
    from the keys (checked against ``config.json``), pe length from stored ``pos_embed.pe`` (checked and
    dropped) or else ``motion_max_seq_length``."""
    folder = read_diffusers_folder(path, classes=MOTION_CLASSES, subfolder="motion_adapter", variant=variant)
    pes = {k: v for k, v in folder.tensors.items() if k.endswith(".pos_embed.pe")}
    tensors = {k: v for k, v in folder.tensors.items() if k not in pes}
    cfg_len = int(folder.config.get("motion_max_seq_length", 32))
    pe_len = check_pe(pes, folder.path) if pes else cfg_len
    has_mid = any(k.startswith("mid_block.motion_modules.") for k in tensors)
    levels = _levels(tensors)
    cfg_mid = bool(folder.config.get("use_motion_mid_block", True))
    cfg_levels = len(folder.config.get("block_out_channels", (320, 640, 1280, 1280)))
    if (pe_len, has_mid, levels) != (cfg_len, cfg_mid, cfg_levels):
        raise CheckpointError(f"{folder.path}: the tensors hold pe length {pe_len}, mid block {has_mid}, {levels} "
                              f"levels but config.json says motion_max_seq_length={cfg_len}, use_motion_mid_block="
                              f"{cfg_mid}, {cfg_levels} block_out_channels")
    version, family, note = classify(levels, has_mid, pe_len, folder.path)
    return MotionWeights(tensors, version, pe_len, "motion_adapter", str(folder.path),
                         adapter_config=dict(folder.config), ignored=sorted(pes), family=family, note=note)


def read_motion(path: str | Path, version: Optional[str] = None) -> MotionWeights:
    """An original AnimateDiff file (``.ckpt/.safetensors``) or a diffusers ``MotionAdapter`` folder."""
    path = Path(path)
    if path.is_dir():
        weights = read_motion_adapter(path)
        if version is not None and version != weights.version:
            raise CheckpointError(f"{path}: motion_version={version!r} given, but the config says {weights.version!r}")
        return weights
    raw = read_checkpoint(path)
    fmt = require_format(raw.tensors, ("animatediff", "motion_lora"), path, "motion module")
    if fmt == "motion_lora":
        raise CheckpointError(f"{path}: this is a MotionLoRA (``*_lora.down/up`` keys), not a motion module; "
                              f"merge it with i2v.checkpoints.lora.merge_lora after loading the motion module")
    weights = convert_original(raw.tensors, path, version)
    weights.ignored += raw.skipped
    return weights


def motion_lora_target(key: str) -> Optional[tuple[str, str]]:
    """MotionLoRA key -> ``(diffusers module path, "down"|"up")``, e.g.
    ``down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.
    to_out_lora.up.weight`` -> ``("down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_out.0", "up")``;
    ``None`` when the key is not of that form."""
    m = re.match(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$", key)
    if m is None:
        return None
    proj = "to_out.0" if m.group(2) == "to_out" else m.group(2)
    return f"{orig_to_diffusers_key(m.group(1) + '.')}{proj}", m.group(3)
