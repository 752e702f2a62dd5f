"""Toy-world metrics on synthetic moving-shape clips: the §4.4 ablation axes measured with ground truth in hand.

Videos are ``(B, F, 3, H, W)`` in [-1, 1]; the reference is the conditioning first frame ``(B, 3, H, W)``.
Colours come from the ground truth when given (``SyntheticVideos`` meta ``background``/``colour``), else from frame 1:
background = median of its one-pixel border, object = median of its pixels at least half as far from the background
as its farthest pixel (one object assumed). A pixel is "object" when its RGB distance to the object colour is below
half the object-background distance; "background" = outside the object mask dilated by one pixel (all pixels if that
is empty). Coverage = a pixel's position on the bg -> obj colour segment (the anti-aliasing alpha); object area and
centre are coverage-weighted over the dilated mask, so sub-pixel motion is measured accurately. Centres are
``(x, y)`` = (column, row) in pixels, as in ``SyntheticVideos``. Undefined values are NaN.

* identity (frames 2..F vs frame 1): ``bg_err`` mean |pixel - reference| on the background, the reference being
  frame 1's pixel where frame 1 shows background and the background colour under frame 1's object, so a textured
  background (``SyntheticVideos(texture=...)``) must be kept pixel for pixel, not just its colour (a second object
  counts as an error: the metric assumes one object); ``bg_err_affine`` the same after refitting each later frame's
  colour and contrast, channel by channel (the larger residual of the two least-squares affine fits, frame on
  reference and reference on frame): a frame that keeps the pattern in other colours or at another contrast scores
  ~0, one that flattens, loses or replaces it scores about its amplitude; ``obj_err`` mean |pixel - object colour| on
  the mask shrunk by one pixel; ``area_ratio`` min(a_i, a_1) / max(a_i, a_1); ``identity`` = mean_i
  exp(-bg_err_i / tau) * exp(-obj_err_i / tau) * area_ratio_i in [0, 1], tau = 0.25 (a frame that lost the object
  scores 0; without an object in frame 1 only the background factor is used).
* motion: ``step_px`` mean |c_{i+1} - c_i| over consecutive frames where both centres exist; ``total_px`` =
  |c_last - c_first| between the first and last frames with an object; ``net_px`` = ``total_px`` / the number of
  frames between those two (the object's net speed while it is tracked: centroid jitter, which ``step_px`` adds
  up, cancels, and frames where it is lost do not shorten it, as they do ``total_px``); ``direction_agree`` =
  cosine between that net motion and the given direction (0 when the net motion is under 0.5 px); ``traj_err_px``
  mean |c_i - gt_i|.
* stability: ``flicker`` mean |f_{i+1} - f_i| and ``bg_drift`` mean |f_i - f_1| over pixels outside both frames'
  object masks. ``lost_frac``: fraction of frames with an empty object mask.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torchmetrics import Metric

DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
Colors = tuple[torch.Tensor, torch.Tensor]  # (bg (B, 3), obj (B, 3)) in [-1, 1]
KEYS = ("identity", "bg_err", "bg_err_affine", "obj_err", "area_ratio", "step_px", "total_px", "net_px",
        "direction_agree", "traj_err_px", "flicker", "bg_drift", "lost_frac")


def _check_video(video: torch.Tensor, first: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if video.dim() != 5 or video.shape[2] != 3 or video.shape[1] < 2:
        raise ValueError(f"toy metrics expect video (B, F>=2, 3, H, W) in [-1, 1], got {tuple(video.shape)}")
    video = video.detach().float()
    first = video[:, 0] if first is None else first.detach().float().to(video.device)
    if first.shape != video[:, 0].shape:
        raise ValueError(f"first frame {tuple(first.shape)} does not match video frames {tuple(video[:, 0].shape)}")
    return video, first


def estimate_colors(first: torch.Tensor, min_contrast: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """first ``(B, 3, H, W)`` -> bg ``(B, 3)``, obj ``(B, 3)``, has_obj ``(B,)`` bool (some pixel is at least
    ``min_contrast`` (RGB L2) away from the background)."""
    border = torch.cat([first[..., 0, :], first[..., -1, :], first[..., :, 0], first[..., :, -1]], dim=-1)
    bg = border.median(dim=-1).values
    dist = (first - bg[..., None, None]).norm(dim=1).flatten(1)                        # (B, H*W)
    far = dist.max(dim=1).values
    cand = dist >= 0.5 * far[:, None]
    pix = first.flatten(2).masked_fill(~cand[:, None], float("nan"))               # (B, 3, H*W)
    return bg, pix.nanmedian(dim=-1).values, far >= min_contrast


def _reference(first: torch.Tensor, colors: Optional[tuple[torch.Tensor, torch.Tensor]], min_contrast: float):
    """bg, obj ``(B, 3)`` and has_obj ``(B,)``: given ground-truth ``colors`` = (bg, obj) in [-1, 1], else estimated."""
    if colors is None:
        return estimate_colors(first, min_contrast)
    bg, obj = (c.float().to(first.device).reshape(first.shape[0], 3) for c in colors)
    return bg, obj, (obj - bg).norm(dim=1) >= min_contrast


def object_masks(frames: torch.Tensor, bg: torch.Tensor, obj: torch.Tensor, has_obj: torch.Tensor) -> torch.Tensor:
    """frames ``(B, F, 3, H, W)`` -> object masks ``(B, F, H, W)`` bool (all False where ``has_obj`` is False)."""
    thresh = 0.5 * (obj - bg).norm(dim=1)                                            # (B,)
    close = (frames - obj[:, None, :, None, None]).norm(dim=2) < thresh[:, None, None, None]
    return close & has_obj[:, None, None, None]


def coverage(frames: torch.Tensor, bg: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """frames ``(B, F, 3, H, W)`` -> soft object coverage ``(B, F, H, W)`` in [0, 1]: the pixel's position on the
    bg -> obj colour segment (1 = object colour), i.e. the anti-aliasing alpha of a clean render."""
    axis = obj - bg
    t = ((frames - bg[:, None, :, None, None]) * axis[:, None, :, None, None]).sum(2)
    return (t / axis.pow(2).sum(1).clamp(min=1e-8)[:, None, None, None]).clamp(0, 1)


def _dilate(masks: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, F, H, W)`` grown by one pixel (3x3)."""
    return F.max_pool2d(masks.float().flatten(0, 1)[:, None], 3, stride=1, padding=1)[:, 0].view_as(masks) > 0


