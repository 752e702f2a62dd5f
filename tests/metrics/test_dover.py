"""DoverVQA plug-in: a stub scorer, the "n/a" path without a DOVER checkout, uint8 conversion."""
import math
import sys

import numpy as np
import pytest
import torch

from i2v.metrics.dover import DOVER_MEAN, DOVER_STD, DoverScorer, DoverVQA, build_dover_scorer


class MeanBrightness:
    """Stub VideoQualityScorer: technical = mean pixel / 255, aesthetic = number of frames; records its input."""

    def __init__(self):
        self.seen = []

    def score(self, frames_uint8):
        self.seen.append(frames_uint8)
        return {"technical_raw": float(frames_uint8.mean()) / 255.0, "aesthetic_raw": float(len(frames_uint8))}


def test_stub_scorer_gets_uint8_thwc_and_metric_averages():
    stub = MeanBrightness()
    m = DoverVQA(stub)
    video = torch.full((2, 3, 3, 8, 10), -1.0)
    video[1] = 1.0
    out = m.score(video)
    f = stub.seen[0]
    assert isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.shape == (3, 8, 10, 3)
    torch.testing.assert_close(out["dover_vqa"], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out["dover_aesthetic_raw"], torch.tensor([3.0, 3.0]))
    m.update(video)
    assert m.compute().item() == pytest.approx(0.5)
    assert m.available and m.settings()["scorer"] == "MeanBrightness"


def test_without_checkout_metric_is_na(tmp_path):
    scorer, reason = build_dover_scorer(None, None)
    assert scorer is None and "repo_dir" in reason
    scorer, reason = build_dover_scorer(str(tmp_path), str(tmp_path / "DOVER.pth"))
    assert scorer is None and "no DOVER checkout" in reason
    m = DoverVQA(scorer, reason)
    assert not m.available
    vals = m.score(torch.zeros(1, 2, 3, 8, 8))["dover_vqa"]
    assert math.isnan(vals.item())
    m.update(torch.zeros(2, 2, 3, 8, 8))
    assert math.isnan(m.compute().item())
    assert m.settings()["available"] is False and "checkout" in m.settings()["reason"]


def test_checkout_without_weights_is_reported(tmp_path):
    (tmp_path / "dover").mkdir()
    (tmp_path / "dover" / "__init__.py").write_text("")
    with pytest.raises(FileNotFoundError, match="DOVER.pth"):
        DoverScorer(str(tmp_path), str(tmp_path / "DOVER.pth"))


FAKE_DATASETS = '''
import numpy as np
import torch


class UnifiedFrameSampler:
    def __init__(self, fsize_t, fragments_t, frame_interval=1, num_clips=1):
        self.n = fsize_t * fragments_t * num_clips

    def __call__(self, total_frames, train=False):
        return np.mod(np.arange(self.n), total_frames).astype(np.int32)


def get_single_view(video, sample_type="aesthetic", **kwargs):
    assert video.ndim == 4 and video.shape[0] == 3           # (C, T, H, W), as decord + permute gives
    return torch.nn.functional.interpolate(video.float(), size=(4, 4), mode="area")
'''

FAKE_MODELS = '''
import torch
from torch import nn


class DOVER(nn.Module):
    def __init__(self, backbone_preserve_keys="technical,aesthetic", **kwargs):
        super().__init__()
        self.keys = backbone_preserve_keys.split(",")
        for k in self.keys:
            setattr(self, k + "_head", nn.Linear(3, 1))

    def forward(self, vclips, inference=True):
        out = []
        for key in vclips:                                   # results follow the input dict order
            x = vclips[key].mean(dim=(-3, -2, -1))           # (clips, C)
            out.append(getattr(self, key + "_head")(x))
        return out
'''

FAKE_YML = '''
model:
  args:
    backbone_preserve_keys: technical,aesthetic
    divide_head: true
data:
  val-l1080p:
    args:
      sample_types:
        aesthetic: {clip_len: 4, frame_interval: 2, t_frag: 4, num_clips: 1}
        technical: {clip_len: 4, frame_interval: 2, num_clips: 3}
'''


def fake_checkout(tmp_path):
    repo = tmp_path / "DOVER"
    (repo / "dover").mkdir(parents=True)
    (repo / "dover" / "__init__.py").write_text("")
    (repo / "dover" / "datasets.py").write_text(FAKE_DATASETS)
    (repo / "dover" / "models.py").write_text(FAKE_MODELS)
    (repo / "dover.yml").write_text(FAKE_YML)
    torch.manual_seed(3)
    sd = {"technical_head.weight": torch.randn(1, 3), "technical_head.bias": torch.randn(1),
          "aesthetic_head.weight": torch.randn(1, 3), "aesthetic_head.bias": torch.randn(1)}
    torch.save(sd, tmp_path / "DOVER.pth")
    return repo, sd


def test_dover_scorer_plumbing_with_a_fake_checkout(tmp_path, monkeypatch):
    for mod in ("dover", "dover.datasets", "dover.models"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    repo, sd = fake_checkout(tmp_path)
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).float()
    normed = (x - torch.tensor(DOVER_MEAN)) / torch.tensor(DOVER_STD)
    feat_t = normed[np.arange(12) % 5].mean(dim=(0, 1, 2))  # technical: 3 clips x 4 frames, indices mod T
    feat_a = normed[:4].mean(dim=(0, 1, 2))                  # aesthetic: 4 frames
    expect_t = (feat_t @ sd["technical_head.weight"][0] + sd["technical_head.bias"][0]).item()
    expect_a = (feat_a @ sd["aesthetic_head.weight"][0] + sd["aesthetic_head.bias"][0]).item()

    tech = DoverScorer(str(repo), str(tmp_path / "DOVER.pth"))
    r = tech.score(frames)
    assert r["technical_raw"] == pytest.approx(expect_t, abs=1e-4) and math.isnan(r["aesthetic_raw"])
    both = DoverScorer(str(repo), str(tmp_path / "DOVER.pth"), branches="technical,aesthetic")
    r = both.score(frames)                                   # aesthetic comes first: indexed by key, not position
    assert r["technical_raw"] == pytest.approx(expect_t, abs=1e-4)
    assert r["aesthetic_raw"] == pytest.approx(expect_a, abs=1e-4)
    torch.save({"technical_head.weight": torch.zeros(1, 3)}, tmp_path / "bad.pth")
    scorer, reason = build_dover_scorer(str(repo), str(tmp_path / "bad.pth"))
    assert scorer is None and "missing" in reason
