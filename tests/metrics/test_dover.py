"""DoverVQA plug-in: a stub scorer, the "n/a" path without a DOVER checkout, uint8 conversion."""
import math

import numpy as np
import pytest
import torch

from i2v.metrics.dover import DoverScorer, DoverVQA, build_dover_scorer


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
