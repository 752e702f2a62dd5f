"""Optical-flow metrics (paper §4.1, EvalCrafter protocol): FlowScore and WarpingError on torchvision RAFT.

- ``RaftFlow``: torchvision ``raft_large`` from a local C_T_V1 state dict (torchvision's port of princeton
  ``raft-things.pth``), 20 flow updates, inputs in [-1, 1], replicate-padded to a multiple of 8 ("sintel" split).
- ``FlowScore``: mean |flow| over consecutive pairs at native resolution (EvalCrafter ``calculate_flow_score``).
- ``WarpingError``: masked squared warp residual at half resolution with the forward-backward + motion-boundary
  occlusion mask of ``fast_blind_video_consistency`` (EvalCrafter ``compute_video_warping_error``).
Any ``flow_fn(frames_a, frames_b) -> (N, 2, H, W)`` (pixels, x then y; ``b(p + flow(p)) ≈ a(p)``) can replace RAFT.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torchmetrics import Metric

RAFT_FILE = "raft_large_C_T_V1-22a6c225.pth"
RAFT_URL = f"https://download.pytorch.org/models/{RAFT_FILE}"
FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- padding and warping
def sintel_pads(h: int, w: int, multiple: int = 8, min_size: int = 0) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) that bring (h, w) to a multiple of ``multiple`` (and at least ``min_size``),
    split between both sides like princeton RAFT's ``InputPadder(mode="sintel")``."""
    th = max(-(-h // multiple) * multiple, min_size)
    tw = max(-(-w // multiple) * multiple, min_size)
    ph, pw = th - h, tw - w
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def pad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Replicate-pad ``(N, C, H, W)`` by ``pads`` = (left, right, top, bottom)."""
    return F.pad(x, pads, mode="replicate") if any(pads) else x


def unpad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Inverse of ``pad`` on ``(N, C, H', W')``."""
    l, r, t, b = pads
    return x[..., t:x.shape[-2] - b, l:x.shape[-1] - r]


def backward_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``out(p) = x(p + flow(p))``: bilinear, coordinates clamped to the border (= flownet2 ``Resample2d``).
    ``x (N, C, H, W)``, ``flow (N, 2, H, W)`` in pixels (channel 0 = x)."""
    n, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = 2 * (xs + flow[:, 0]) / max(w - 1, 1) - 1
    gy = 2 * (ys + flow[:, 1]) / max(h - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x.to(flow.dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)


def occlusion_mask(fw: torch.Tensor, bw: torch.Tensor) -> torch.Tensor:
    """Occluded pixels ``(N, H, W)`` bool on frame 1's grid (``warp_utils.detect_occlusion`` as EvalCrafter calls it).

    b̃ = bw(p + fw(p));  fw-bw check: |fw + b̃|² > 0.01 (|fw|² + |b̃|²) + 0.5;
    motion boundary: Σ (forward differences of fw along x and y)² > 0.01 |fw|² + 0.002 (0 in last column/row).
    """
    bw_w = backward_warp(bw, fw)
    sq = lambda v: (v ** 2).sum(1)  # noqa: E731
    mask1 = sq(fw + bw_w) > 0.01 * (sq(bw_w) + sq(fw)) + 0.5
    dx = torch.zeros_like(fw)
    dy = torch.zeros_like(fw)
    dx[..., :, :-1] = fw[..., :, :-1] - fw[..., :, 1:]
    dy[..., :-1, :] = fw[..., :-1, :] - fw[..., 1:, :]
    mask2 = (sq(dx) + sq(dy)) > 0.01 * sq(fw) + 0.002
    return mask1 | mask2


# --------------------------------------------------------------------------- RAFT
@dataclass
class RaftConfig:
    weights: Optional[str] = None      # local torchvision raft_large state dict (C_T_V1 = raft-things port)
    num_flow_updates: int = 20         # EvalCrafter: iters=20
    batch_size: int = 8                # frame pairs per forward
    min_size: int = 128                # pad (replicate) smaller inputs up to this (torchvision's 4-level pyramid
                                       # refuses feature maps under 16 px, i.e. inputs under 128 px)
    allow_random: bool = False         # weights=None -> random init (tests and benchmarks only)


class RaftFlow(nn.Module):
    """``flow_fn`` on torchvision ``raft_large``: ``(N, 3, H, W), (N, 3, H, W)`` in [-1, 1] -> ``(N, 2, H, W)``.
    Inputs are replicate-padded to a multiple of 8 (and ``min_size``) and the flow is cropped back."""

    def __init__(self, cfg: RaftConfig = RaftConfig()):
        super().__init__()
        from torchvision.models.optical_flow import raft_large

        self.cfg = cfg
        self.model = raft_large(weights=None, progress=False)
        if cfg.weights is None:
            if not cfg.allow_random:
                raise _missing_raft(None)
            self.description = "torchvision raft_large (RANDOM weights)"
        else:
            self.model.load_state_dict(load_raft_state_dict(cfg.weights))
            self.description = f"torchvision raft_large {Path(cfg.weights).name}"
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, frames_a: torch.Tensor, frames_b: torch.Tensor) -> torch.Tensor:
        if frames_a.shape != frames_b.shape or frames_a.ndim != 4 or frames_a.shape[1] != 3:
            raise ValueError(f"RaftFlow expects two (N, 3, H, W) batches, got {tuple(frames_a.shape)} and "
                             f"{tuple(frames_b.shape)}")
        lo, hi = min(frames_a.min(), frames_b.min()).item(), max(frames_a.max(), frames_b.max()).item()
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"RaftFlow expects pixels in [-1, 1], got range [{lo:.3g}, {hi:.3g}] "
                             "(uint8 frames: x / 127.5 - 1)")
        pads = sintel_pads(*frames_a.shape[-2:], 8, self.cfg.min_size)
        dtype = next(self.model.parameters()).dtype
        out = []
        for a, b in zip(frames_a.split(self.cfg.batch_size), frames_b.split(self.cfg.batch_size)):
            a, b = pad(a.to(dtype), pads), pad(b.to(dtype), pads)
            out.append(self.model(a, b, num_flow_updates=self.cfg.num_flow_updates)[-1].float())
        return unpad(torch.cat(out), pads)


def _missing_raft(path) -> FileNotFoundError:
    return FileNotFoundError(
        f"RAFT weights not found: {path!s}. FlowScore/WarpingError need torchvision's raft_large C_T_V1 state dict "
        f"'{RAFT_FILE}' ({RAFT_URL}), the port of princeton raft-things.pth that EvalCrafter uses. Download it once "
        "and set metrics.flow.weights=<path>, or disable the flow metrics (metrics.flow.enabled=false).")


def load_raft_state_dict(path: str) -> dict:
    """Load a torchvision-format raft_large state dict with ``torch.load(weights_only=True)``."""
    p = Path(str(path))
    if not p.is_file():
        raise _missing_raft(p)
    sd = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"{p}: expected a raft_large state dict, got {type(sd).__name__}")
    if any(k.startswith("module.") for k in sd) or "fnet.conv1.weight" in sd:
        raise ValueError(f"{p} looks like princeton RAFT (raft-things.pth: 'module.fnet...' keys), which does not "
                         f"load into torchvision; use torchvision's port '{RAFT_FILE}' ({RAFT_URL}).")
    return sd


# --------------------------------------------------------------------------- metrics
def _pairs(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, F, 3, H, W)`` -> frames 1..F-1 and 2..F as ``((B·(F-1)), 3, H, W)`` each."""
    if video.ndim != 5 or video.shape[2] != 3 or video.shape[1] < 2:
        raise ValueError(f"expected video (B, F>=2, 3, H, W), got {tuple(video.shape)}")
    a = rearrange(video[:, :-1], "b f c h w -> (b f) c h w")
    b = rearrange(video[:, 1:], "b f c h w -> (b f) c h w")
    return a, b


def _cat(values) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.cat(values)


class FlowScore(Metric):
    """Mean optical-flow magnitude (pixels per frame step at the video's resolution) over consecutive pairs.

    ``unpad=False`` (EvalCrafter): the mean runs over the padded grid (replicate-padded to ``pad_multiple``);
    ``unpad=True``: over the original pixels only. Identical when H, W are multiples of 8 (512² videos)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, flow_fn: FlowFn, unpad: bool = False, pad_multiple: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.flow_fn, self.unpad, self.pad_multiple = flow_fn, unpad, pad_multiple
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def settings(self) -> dict:
        return {"unpad": self.unpad, "pad_multiple": self.pad_multiple, "pairs": "consecutive",
                "flow": getattr(self.flow_fn, "description", type(self.flow_fn).__name__)}

    @torch.no_grad()
    def score(self, video: torch.Tensor, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``video (B, F, 3, H, W)`` in [-1, 1] -> ``{"flow_score": (B,)}``."""
        a, b = _pairs(video)
        if not self.unpad:
            pads = sintel_pads(*a.shape[-2:], self.pad_multiple)
            a, b = pad(a, pads), pad(b, pads)
        flow = self.flow_fn(a, b)
        mag = flow.float().norm(dim=1).mean(dim=(-2, -1))
        return {"flow_score": rearrange(mag, "(b f) -> b f", b=video.shape[0]).mean(-1)}

    def update(self, video: torch.Tensor, images: torch.Tensor | None = None) -> None:
        self.values.append(self.score(video)["flow_score"])

    def compute(self) -> torch.Tensor:
        return _cat(self.values).mean()


class WarpingError(Metric):
    """Masked warp error of frame i+1 warped onto frame i, averaged over pairs and videos (lower is better).

    Per pair on [0, 1] pixels at ``resize`` × resolution: E = Σ_p Σ_c M(p)(I2(p + fw(p)) − I1(p))² / Σ_p M(p)
    (3·H·W if no pixel is visible), M = not ``occlusion_mask(fw, bw)``.

    Args:
        flow_fn: flow on [-1, 1] inputs (RaftFlow).
        raft_input: ``"evalcrafter"`` feeds what EvalCrafter's princeton RAFT sees, 2·(x/255) − 1 of the [0, 1]
            image (nearly constant: the known quirk); ``"fixed"`` feeds the image properly (2x − 1).
        resize: bilinear scale factor before flow and error (EvalCrafter 0.5, align_corners=False).
        unpad: False = EvalCrafter (error on the replicate-padded grid); True = original pixels only.
        scale: multiplies the reported ``warping_error`` (the paper's scale is unverified: 255² reads it as
            [0, 255] pixels, 1e4 as rescaled); raw, ×255² and ×1e4 are always reported too.
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, flow_fn: FlowFn, raft_input: str = "evalcrafter", resize: float = 0.5, unpad: bool = False,
                 scale: float = 1.0, pad_multiple: int = 8, **kwargs):
        super().__init__(**kwargs)
        if raft_input not in ("evalcrafter", "fixed"):
            raise ValueError(f"raft_input must be 'evalcrafter' or 'fixed', got {raft_input!r}")
        self.flow_fn, self.raft_input, self.resize = flow_fn, raft_input, resize
        self.unpad, self.scale, self.pad_multiple = unpad, float(scale), pad_multiple
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def settings(self) -> dict:
        return {"raft_input": self.raft_input, "resize": self.resize, "unpad": self.unpad, "scale": self.scale,
                "pixel_range": "[0,1]", "pad_multiple": self.pad_multiple,
                "flow": getattr(self.flow_fn, "description", type(self.flow_fn).__name__)}

    def _variants(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"warping_error": raw * self.scale, "warping_error_raw": raw,
                "warping_error_x255sq": raw * 255.0 ** 2, "warping_error_x1e4": raw * 1e4}

    @torch.no_grad()
    def pair_errors(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``video (B, F, 3, H, W)`` -> raw per-pair errors ``(B, F-1)`` and visibility masks ``(B·(F-1), H', W')``."""
        i1, i2 = _pairs((video.float() + 1) / 2)
        if self.resize != 1:
            i1 = F.interpolate(i1, scale_factor=self.resize, mode="bilinear", align_corners=False)
            i2 = F.interpolate(i2, scale_factor=self.resize, mode="bilinear", align_corners=False)
        if not self.unpad:
            pads = sintel_pads(*i1.shape[-2:], self.pad_multiple)
            i1, i2 = pad(i1, pads), pad(i2, pads)
        to_raft = (lambda x: 2 * x / 255 - 1) if self.raft_input == "evalcrafter" else (lambda x: 2 * x - 1)
        n = i1.shape[0]
        flows = self.flow_fn(torch.cat([to_raft(i1), to_raft(i2)]), torch.cat([to_raft(i2), to_raft(i1)])).float()
        fw, bw = flows[:n], flows[n:]
        visible = (~occlusion_mask(fw, bw)).float()
        diff2 = ((backward_warp(i2, fw) - i1) * visible[:, None]) ** 2
        count = visible.sum(dim=(-2, -1))
        count = torch.where(count > 0, count, torch.full_like(count, 3 * visible.shape[-2] * visible.shape[-1]))
        err = diff2.sum(dim=(1, 2, 3)) / count
        return rearrange(err, "(b f) -> b f", b=video.shape[0]), visible

    def score(self, video: torch.Tensor, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``video (B, F, 3, H, W)`` in [-1, 1] -> ``{"warping_error": (B,), "..._raw", "..._x255sq", "..._x1e4",
        "warping_visible": (B,)}``; the last is the mean non-occluded fraction (near 0: the error is degenerate)."""
        errs, visible = self.pair_errors(video)
        vis = rearrange(visible.mean(dim=(-2, -1)), "(b f) -> b f", b=video.shape[0]).mean(-1)
        return {**self._variants(errs.mean(-1)), "warping_visible": vis}

    def update(self, video: torch.Tensor, images: torch.Tensor | None = None) -> None:
        self.values.append(self.pair_errors(video)[0].mean(-1))

    def compute(self) -> dict[str, torch.Tensor]:
        return self._variants(_cat(self.values).mean())
