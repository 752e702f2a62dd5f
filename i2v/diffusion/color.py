"""LAB colour-histogram matching of generated frames to a reference image (optional post-processing).

The official release (KwaiVGI/I2V-Adapter ``inference.py`` + ``src/utils/util.py:color_match_frames``) matches, for
every frame f ≥ 1, the histograms of the LAB ``a`` and ``b`` channels to those of the **decoded frame 0** (the VAE
reconstruction of the input image, ``video[0, :, 0]`` of the pipeline output, not the input pixels) and keeps the
frame's own lightness ``L`` (OpenCV ``cvtColor`` on uint8 images plus a ``np.interp`` CDF mapping). Here the same
per-channel CDF matching runs in pure torch on float CIELAB (sRGB, D65; the official code feeds RGB arrays to
OpenCV's BGR converter, a channel-order slip we do not copy) without uint8 quantisation. ``channels="ab"`` is the
official behaviour; ``"lab"`` also matches lightness. :func:`color_match` picks the reference:
``"decoded_frame0"`` (official) or ``"input"`` (the input image itself).
"""
from __future__ import annotations

import torch

# sRGB (linear) -> XYZ, D65 white point
_RGB2XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)
_EPS = 0.008856
_KAPPA = 7.787


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` sRGB in [0, 1] → CIELAB ``(..., 3, H, W)`` (L in [0, 100], a/b roughly [-128, 127])."""
    x = rgb.double().clamp(0, 1)
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = torch.einsum("ij,...jhw->...ihw", _RGB2XYZ.to(x.device), lin) / _WHITE.to(x.device)[:, None, None]
    f = torch.where(xyz > _EPS, xyz.clamp_min(1e-12) ** (1 / 3), _KAPPA * xyz + 16 / 116)
    fx, fy, fz = f.unbind(-3)
    lab = torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)
    return lab.to(rgb.dtype)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`; ``(..., 3, H, W)`` → sRGB clamped to [0, 1]."""
    l, a, b = lab.double().unbind(-3)
    fy = (l + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
    xyz = torch.where(f > _EPS ** (1 / 3), f ** 3, (f - 16 / 116) / _KAPPA) * _WHITE.to(lab.device)[:, None, None]
    lin = torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(_RGB2XYZ).to(lab.device), xyz).clamp(0, 1)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin ** (1 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0, 1).to(lab.dtype)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """1-D linear interpolation like ``np.interp`` (``xp`` increasing; clamps outside)."""
    idx = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    w = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return y0 + w * (y1 - y0)


def match_histogram(source: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Monotone remap of ``source`` values so that their empirical CDF matches ``template``'s (1-D, any sizes).

    A value's quantile is the fraction of source values ≤ it; it is mapped through the template's quantile
    function (linear interpolation between the template's sorted unique values), as the official ``np.interp``.
    """
    src = source.reshape(-1).double()
    s_sorted = torch.sort(src).values
    q = torch.searchsorted(s_sorted, src, right=True).double() / src.numel()
    t_vals, t_counts = torch.unique(template.reshape(-1).double(), return_counts=True)
    t_q = torch.cumsum(t_counts, 0).double() / t_counts.sum()
    if t_vals.numel() == 1:
        return torch.full_like(source, float(t_vals[0]))
    return _interp(q, t_q, t_vals).reshape(source.shape).to(source.dtype)


def color_match_video(frames: torch.Tensor, reference: torch.Tensor | None = None,
                      channels: str = "ab") -> torch.Tensor:
    """Match every frame's LAB histograms to the reference image.

    Args:
        frames: ``(B, F, 3, H, W)`` in [-1, 1]; frame 0 is the input image.
        reference: ``(B, 3, H, W)`` in [-1, 1]; default ``frames[:, 0]``.
        channels: ``"ab"`` (official: chroma only, keep each frame's lightness) or ``"lab"``.
    Returns:
        ``(B, F, 3, H, W)`` in [-1, 1]; frame 0 is returned unchanged when it is the reference.
    """
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be (B, F, 3, H, W), got shape {tuple(frames.shape)}")
    if channels not in ("ab", "lab"):
        raise ValueError(f"channels must be 'ab' or 'lab', got {channels!r}")
    ref_is_frame0 = reference is None
    ref = frames[:, 0] if reference is None else reference
    if ref.shape[0] != frames.shape[0] or ref.shape[1] != 3:
        raise ValueError(f"reference must be (B={frames.shape[0]}, 3, H, W), got shape {tuple(ref.shape)}")
    lab = rgb_to_lab((frames + 1) / 2)
    ref_lab = rgb_to_lab((ref + 1) / 2)
    out = lab.clone()
    idx = (0, 1, 2) if channels == "lab" else (1, 2)
    for bi in range(frames.shape[0]):
        for f in range(1 if ref_is_frame0 else 0, frames.shape[1]):
            for c in idx:
                out[bi, f, c] = match_histogram(lab[bi, f, c], ref_lab[bi, c])
    result = lab_to_rgb(out) * 2 - 1
    if ref_is_frame0:
        result[:, 0] = frames[:, 0]
    return result


COLOR_REFERENCES = ("input", "decoded_frame0")


def color_match(video: torch.Tensor, image: torch.Tensor, reference: str = "input",
                channels: str = "ab") -> torch.Tensor:
    """Colour-match one generated video. ``video`` ``(F, 3, H, W)`` and ``image`` ``(3, H, W)``, both in [-1, 1].

    ``reference="input"`` matches every frame (frame 0 included) to the input image; ``"decoded_frame0"`` (the
    official choice) matches frames 1.. to the decoded frame 0 and leaves frame 0 as decoded."""
    if reference not in COLOR_REFERENCES:
        raise ValueError(f"colour-match reference must be one of {COLOR_REFERENCES}, got {reference!r}")
    ref = None if reference == "decoded_frame0" else image[None].to(video)
    return color_match_video(video[None], ref, channels=channels)[0]
