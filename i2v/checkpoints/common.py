"""Safe checkpoint reading, format detection (reference/checkpoints.md §0) and the loaders' errors.

Files are read with ``safetensors`` or ``torch.load(weights_only=True)`` only; nothing else is unpickled.
Nested ``state_dict`` wrappers are unwrapped, nested dicts of tensors are flattened with ``.``
(IP-Adapter ``{"image_proj": sd, "ip_adapter": sd}`` -> ``image_proj.*``), and every non-tensor entry
(``global_step``, ``animatediff_config``, ...) is skipped *and listed* in :attr:`RawCheckpoint.skipped`.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SHOW = 5  # how many offending keys an error message names


class CheckpointError(ValueError):
    """A checkpoint cannot be read or used (names the file and the reason)."""


class UnknownFormatError(CheckpointError):
    """No rule of §0 recognises the keys."""


class KeyMapError(CheckpointError):
    """Source keys and model keys do not match one to one (missing, unexpected or wrongly shaped)."""

    def __init__(self, message: str, *, fmt: str, source: object = None, missing: Sequence[str] = (),
                 unexpected: Sequence[str] = (), shapes: Sequence[str] = ()):
        self.fmt, self.source = fmt, source
        self.missing, self.unexpected, self.shapes = list(missing), list(unexpected), list(shapes)
        parts = [f"{source}: " if source is not None else "", f"[format: {fmt}] {message}"]
        for what, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("wrong shape", self.shapes)):
            if keys:
                parts.append(f"; {len(keys)} {what} key(s), first: {keys[:SHOW]}")
        super().__init__("".join(parts))


@dataclass
class RawCheckpoint:
    """Flat tensors of one file plus what was deliberately not used."""

    path: Path
    tensors: dict[str, torch.Tensor]
    skipped: list[str] = field(default_factory=list)   # non-tensor entries, by (flattened) name
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header metadata


def _flatten(obj: Mapping, prefix: str, out: dict, skipped: list) -> None:
    for key, val in obj.items():
        name = f"{prefix}{key}"
        if isinstance(val, torch.Tensor):
            out[name] = val
        elif isinstance(val, Mapping) and any(isinstance(v, (torch.Tensor, Mapping)) for v in val.values()):
            _flatten(val, name + ".", out, skipped)
        else:
            skipped.append(name)


def unwrap_state_dict(obj: object, source: object = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Return ``(flat tensors, skipped non-tensor names)`` of a loaded object.

    ``state_dict`` wrappers are descended repeatedly; the wrapper's other entries (``global_step``...) are
    skipped and listed.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    skipped: list[str] = []
    while isinstance(obj.get("state_dict"), Mapping):
        skipped += [k for k in obj if k != "state_dict"]
        obj = obj["state_dict"]
    tensors: dict[str, torch.Tensor] = {}
    _flatten(obj, "", tensors, skipped)
    return tensors, skipped


def sniff_format(path: Path) -> Optional[str]:
    """``"pickle"`` (torch zip or legacy pickle), ``"safetensors"`` (8-byte header length + JSON) or None, from the
    first bytes, so a file with the wrong suffix gets a message about what it is (not "header too large")."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pickle"
    return None


