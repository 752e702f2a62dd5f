"""DoverVQA (paper §4.1): DOVER's technical-quality output as a plug-in (reference §5).

No DOVER code or weights ship here (its repo is S-Lab non-commercial since 2024-08). ``DoverScorer`` imports the
``dover`` package from a checkout the user provides and loads ``DOVER.pth``; without them ``build_dover_scorer``
returns ``(None, reason)``, ``DoverVQA`` reports NaN per video and the tables print "n/a". Any object with
``score(frames_uint8 (T, H, W, 3)) -> {"technical_raw": float, "aesthetic_raw": float}`` can be used instead.
DoverVQA = mean over videos of the raw technical output r_t (the paper's 0.03–0.09 scale; unverified).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch
from torchmetrics import Metric

from i2v.utils.io import to_uint8

DOVER_MEAN = (123.675, 116.28, 103.53)
DOVER_STD = (58.395, 57.12, 57.375)


class VideoQualityScorer(Protocol):
    def score(self, frames_uint8: np.ndarray) -> dict[str, float]:
        """``(T, H, W, 3)`` uint8 RGB -> ``{"technical_raw": r_t, "aesthetic_raw": r_a}`` (unbounded regressions)."""


class DoverScorer:
    """The real DOVER (``VQAssessment/DOVER``), run like its ``evaluate_one_video.py`` with the ``val-l1080p``
    sampling of ``dover.yml``, but on decoded frames instead of a path.

    Args:
        repo_dir: a DOVER checkout (holds ``dover/`` and ``dover.yml``); its requirements must be installed.
        weights: ``DOVER.pth`` (state dict).
        branches: ``"technical"`` (default; DoverVQA needs only this, and it avoids DOVER's hard-coded ImageNet
            ConvNeXt download) or ``"technical,aesthetic"`` (needs ``convnext_tiny_1k_224_ema.pth`` already in
            ``$TORCH_HOME/hub/checkpoints``).
        seed: seeds torch/numpy before each video (fragment crops and long-video offsets are random).
    """

    def __init__(self, repo_dir: str, weights: str, device: str | torch.device = "cpu", seed: int = 0,
                 branches: str = "technical", opt_file: str = "dover.yml"):
        import yaml

        repo, wfile = Path(str(repo_dir)), Path(str(weights))
        if not (repo / "dover" / "__init__.py").is_file():
            raise FileNotFoundError(f"no DOVER checkout at {repo} (expected {repo}/dover/__init__.py; "
                                    "git clone https://github.com/VQAssessment/DOVER)")
        if not wfile.is_file():
            raise FileNotFoundError(f"DOVER weights not found: {wfile} (DOVER.pth from the DOVER v0.1.0 release)")
        if str(repo) not in sys.path:
            sys.path.insert(0, str(repo))
        try:
            from dover.datasets import UnifiedFrameSampler, get_single_view
            from dover.models import DOVER
        except ImportError as e:
            raise ImportError(f"cannot import DOVER from {repo}: {e}. Install its requirements "
                              "(timm, decord, scikit-video, ...) in this environment.") from e
        self._get_single_view = get_single_view
        opt = yaml.safe_load((repo / opt_file).read_text())
        self.branches = [b.strip() for b in branches.split(",") if b.strip()]
        args = dict(opt["model"]["args"], backbone_preserve_keys=",".join(self.branches))
        self.model = DOVER(**args).to(device).eval()
        sd = torch.load(wfile, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd)
        keep = {k: v for k, v in sd.items() if k.split("_")[0] in self.branches}
        missing, unexpected = self.model.load_state_dict(keep, strict=False)
        if missing or unexpected:
            raise ValueError(f"{wfile}: DOVER weights do not match ({len(missing)} missing, e.g. {missing[:3]}; "
                             f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})")
        dopt = opt["data"]["val-l1080p"]["args"]["sample_types"]
        self.sample_types = {k: v for k, v in dopt.items() if k in self.branches}
        self.samplers = {}
        for stype, s in self.sample_types.items():
            if "t_frag" not in s:
                self.samplers[stype] = UnifiedFrameSampler(s["clip_len"], s["num_clips"], s["frame_interval"])
            else:
                self.samplers[stype] = UnifiedFrameSampler(s["clip_len"] // s["t_frag"], s["t_frag"],
                                                           s["frame_interval"], s["num_clips"])
        self.device, self.seed = torch.device(device), seed
        self.description = f"DOVER {wfile.name} ({'+'.join(self.branches)})"

    @torch.no_grad()
    def score(self, frames_uint8: np.ndarray) -> dict[str, float]:
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        video = torch.from_numpy(np.ascontiguousarray(frames_uint8))           # (T, H, W, 3) uint8
        mean, std = torch.tensor(DOVER_MEAN), torch.tensor(DOVER_STD)
        views = {}
        for stype, sopt in self.sample_types.items():
            inds = self.samplers[stype](video.shape[0], False)
            clip = video[torch.as_tensor(inds, dtype=torch.long)].permute(3, 0, 1, 2)   # (C, T', H, W)
            v = self._get_single_view(clip, stype, **sopt)
            n_clips = sopt.get("num_clips", 1)
            v = ((v.permute(1, 2, 3, 0) - mean) / std).permute(3, 0, 1, 2)
            views[stype] = v.reshape(v.shape[0], n_clips, -1, *v.shape[2:]).transpose(0, 1).to(self.device)
        results = self.model(views)                                             # follows the dict's key order
        out = {f"{k}_raw": r.mean().item() for k, r in zip(views.keys(), results)}
        return {"technical_raw": out.get("technical_raw", math.nan),
                "aesthetic_raw": out.get("aesthetic_raw", math.nan)}


def build_dover_scorer(repo_dir: Optional[str], weights: Optional[str], device="cpu", seed: int = 0,
                       branches: str = "technical") -> tuple[Optional[DoverScorer], str]:
    """``(scorer, "")`` or ``(None, reason)`` when the checkout/weights are not given or cannot be loaded."""
    if not repo_dir or not weights:
        return None, ("DoverVQA skipped: set metrics.dover.repo_dir=<DOVER checkout> and metrics.dover.weights="
                      "<DOVER.pth> (not bundled: S-Lab non-commercial license)")
    try:
        return DoverScorer(repo_dir, weights, device, seed, branches), ""
    except (FileNotFoundError, ImportError, ValueError, KeyError) as e:
        return None, f"DoverVQA skipped: {e}"


class DoverVQA(Metric):
    """Mean raw DOVER technical score over videos (higher is better). With ``scorer=None`` every value is NaN and
    ``available`` is False (``reason`` says why)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, scorer: Optional[VideoQualityScorer], reason: str = "", **kwargs):
        super().__init__(**kwargs)
        self.scorer, self.reason = scorer, reason
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("aesthetic", default=[], dist_reduce_fx="cat")

    @property
    def available(self) -> bool:
        return self.scorer is not None

    def settings(self) -> dict:
        return {"value": "mean of raw technical output r_t", "available": self.available, "reason": self.reason,
                "scorer": getattr(self.scorer, "description", type(self.scorer).__name__)}

    @torch.no_grad()
    def score(self, video: torch.Tensor, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``video (B, F, 3, H, W)`` in [-1, 1] -> ``{"dover_vqa": (B,), "dover_aesthetic_raw": (B,)}``."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"DoverVQA expects video (B, F, 3, H, W), got {tuple(video.shape)}")
        tech, aes = [], []
        for v in video:
            if self.scorer is None:
                r = {"technical_raw": math.nan, "aesthetic_raw": math.nan}
            else:
                r = self.scorer.score(to_uint8(v))
            tech.append(float(r["technical_raw"]))
            aes.append(float(r.get("aesthetic_raw", math.nan)))
        dev = video.device
        return {"dover_vqa": torch.tensor(tech, device=dev), "dover_aesthetic_raw": torch.tensor(aes, device=dev)}

    def update(self, video: torch.Tensor, images: torch.Tensor | None = None) -> None:
        s = self.score(video)
        self.values.append(s["dover_vqa"])
        self.aesthetic.append(s["dover_aesthetic_raw"])

    def compute(self) -> torch.Tensor:
        vals = self.values if isinstance(self.values, torch.Tensor) else torch.cat(self.values)
        return vals.mean()