def _core(masks: torch.Tensor) -> torch.Tensor:
    """Masks shrunk by one pixel (anti-aliased rim removed); the mask itself where that leaves nothing."""
    core = ~_dilate(~masks)
    return torch.where(core.flatten(2).any(-1)[..., None, None], core, masks)


def _background(masks: torch.Tensor) -> torch.Tensor:
    """masks ``(B, F, H, W)`` -> background ``(B, F, H, W)``: outside the 1-px dilated mask; all pixels if empty."""
    bgm = ~_dilate(masks)
    return torch.where(bgm.flatten(2).any(-1)[..., None, None], bgm, torch.ones_like(bgm))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values/mask ``(..., H, W)`` -> ``(...)`` mean over the mask, NaN where the mask is empty."""
    n = mask.flatten(-2).sum(-1)
    s = (values * mask).flatten(-2).sum(-1)
    return torch.where(n > 0, s / n.clamp(min=1), torch.full_like(s, float("nan")))


def _affine_residual(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x, y ``(B, F, C, H, W)``, mask ``(B, F, H, W)`` -> ``(B, F)``: the larger of the two masked least-squares
    affine-fit residuals, mean |y - (a x + b)| and mean |x - (a' y + b')| over the mask and channels, with a, b per
    (B, F, C) (a = 0 where the regressor is flat)."""
    def mean(t):  # (B, F, C, 1, 1)
        return _masked_mean(t, mask[:, :, None])[..., None, None]

    dx, dy = x - mean(x), y - mean(y)
    var_x, var_y, cov = mean(dx * dx), mean(dy * dy), mean(dx * dy)

    def residual(d_out, d_in, var_in):
        gain = torch.where(var_in > 1e-8, cov / var_in.clamp(min=1e-8), torch.zeros_like(var_in))
        return _masked_mean((d_out - gain * d_in).abs().mean(2), mask)

    return torch.maximum(residual(dy, dx, var_x), residual(dx, dy, var_y))