def read_checkpoint(path: str | Path, prefixes: Optional[tuple[str, ...]] = None) -> RawCheckpoint:
    """Read a ``.safetensors`` or ``.ckpt/.pt/.pth/.bin`` file onto the CPU, safely. ``prefixes``: keep only
    the tensors whose names start with one of them (a safetensors file then reads only those). The content is
    sniffed first: a torch file named ``.safetensors`` (or the reverse) is an error that says so."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    kind = sniff_format(path)
    if path.suffix == ".safetensors" and kind == "pickle":
        raise CheckpointError(f"{path}: this is a torch pickle (.pth/.ckpt), not a safetensors file; give it "
                              f"its real suffix (e.g. rename to .pth) and it is read with torch.load(weights_only=True)")
    if path.suffix in PICKLE_SUFFIXES and kind == "safetensors":
        raise CheckpointError(f"{path}: this is a safetensors file; rename it to .safetensors")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys() if prefixes is None or k.startswith(prefixes)}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        return RawCheckpoint(path, tensors, [], meta)
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unknown file type {path.suffix!r}; expected .safetensors or "
                              f"one of {PICKLE_SUFFIXES}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds objects other than tensors and plain containers, "
            f"and only torch.load(weights_only=True) is allowed. Convert it to .safetensors with a trusted "
            f"tool first. Detail: {str(e).splitlines()[0]}") from e
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
    tensors, skipped = unwrap_state_dict(obj, path)
    if prefixes is not None:
        tensors = {k: v for k, v in tensors.items() if k.startswith(prefixes)}
    return RawCheckpoint(path, tensors, skipped)


# ----------------------------------------------------------------------------------------------- detection
def _any(keys: Iterable[str], pred) -> bool:
    return any(pred(k) for k in keys)


def detect_format(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Name the layout of a flat state dict per §0, or ``None``.

    Returns one of ``ip_adapter``, ``lora_kohya``, ``lora_peft``, ``motion_lora``, ``lora_diffusers_old``,
    ``ldm`` (prefixed single file), ``ldm_unet`` (bare LDM UNet), ``diffusers_unet``, ``unet3d`` (diffusers UNet
    + motion modules [+ IP-Adapter layers] in one dict, official_base.py), ``animatediff``,
    ``motion_adapter``, ``hotshot``, ``i2v_adapter``, ``vae_ldm``, ``vae_diffusers``.
    """
    keys = list(sd)
    if _any(keys, lambda k: k.startswith(("image_proj.", "ip_adapter."))):
        return "ip_adapter"
    if _any(keys, lambda k: k.endswith((".lora_down.weight", ".lora_up.weight"))):
        return "lora_kohya"
    if _any(keys, lambda k: k.endswith((".lora_A.weight", ".lora_B.weight"))):
        return "lora_peft"
    if _any(keys, lambda k: "_lora.down." in k or "_lora.up." in k):
        motion = _any(keys, lambda k: "motion_modules." in k)
        return "motion_lora" if motion else "lora_diffusers_old"
    if _any(keys, lambda k: k.startswith("model.diffusion_model.")):
        return "ldm"
    if "input_blocks.0.0.weight" in sd:
        return "ldm_unet"
    if "conv_in.weight" in sd and "down_blocks.0.resnets.0.conv1.weight" in sd:
        # motion modules inside: a whole AnimateDiff UNet3DConditionModel (the official I2V-Adapter merged base)
        return "unet3d" if _any(keys, lambda k: ".motion_modules." in k) else "diffusers_unet"
    if _any(keys, lambda k: "motion_modules." in k and (".temporal_transformer." in k or "pos_encoder.pe" in k)):
        return "animatediff"
    if _any(keys, lambda k: "motion_modules." in k and ".attn1." in k):
        return "motion_adapter"
    if _any(keys, lambda k: "temporal_attentions." in k):
        return "hotshot"
    if _any(keys, lambda k: k.endswith(("attn1.to_q_ff.weight", "attn1.to_out_ff.weight"))):
        return "i2v_adapter"
    if _any(keys, lambda k: k.startswith(("encoder.down.0.block.0.", "first_stage_model."))):
        return "vae_ldm"
    if _any(keys, lambda k: k.startswith("encoder.down_blocks.0.resnets.0.")):
        return "vae_diffusers"
    return None


def require_format(sd: Mapping[str, torch.Tensor], allowed: Sequence[str], source: object, role: str) -> str:
    """Detect the format and raise :class:`UnknownFormatError` unless it is one of ``allowed``."""
    fmt = detect_format(sd)
    if fmt not in allowed:
        what = f"detected format {fmt!r}" if fmt else "no known format"
        first = sorted(sd)[:SHOW]
        raise UnknownFormatError(f"{source}: {what} ({len(sd)} tensors, first keys {first}); "
                                 f"a {role} must be one of {list(allowed)}")
    return fmt


# ----------------------------------------------------------------------------------------------- loading
def check_keys(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], *, fmt: str,
               source: object) -> None:
    """Raise one :class:`KeyMapError` unless ``got`` has exactly the keys and shapes of ``expected``."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: file {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(got)) if tuple(got[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        raise KeyMapError("checkpoint does not match the model", fmt=fmt, source=source, missing=missing,
                          unexpected=unexpected, shapes=shapes)


def load_exact(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], *, fmt: str, source: object) -> int:
    """Copy ``sd`` into ``module`` after :func:`check_keys` (every key consumed, every tensor filled).

    Values are cast to each parameter's dtype and device. Returns the number of tensors loaded.
    """
    check_keys(module.state_dict(), sd, fmt=fmt, source=source)
    module.load_state_dict(dict(sd), strict=True)
    return len(sd)
