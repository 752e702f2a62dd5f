"""FlowScore / WarpingError / occlusion mask against an oracle flow estimator on synthetic translation videos."""
import math

import numpy as np
import pytest
import torch

from i2v.metrics.flow import FlowScore, WarpingError, backward_warp, occlusion_mask, pad, sintel_pads


def smooth_image(h, w, seed=0):
    """(3, H, W) in [-0.9, 0.9]: a sum of random low-frequency sinusoids (textured, no flat regions)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    img = torch.zeros(3, h, w)
    for c in range(3):
        for _ in range(4):
            fx, fy, ph = (torch.rand(3, generator=g) * torch.tensor([0.5, 0.5, 6.28])).tolist()
            img[c] += torch.sin(fx * xs + fy * ys + ph)
    return 0.9 * img / img.abs().amax()


def translation_video(shift, frames=4, h=40, w=48, margin=None, seed=0):
    """Frame k = frame 0 rolled by k * shift (dx, dy) with wrap-around: (1, F, 3, H, W). With ``margin`` the
    content sits inside a constant border wider than the total motion, so nothing wraps visibly."""
    img = smooth_image(h, w, seed)
    if margin:
        img[:, :margin], img[:, -margin:], img[:, :, :margin], img[:, :, -margin:] = 0.3, 0.3, 0.3, 0.3
    dx, dy = shift
    return torch.stack([torch.roll(img, shifts=(k * dy, k * dx), dims=(1, 2)) for k in range(frames)])[None]


def oracle_flow(a, b, radius=4):
    """A real (global, integer) flow estimator: for each pair the (dx, dy) in [-r, r]² minimising
    mean |roll(a, (dy, dx)) - b| on the interior; returns the constant field (N, 2, H, W), channel 0 = x."""
    out = torch.empty(a.shape[0], 2, *a.shape[-2:])
    r = radius
    for i in range(a.shape[0]):
        best = None
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                err = (torch.roll(a[i], (dy, dx), (1, 2)) - b[i])[:, r:-r, r:-r].abs().mean().item()
                if best is None or err < best[0]:
                    best = (err, dx, dy)
        out[i, 0], out[i, 1] = best[1], best[2]
    return out


@pytest.mark.parametrize("shift", [(2, 0), (0, -3), (1, 2), (-2, -1)])
def test_flow_score_equals_shift_magnitude(shift):
    video = translation_video(shift)
    fs = FlowScore(oracle_flow)
    val = fs.score(video)["flow_score"]
    assert val.shape == (1,)
    assert abs(val.item() - math.hypot(*shift)) < 1e-5


def test_flow_score_static_is_zero_and_metric_averages_videos():
    static = translation_video((0, 0))
    moving = translation_video((3, 0), seed=1)
    fs = FlowScore(oracle_flow)
    assert fs.score(static)["flow_score"].item() == 0.0
    fs.update(torch.cat([static, moving]))
    fs.update(translation_video((0, 4), seed=2))
    assert abs(fs.compute().item() - (0 + 3 + 4) / 3) < 1e-5


def test_flow_score_padding_option():
    """unpad=False (EvalCrafter) averages over the replicate-padded grid (multiple of 8), unpad=True over the
    original pixels; a flow u(x) = column index tells the two grids apart."""
    video = translation_video((2, 0), h=36, w=44)          # not multiples of 8 -> 4 px padding each axis
    seen = []

    def column_flow(a, b):
        seen.append(tuple(a.shape[-2:]))
        f = torch.zeros(a.shape[0], 2, *a.shape[-2:])
        f[:, 0] = torch.arange(a.shape[-1], dtype=torch.float32)
        return f

    assert FlowScore(column_flow, unpad=False).score(video)["flow_score"].item() == pytest.approx(47 / 2)
    assert seen[-1] == (40, 48)
    assert FlowScore(column_flow, unpad=True).score(video)["flow_score"].item() == pytest.approx(43 / 2)
    assert seen[-1] == (36, 44)
    assert sintel_pads(36, 44) == (2, 2, 2, 2) and sintel_pads(37, 40) == (0, 0, 1, 2)


def test_backward_warp_integer_shift_matches_indexing():
    x = torch.randn(2, 3, 10, 12)
    flow = torch.zeros(2, 2, 10, 12)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    out = backward_warp(x, flow)
    ys, xs = np.meshgrid(np.arange(10), np.arange(12), indexing="ij")
    yi, xi = np.clip(ys - 1, 0, 9), np.clip(xs + 2, 0, 11)          # x(p + flow), clamped at the border
    ref = x.numpy()[:, :, yi, xi]
    assert np.abs(out.numpy() - ref).max() < 1e-5


def warp_error_reference(video, flow_fn):
    """Independent numpy implementation for integer constant flows and an all-visible mask."""
    x = (video[0].numpy() + 1) / 2
    errs = []
    for i in range(x.shape[0] - 1):
        a = torch.nn.functional.interpolate(torch.from_numpy(x[i:i + 2]), scale_factor=0.5, mode="bilinear",
                                            align_corners=False).numpy()
        i1, i2 = a[0], a[1]
        f = flow_fn(torch.from_numpy(i1)[None] * 2 - 1, torch.from_numpy(i2)[None] * 2 - 1)[0].numpy()
        dx, dy = int(f[0, 0, 0]), int(f[1, 0, 0])
        h, w = i1.shape[-2:]
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        warped = i2[:, np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]
        errs.append(((warped - i1) ** 2).sum() / (h * w))
    return float(np.mean(errs))


def test_warping_error_matches_direct_computation_including_border():
    video = translation_video((4, 2), frames=3, h=48, w=64)    # half-res shift (2, 1), wraps at the border
    we = WarpingError(oracle_flow, raft_input="fixed", resize=0.5)
    errs, visible = we.pair_errors(video)
    assert visible.min().item() == 1.0                         # consistent constant flows: nothing occluded
    ref = warp_error_reference(video, oracle_flow)
    assert errs.mean().item() == pytest.approx(ref, rel=1e-5)
    assert ref > 1e-3                                          # the wrapped band does contribute


def test_warping_error_zero_for_exact_translation_and_grows_with_noise():
    video = translation_video((4, 2), frames=4, h=48, w=64, margin=14)
    we = WarpingError(oracle_flow, raft_input="fixed", resize=0.5)
    clean = we.score(video)["warping_error_raw"].item()
    assert clean < 1e-10
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(video.shape, generator=g)
    errs = [we.score((video + s * noise).clamp(-1, 1))["warping_error_raw"].item() for s in (0.02, 0.05, 0.1)]
    assert clean < errs[0] < errs[1] < errs[2]


def test_warping_error_variants_and_scale():
    video = translation_video((2, 0), frames=3, h=32, w=32)
    video = video + 0.05 * torch.randn(video.shape)
    we = WarpingError(oracle_flow, raft_input="fixed", scale=255.0 ** 2)
    s = we.score(video)
    raw = s["warping_error_raw"].item()
    assert s["warping_error"].item() == pytest.approx(raw * 65025)
    assert s["warping_error_x1e4"].item() == pytest.approx(raw * 1e4)
    we.update(video)
    out = we.compute()
    assert out["warping_error_raw"].item() == pytest.approx(raw, rel=1e-6)


def test_warping_error_evalcrafter_quirk_feeds_nearly_constant_images():
    seen = []

    def recording(a, b):
        seen.append((a.min().item(), a.max().item()))
        return torch.zeros(a.shape[0], 2, *a.shape[-2:])

    video = translation_video((1, 0), frames=3)
    WarpingError(recording, raft_input="evalcrafter").score(video)
    lo, hi = seen[0]
    assert -1.0 <= lo and hi <= -1 + 2 / 255 + 1e-6            # 2·(x/255) − 1 of [0, 1] images
    WarpingError(recording, raft_input="fixed").score(video)
    assert seen[1][0] < -0.5 and seen[1][1] > 0.5
    with pytest.raises(ValueError, match="raft_input"):
        WarpingError(recording, raft_input="255")


def test_occlusion_mask_flags_forward_backward_disagreement():
    h, w = 20, 24
    fw = torch.zeros(1, 2, h, w)
    fw[:, 0] = 2.0                                             # everything moves 2 px right
    bw = torch.zeros(1, 2, h, w)
    bw[:, 0] = -2.0
    assert not occlusion_mask(fw, bw).any()
    bw[:, :, 5:10, 8:14] = 3.0                                 # frame-2 region whose backward flow disagrees
    occ = occlusion_mask(fw, bw)[0]
    expect = torch.zeros(h, w, dtype=torch.bool)
    expect[5:10, 6:12] = True                                  # p with p + (2, 0) inside that region
    assert torch.equal(occ, expect)


def test_occlusion_mask_flags_motion_boundary():
    h, w = 16, 16
    fw = torch.zeros(1, 2, h, w)
    fw[:, 0, :, 8:] = 3.0                                      # a step in u between columns 7 and 8
    bw = -backward_warp(fw, fw)                                # so the fw-bw check passes wherever it can
    occ = occlusion_mask(fw, bw)[0]
    assert occ[:, 7].all()                                     # forward difference u(x) − u(x+1) ≠ 0 at x = 7
    assert not occ[:, :6].any() and not occ[:, 9:].any()


def test_warping_error_mask_removes_inconsistent_region():
    video = translation_video((4, 0), frames=2, h=48, w=64, margin=12)
    corrupted = video.clone()
    corrupted[0, 1, :, 16:32, 24:40] = -0.8                    # a blob that does not follow the motion
    consistent = lambda a, b: oracle_flow(a, b)                # noqa: E731

    def flagging(a, b):                                        # bw disagrees on the blob (as RAFT would)
        f = oracle_flow(a, b)
        for i in range(f.shape[0]):
            if f[i, 0, 0, 0] < 0:                              # a backward pair (frame 2 -> frame 1)
                f[i, :, 8:16, 12:20] = 5.0
        return f

    plain = WarpingError(consistent, raft_input="fixed").score(corrupted)
    masked = WarpingError(flagging, raft_input="fixed").score(corrupted)
    assert masked["warping_error_raw"].item() < 0.1 * plain["warping_error_raw"].item()
    assert plain["warping_visible"].item() == 1.0
    assert masked["warping_visible"].item() == pytest.approx(1 - 8 * 8 / (24 * 32))


def test_pad_replicates_edges():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    y = pad(x, (1, 2, 0, 1))
    assert y.shape == (1, 1, 4, 7)
    assert torch.equal(y[0, 0, :3, 0], x[0, 0, :, 0]) and torch.equal(y[0, 0, 3, 1:5], x[0, 0, 2])
