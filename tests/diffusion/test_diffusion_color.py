import numpy as np
import pytest
import torch

from i2v.diffusion.color import color_match_video, lab_to_rgb, match_histogram, rgb_to_lab


def _np_match(source, template):
    """Reference: the official unique-value CDF matching (np.interp)."""
    s_vals, idx, s_counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    t_vals, t_counts = np.unique(template.ravel(), return_counts=True)
    s_q = np.cumsum(s_counts) / s_counts.sum()
    t_q = np.cumsum(t_counts) / t_counts.sum()
    return np.interp(s_q, t_q, t_vals)[idx].reshape(source.shape)


def test_lab_known_values():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])[:, :, None, None]
    lab = rgb_to_lab(rgb)[:, :, 0, 0]
    expected = torch.tensor([[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(lab, expected, atol=0.1, rtol=0)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-5, rtol=0)


def test_match_histogram_against_numpy_reference():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(500, generator=g) * 3 + 1
    tmpl = torch.rand(400, generator=g) * 10
    ours = match_histogram(src, tmpl)
    ref = _np_match(src.double().numpy(), tmpl.double().numpy())
    np.testing.assert_allclose(ours.double().numpy(), ref, atol=1e-5)
    # a monotone transform of the template is mapped back onto the template's values
    t = torch.randn(300, generator=g)
    back = match_histogram(2 * t + 5, t)
    torch.testing.assert_close(back, t, atol=1e-6, rtol=0)


def _w1(a, b):
    return (torch.sort(a.flatten()).values - torch.sort(b.flatten()).values).abs().mean().item()


def _image(h=24, w=24):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([0.6 * xx, 0.5 * yy, 0.4 * xx * yy - 0.1]).clamp(-1, 1)  # (3, H, W) in [-1, 1]


@pytest.mark.parametrize("channels", ["ab", "lab"])
def test_shifted_frames_move_back(channels):
    ref = _image()
    shifted = (ref + torch.tensor([0.35, -0.2, 0.1])[:, None, None]).clamp(-1, 1)
    frames = torch.stack([ref, shifted, shifted.flip(-1)])[None]  # (1, 3, 3, H, W)
    out = color_match_video(frames, channels=channels)
    assert out.shape == frames.shape and torch.equal(out[:, 0], frames[:, 0])
    ref_lab = rgb_to_lab((ref + 1) / 2)
    for f in (1, 2):
        before = rgb_to_lab((frames[0, f] + 1) / 2)
        after = rgb_to_lab((out[0, f] + 1) / 2)
        for c in (1, 2):  # a, b
            assert _w1(after[c], ref_lab[c]) < 0.15 * _w1(before[c], ref_lab[c])
        if channels == "ab":  # lightness kept (up to gamut clamping)
            assert (after[0] - before[0]).abs().mean() < 1.0
        else:
            assert _w1(after[0], ref_lab[0]) < 0.15 * _w1(before[0], ref_lab[0])
    # an explicit reference matches frame 0 too
    out2 = color_match_video(frames[:, 1:], reference=ref[None])
    assert _w1(rgb_to_lab((out2[0, 0] + 1) / 2)[1], ref_lab[1]) < 0.15 * _w1(rgb_to_lab((shifted + 1) / 2)[1],
                                                                              ref_lab[1])


def test_bad_input():
    with pytest.raises(ValueError):
        color_match_video(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError):
        color_match_video(torch.zeros(1, 2, 3, 4, 4), channels="rgb")