def _soft_area(masks: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Object area ``(B, F)`` in pixels: coverage summed over the 1-px dilated mask (exact for anti-aliased renders)."""
    return (alpha * _dilate(masks)).flatten(2).sum(-1)


def centroids(masks: torch.Tensor, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
    """masks ``(B, F, H, W)`` (optional coverage ``alpha``: weights on the dilated mask, for sub-pixel accuracy)
    -> centres ``(B, F, 2)`` as (x, y) pixels; NaN where a mask is empty."""
    h, w = masks.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=masks.device),
                            torch.arange(w, dtype=torch.float32, device=masks.device), indexing="ij")
    wgt = masks.float() if alpha is None else alpha * _dilate(masks)
    total = wgt.flatten(2).sum(-1)
    ok = masks.flatten(2).any(-1) & (total > 0)
    cx, cy = ((wgt * g).flatten(2).sum(-1) / total.clamp(min=1e-8) for g in (xs, ys))
    return torch.where(ok[..., None], torch.stack([cx, cy], dim=-1), torch.full_like(cx[..., None], float("nan")))


def reference_background(first: torch.Tensor, ref_mask: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """What the background of every later frame should show, ``(B, 3, H, W)``: frame 1's own pixels outside its
    (1-px dilated) object mask, so a textured background must be kept pixel for pixel, and the background colour
    ``bg`` ``(B, 3)`` where frame 1's object hides it."""
    keep = ~_dilate(ref_mask[:, None])[:, 0]                                        # (B, H, W)
    return torch.where(keep[:, None], first, bg[:, :, None, None].expand_as(first))


def identity_consistency(video: torch.Tensor, first: Optional[torch.Tensor] = None, tau: float = 0.25,
                         min_contrast: float = 0.2, colors: Optional[Colors] = None) -> dict[str, torch.Tensor]:
    """video ``(B, F, 3, H, W)``, first ``(B, 3, H, W)`` (default ``video[:, 0]``) -> ``bg_err``, ``bg_err_affine``,
    ``obj_err``, ``area_ratio``, ``identity``: each ``(B,)``, averaged over frames 2..F (see the module docstring)."""
    video, first = _check_video(video, first)
    bg, obj, has_obj = _reference(first, colors, min_contrast)
    masks = object_masks(video[:, 1:], bg, obj, has_obj)                            # (B, F-1, H, W)
    ref = object_masks(first[:, None], bg, obj, has_obj)[:, 0]                       # (B, H, W)
    ref_bg, bg_mask = reference_background(first, ref, bg)[:, None], _background(masks)
    bg_err = _masked_mean((video[:, 1:] - ref_bg).abs().mean(2), bg_mask)
    # both ways round: frame on reference forgives colour and contrast; reference on frame keeps a lost pattern lost
    bg_err_affine = _affine_residual(ref_bg.expand_as(video[:, 1:]), video[:, 1:], bg_mask)
    obj_err = _masked_mean((video[:, 1:] - obj[:, None, :, None, None]).abs().mean(2), _core(masks))
    area = _soft_area(masks, coverage(video[:, 1:], bg, obj))                       # (B, F-1)
    area_ref = _soft_area(ref[:, None], coverage(first[:, None], bg, obj))          # (B, 1)
    ratio = torch.minimum(area, area_ref) / torch.maximum(area, area_ref).clamp(min=1e-6)
    obj_factor = torch.where(area > 0, torch.exp(-obj_err.nan_to_num(0.0) / tau) * ratio, torch.zeros_like(ratio))
    obj_factor = torch.where(has_obj[:, None], obj_factor, torch.ones_like(obj_factor))
    per_frame = torch.exp(-bg_err / tau) * obj_factor
    nan = torch.full_like(ratio[:, 0], float("nan"))
    return {"bg_err": bg_err.mean(1), "bg_err_affine": bg_err_affine.mean(1), "obj_err": obj_err.nanmean(1),
            "area_ratio": torch.where(has_obj, ratio.mean(1), nan), "identity": per_frame.mean(1)}


def direction_vectors(directions: Union[Sequence[str], torch.Tensor]) -> torch.Tensor:
    """Direction words (or captions containing one of left/right/up/down) or vectors ``(B, 2)`` -> unit ``(B, 2)``
    in image coordinates (x right, y down); NaN rows where no direction is found."""
    if isinstance(directions, torch.Tensor):
        d = directions.float().reshape(-1, 2)
        return d / d.norm(dim=1, keepdim=True)
    out = []
    for text in directions:
        words = str(text).lower().replace(",", " ").replace(".", " ").split()
        hit = next((DIRECTIONS[w] for w in words if w in DIRECTIONS), (math.nan, math.nan))
        out.append(hit)
    return torch.tensor(out, dtype=torch.float32)


def motion_amplitude(video: torch.Tensor, first: Optional[torch.Tensor] = None,
                     direction: Optional[torch.Tensor] = None, centers: Optional[torch.Tensor] = None,
                     min_contrast: float = 0.2, colors: Optional[Colors] = None) -> dict[str, torch.Tensor]:
    """video ``(B, F, 3, H, W)``; direction unit ``(B, 2)`` (NaN rows = unknown); ground-truth centers ``(B, F, 2)``
    -> ``step_px``, ``total_px``, ``net_px``, ``direction_agree``, ``traj_err_px``, ``lost_frac``, each ``(B,)``."""
    video, first = _check_video(video, first)
    bg, obj, has_obj = _reference(first, colors, min_contrast)
    masks = object_masks(video, bg, obj, has_obj)
    c = centroids(masks, coverage(video, bg, obj))                                  # (B, F, 2)
    valid = ~c.isnan().any(-1)                                                       # (B, F)
    step = (c[:, 1:] - c[:, :-1]).norm(dim=-1)                                       # NaN where either is lost
    idx = torch.arange(c.shape[1], device=c.device)
    first_i = torch.where(valid, idx, c.shape[1]).min(1).values.clamp(max=c.shape[1] - 1)
    last_i = torch.where(valid, idx, -1).max(1).values.clamp(min=0)
    b = torch.arange(c.shape[0], device=c.device)
    net = c[b, last_i] - c[b, first_i]
    net = torch.where((valid.sum(1) >= 2)[:, None], net, torch.full_like(net, float("nan")))
    total = net.norm(dim=1)
    nan = torch.full_like(total, float("nan"))
    agree = nan
    if direction is not None:
        d = direction.float().to(c.device).reshape(-1, 2)
        cos = (net * d).sum(1) / total.clamp(min=1e-6)
        agree = torch.where(total < 0.5, torch.zeros_like(cos), cos)
        agree = torch.where(d.isnan().any(1) | total.isnan(), nan, agree)
    traj = nan
    if centers is not None:
        gt = centers.float().to(c.device).reshape(c.shape)
        traj = (c - gt).norm(dim=-1).nanmean(1)
    return {"step_px": step.nanmean(1), "total_px": total, "net_px": total / (last_i - first_i).clamp(min=1),
            "direction_agree": agree, "traj_err_px": traj, "lost_frac": (~valid).float().mean(1)}


def temporal_stability(video: torch.Tensor, first: Optional[torch.Tensor] = None, min_contrast: float = 0.2,
                       colors: Optional[Colors] = None) -> dict[str, torch.Tensor]:
    """video ``(B, F, 3, H, W)`` -> ``flicker`` (consecutive frames) and ``bg_drift`` (frames 2..F vs frame 1),
    mean |difference| on pixels outside both frames' object masks, each ``(B,)``."""
    video, first = _check_video(video, first)
    bg, obj, has_obj = _reference(first, colors, min_contrast)
    masks = object_masks(video, bg, obj, has_obj)
    ref = object_masks(first[:, None], bg, obj, has_obj)
    pair_bg = _background(masks[:, 1:] | masks[:, :-1])
    flicker = _masked_mean((video[:, 1:] - video[:, :-1]).abs().mean(2), pair_bg).mean(1)
    drift_bg = _background(masks[:, 1:] | ref)
    drift = _masked_mean((video[:, 1:] - first[:, None]).abs().mean(2), drift_bg).mean(1)
    return {"flicker": flicker, "bg_drift": drift}


def toy_video_metrics(video: torch.Tensor, first: Optional[torch.Tensor] = None,
                      direction: Optional[torch.Tensor] = None, centers: Optional[torch.Tensor] = None,
                      tau: float = 0.25, min_contrast: float = 0.2, colors: Optional[Colors] = None
                      ) -> dict[str, torch.Tensor]:
    """All per-video toy metrics (``KEYS``), each ``(B,)``; ``colors`` = ground-truth (bg, obj) ``(B, 3)`` each in
    [-1, 1] (default: estimated from the first frame). See the module docstring."""
    out = identity_consistency(video, first, tau, min_contrast, colors)
    out.update(motion_amplitude(video, first, direction, centers, min_contrast, colors))
    out.update(temporal_stability(video, first, min_contrast, colors))
    return out


def _color_tensor(val: Any, batch: int) -> torch.Tensor:
    """Colour names of ``i2v.data.synthetic.COLOURS`` or values in [-1, 1] -> ``(B, 3)``."""
    if isinstance(val, str):
        val = [val]
    if isinstance(val, (list, tuple)) and val and isinstance(val[0], str):
        from i2v.data.synthetic import COLOURS

        unknown = [v for v in val if v not in COLOURS]
        if unknown:
            raise ValueError(f"toy metrics: unknown colour names {unknown}; expected one of {list(COLOURS)}")
        return torch.tensor([COLOURS[v] for v in val], dtype=torch.float32) / 127.5 - 1.0
    if isinstance(val, (list, tuple)):
        val = torch.stack([torch.as_tensor(v) for v in val])
    return torch.as_tensor(val).float().reshape(batch, 3)


def reference_from_meta(meta: Any, batch: int) -> dict[str, Any]:
    """Collated meta (dict of lists/tensors) or a list of per-video dicts (``SyntheticVideos`` items' ``meta``) ->
    ``{"direction": (B, 2) | None, "centers": (B, F, 2) | None, "colors": (bg, obj) | None}``. Direction from
    ``direction`` (word or vector), else ``caption``/``prompt``/``text``; centres from ``centers``/``centres``
    (pixels, (x, y)); colours from ``background`` and ``colour``/``color`` (names or values in [-1, 1])."""
    ref: dict[str, Any] = {"direction": None, "centers": None, "colors": None}
    if meta is None:
        return ref
    if isinstance(meta, (list, tuple)):
        meta = {k: [m[k] for m in meta] for k in meta[0]} if meta else {}
    if not isinstance(meta, dict):
        raise TypeError(f"toy metrics meta must be a dict or a list of dicts, got {type(meta).__name__}")
    for key in ("direction", "caption", "prompt", "text"):
        val = meta.get(key)
        if val is None:
            continue
        if isinstance(val, str):
            val = [val]
        if isinstance(val, (list, tuple)) and val and isinstance(val[0], torch.Tensor):
            val = torch.stack([torch.as_tensor(v) for v in val])
        ref["direction"] = direction_vectors(val)
        if ref["direction"].shape[0] != batch:
            raise ValueError(f"meta gives {ref['direction'].shape[0]} directions for a batch of {batch} videos")
        break
    centers = next((meta[k] for k in ("centers", "centres") if meta.get(k) is not None), None)
    if centers is not None:
        centers = torch.stack([torch.as_tensor(v) for v in centers]) if isinstance(centers, (list, tuple)) \
            else torch.as_tensor(centers)
        ref["centers"] = centers.reshape(batch, -1, 2)
    obj = next((meta[k] for k in ("colour", "color") if meta.get(k) is not None), None)
    if obj is not None and meta.get("background") is not None:
        ref["colors"] = (_color_tensor(meta["background"], batch), _color_tensor(obj, batch))
    return ref


class ToyMetrics(Metric):
    """Accumulates :func:`toy_video_metrics` over batches; ``compute()`` -> {key: mean over videos where the value
    is defined (NaN if none)} plus ``n_videos``, ``n_<key>`` (videos with a defined value) and ``lost_frames``."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, tau: float = 0.25, min_contrast: float = 0.2, **kwargs: Any):
        super().__init__(**kwargs)
        self.tau, self.min_contrast = tau, min_contrast
        for key in KEYS:
            self.add_state(f"sum_{key}", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"n_{key}", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("n_videos", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("lost_frames", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, video: torch.Tensor, first_frame: Optional[torch.Tensor] = None, meta: Any = None) -> None:
        """video ``(B, F, 3, H, W)`` in [-1, 1]; first_frame ``(B, 3, H, W)`` (default frame 0); meta: see
        :func:`reference_from_meta`."""
        ref = reference_from_meta(meta, video.shape[0])
        vals = toy_video_metrics(video, first_frame, ref["direction"], ref["centers"], self.tau, self.min_contrast,
                                 ref["colors"])
        for key in KEYS:
            v = vals[key].double()
            ok = ~v.isnan()
            setattr(self, f"sum_{key}", getattr(self, f"sum_{key}") + v[ok].sum())
            setattr(self, f"n_{key}", getattr(self, f"n_{key}") + ok.sum())
        self.n_videos += video.shape[0]
        self.lost_frames += (vals["lost_frac"].double() * video.shape[1]).round().sum()

    def compute(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key in KEYS:
            n = getattr(self, f"n_{key}")
            mean = getattr(self, f"sum_{key}") / n.clamp(min=1)
            out[key] = torch.where(n > 0, mean, torch.full_like(mean, float("nan"))).float()
            out[f"n_{key}"] = n
        out["n_videos"], out["lost_frames"] = self.n_videos, self.lost_frames.round().long()
        return out
