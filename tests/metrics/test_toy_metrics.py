"""Toy metrics on hand-drawn clips: a coloured square moving a known number of pixels per frame on a flat background."""
import math

import pytest
import torch

from i2v.metrics.toy import (ToyMetrics, centroids, direction_vectors, estimate_colors, identity_consistency,
                             motion_amplitude, temporal_stability, toy_video_metrics)

RED, BLUE, GREEN = (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0)


def render(frames=8, size=32, side=6, start=(4, 12), step=(2, 0), obj=RED, bg=BLUE):
    """Square of ``side`` px, top-left corner at start + f * step (x, y); returns video (1, F, 3, H, W) and the
    true centres (1, F, 2) as (x, y)."""
    video = torch.empty(1, frames, 3, size, size)
    video[:] = torch.tensor(bg)[:, None, None]
    centres = []
    for f in range(frames):
        x0, y0 = start[0] + f * step[0], start[1] + f * step[1]
        video[0, f, :, y0:y0 + side, x0:x0 + side] = torch.tensor(obj)[:, None, None]
        centres.append((x0 + (side - 1) / 2, y0 + (side - 1) / 2))
    return video, torch.tensor([centres])


def test_colour_estimate_and_centroid():
    video, centres = render()
    bg, obj, has = estimate_colors(video[:, 0])
    torch.testing.assert_close(bg, torch.tensor([BLUE]))
    torch.testing.assert_close(obj, torch.tensor([RED]))
    assert has.tolist() == [True]
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[0, 0, 3:5, 5:7] = True
    torch.testing.assert_close(centroids(mask), torch.tensor([[[5.5, 3.5]]]))


@pytest.mark.parametrize("step", [(2, 0), (-3, 0), (0, 1), (0, -2), (1, 1)])
def test_displacement_matches_known_speed(step):
    start = (4 if step[0] >= 0 else 24, 4 if step[1] >= 0 else 20)
    video, centres = render(step=step, start=start)
    speed = math.hypot(*step)
    out = motion_amplitude(video, direction=torch.tensor([step], dtype=torch.float32), centers=centres)
    assert abs(out["step_px"].item() - speed) <= 0.5
    assert abs(out["total_px"].item() - 7 * speed) <= 0.5
    assert abs(out["net_px"].item() - speed) <= 0.1
    assert out["direction_agree"].item() > 0.99
    assert out["traj_err_px"].item() < 0.5
    assert out["lost_frac"].item() == 0.0
    opposite = motion_amplitude(video, direction=-torch.tensor([step], dtype=torch.float32))
    assert opposite["direction_agree"].item() < -0.99


def test_antialiased_circle_with_subpixel_speed():
    # circle of radius 5 rendered with 4x supersampling (soft edges), moving 1.5 px per frame up-left
    frames, size, ss = 8, 32, 4
    yy, xx = torch.meshgrid(torch.arange(size * ss), torch.arange(size * ss), indexing="ij")
    coords = (torch.stack([xx, yy]).float() + 0.5) / ss - 0.5  # pixel-centre coordinates of the sub-samples
    video = torch.empty(1, frames, 3, size, size)
    for f in range(frames):
        cx, cy = 22.0 - 1.5 * f, 24.0 - 1.5 * f
        inside = ((coords[0] - cx) ** 2 + (coords[1] - cy) ** 2 <= 25).float()
        cover = torch.nn.functional.avg_pool2d(inside[None, None], ss)[0, 0]
        video[0, f] = cover * torch.tensor(GREEN)[:, None, None] + (1 - cover) * torch.tensor(RED)[:, None, None]
    out = motion_amplitude(video, direction=direction_vectors(["up"]))
    assert abs(out["step_px"].item() - 1.5 * math.sqrt(2)) <= 0.5
    assert abs(out["total_px"].item() - 7 * 1.5 * math.sqrt(2)) <= 0.5
    assert out["direction_agree"].item() == pytest.approx(math.sqrt(0.5), abs=0.05)
    assert temporal_stability(video)["flicker"].item() < 0.01  # soft edges sit inside the dilated mask


def test_direction_from_words_and_captions():
    d = direction_vectors(["left", "a red circle moving up on a blue background", "Right.", "still"])
    torch.testing.assert_close(d[:3], torch.tensor([[-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]]))
    assert d[3].isnan().all()
    video, _ = render(step=(2, 0))
    caps = direction_vectors(["a red square moving right", "a red square moving down"])
    both = motion_amplitude(video.repeat(2, 1, 1, 1, 1), direction=caps)
    assert both["direction_agree"][0].item() > 0.99 and abs(both["direction_agree"][1].item()) < 1e-6


def test_static_clip():
    video, _ = render(step=(0, 0))
    out = toy_video_metrics(video, direction=direction_vectors(["left"]))
    assert out["step_px"].item() == 0.0 and out["total_px"].item() == 0.0
    assert out["direction_agree"].item() == 0.0  # no motion agrees with no direction
    assert out["identity"].item() == pytest.approx(1.0, abs=1e-6)
    assert out["area_ratio"].item() == 1.0 and out["bg_err"].item() == 0.0 and out["obj_err"].item() == 0.0
    assert out["flicker"].item() == 0.0 and out["bg_drift"].item() == 0.0


def test_moving_object_is_not_flicker_and_keeps_identity():
    video, _ = render(step=(2, 0))
    out = toy_video_metrics(video)
    assert out["flicker"].item() < 1e-6 and out["bg_drift"].item() < 1e-6
    assert out["identity"].item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("new_bg", [GREEN, (0.6, -0.8, -0.6), (-1.0, -1.0, 0.6)])
def test_background_change_lowers_identity(new_bg):
    faithful, _ = render(step=(2, 0))
    changed, _ = render(step=(2, 0), bg=new_bg)
    changed[:, 0] = faithful[:, 0]  # frame 1 is the conditioning image; later frames change the background
    good = identity_consistency(faithful)
    bad = identity_consistency(changed, faithful[:, 0])
    assert bad["identity"].item() < good["identity"].item() - 0.1
    assert bad["bg_err"].item() > good["bg_err"].item() + 0.05
    stab = temporal_stability(changed, faithful[:, 0])
    assert stab["bg_drift"].item() > 0.05


def test_object_colour_and_shape_changes_lower_identity():
    faithful, _ = render(step=(1, 0))
    recoloured, _ = render(step=(1, 0), obj=(0.6, -0.6, -1.0))
    recoloured[:, 0] = faithful[:, 0]
    grown, _ = render(step=(1, 0), side=10)
    grown[:, 0] = faithful[:, 0]
    good, col, shape = (identity_consistency(v, faithful[:, 0]) for v in (faithful, recoloured, grown))
    assert col["obj_err"].item() > good["obj_err"].item() + 0.1
    assert col["identity"].item() < good["identity"].item() - 0.1
    assert abs(shape["area_ratio"].item() - 36 / 100) < 1e-6
    assert shape["identity"].item() < good["identity"].item() - 0.3


def test_flicker_noise_worsens_stability():
    clean, _ = render(step=(2, 0))
    g = torch.Generator().manual_seed(0)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(-1, 1)
    noisy[:, 0] = clean[:, 0]
    a, b = temporal_stability(clean), temporal_stability(noisy, clean[:, 0])
    assert b["flicker"].item() > a["flicker"].item() + 0.03
    assert b["bg_drift"].item() > a["bg_drift"].item() + 0.03
    # the noise does not break tracking
    assert abs(motion_amplitude(noisy, clean[:, 0])["step_px"].item() - 2.0) <= 0.5


def test_empty_object_frame_is_counted_not_fatal():
    video, centres = render(step=(2, 0))
    video[:, 3] = torch.tensor(BLUE)[:, None, None]  # the square vanishes in frame 4
    out = toy_video_metrics(video, centers=centres)
    assert out["lost_frac"].item() == pytest.approx(1 / 8)
    assert abs(out["step_px"].item() - 2.0) <= 0.5      # steps touching the lost frame are skipped
    assert abs(out["total_px"].item() - 14.0) <= 0.5
    assert out["traj_err_px"].item() < 0.5
    assert out["identity"].item() == pytest.approx(6 / 7, abs=1e-5)  # the lost frame scores 0
    assert all(math.isfinite(out[k].item()) for k in ("identity", "bg_err", "obj_err", "flicker", "bg_drift"))
    gone = video.clone()
    gone[:, 1:] = torch.tensor(BLUE)[:, None, None]  # only frame 1 has the object
    out = toy_video_metrics(gone)
    assert all(math.isnan(out[k].item()) for k in ("step_px", "total_px", "net_px"))
    assert out["identity"].item() == 0.0 and out["lost_frac"].item() == pytest.approx(7 / 8)


def test_net_speed_ignores_jitter_and_lost_frames():
    # 2 px/frame to the right, the square 1 px up and down in turn: the path per step is longer than the travel
    video, centres = render(step=(2, 0))
    jitter = video.clone()
    jitter[:] = torch.tensor(BLUE)[:, None, None]
    for f in range(8):
        x0, y0 = 4 + 2 * f, 12 + (1 if f % 2 else 0)
        jitter[0, f, :, y0:y0 + 6, x0:x0 + 6] = torch.tensor(RED)[:, None, None]
    out = motion_amplitude(jitter)
    assert out["step_px"].item() == pytest.approx(math.sqrt(5), abs=0.05)    # |(2, ±1)| per step
    assert out["net_px"].item() == pytest.approx(math.hypot(14, 1) / 7, abs=0.05)   # (14, 1) over 7 frames
    # lost from frame 5 on: the travel shrinks with the tracked frames, the net speed does not
    gone = video.clone()
    gone[:, 4:] = torch.tensor(BLUE)[:, None, None]
    out = motion_amplitude(gone)
    assert out["total_px"].item() == pytest.approx(6.0, abs=0.05)
    assert out["net_px"].item() == pytest.approx(2.0, abs=0.05)


def test_toy_metrics_accumulates_batches():
    right, c1 = render(step=(2, 0))
    down, c2 = render(step=(0, 1), start=(12, 4))
    gone = right.clone()
    gone[:, 1:] = torch.tensor(BLUE)[:, None, None]
    metric = ToyMetrics()
    metric.update(torch.cat([right, down]), meta=[{"caption": "a red square moving right", "centers": c1[0]},
                                                   {"caption": "a red square moving down", "centers": c2[0]}])
    metric.update(gone, gone[:, 0], meta={"direction": ["left"]})
    out = metric.compute()
    assert out["n_videos"].item() == 3 and out["lost_frames"].item() == 7
    assert out["n_step_px"].item() == 2 and out["n_identity"].item() == 3 and out["n_traj_err_px"].item() == 2
    assert abs(out["step_px"].item() - 1.5) <= 0.25  # mean of 2 px and 1 px; the lost video is left out
    assert out["direction_agree"].item() == pytest.approx(1.0, abs=1e-4)
    assert out["identity"].item() == pytest.approx(2 / 3, abs=1e-5)
    metric.reset()
    assert metric.n_videos.item() == 0 and metric.sum_identity.item() == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\(B, F>=2, 3, H, W\)"):
        toy_video_metrics(torch.zeros(1, 3, 32, 32))
    video, _ = render()
    with pytest.raises(ValueError, match="first frame"):
        toy_video_metrics(video, first=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="directions"):
        ToyMetrics().update(video, meta={"direction": ["left", "right"]})


def test_ground_truth_colours_track_the_main_object_among_two():
    video, centres = render(step=(2, 0), start=(2, 4))
    video[0, :, :, 20:26, 20:26] = torch.tensor(GREEN)[:, None, None]  # a second, static object
    meta = {"background": torch.tensor([BLUE]), "colour": torch.tensor([RED]), "direction": ["right"],
            "centers": centres}
    metric = ToyMetrics()
    metric.update(video, meta=meta)
    out = metric.compute()
    assert abs(out["step_px"].item() - 2.0) <= 0.5 and abs(out["total_px"].item() - 14.0) <= 0.5
    assert out["traj_err_px"].item() < 0.5 and out["direction_agree"].item() > 0.99
    assert out["area_ratio"].item() == pytest.approx(1.0)


def test_on_synthetic_videos():
    from i2v.data.synthetic import SyntheticVideos

    ds = SyntheticVideos(6, num_frames=8, size=32, seed=0)
    items = [ds[i] for i in range(len(ds))]
    video = torch.stack([it["video"] for it in items])
    metas = [it["meta"] for it in items]
    per_video = toy_video_metrics(video, direction=direction_vectors([m["direction"] for m in metas]))
    speeds = torch.tensor([float(m["speed"]) for m in metas])
    assert (per_video["step_px"] - speeds).abs().max() < 0.15
    assert (per_video["total_px"] - 7 * speeds).abs().max() < 0.5
    assert per_video["direction_agree"].min() > 0.99
    assert per_video["identity"].min() > 0.95 and per_video["flicker"].max() < 0.01
    metric = ToyMetrics()
    metric.update(video, video[:, 0], meta=metas)  # colour names + centres + direction words from the meta
    out = metric.compute()
    assert out["n_videos"].item() == 6 and out["lost_frames"].item() == 0
    assert abs(out["step_px"].item() - speeds.mean().item()) < 0.1
    assert out["identity"].item() > 0.95 and out["direction_agree"].item() > 0.99
    round_shapes = [i for i, m in enumerate(metas) if m["shape"] != "triangle"]  # a triangle's GT centre != centroid
    assert len(round_shapes) >= 2
    gt = torch.stack([metas[i]["centers"] for i in round_shapes])
    traj = motion_amplitude(video[round_shapes], centers=gt)["traj_err_px"]
    assert traj.max() < 0.3


def test_textured_background_must_be_kept_pixel_for_pixel():
    """bg_err compares later frames with frame 1's own background pixels: a clip that keeps the pattern scores ~0,
    one that keeps only the background colour (the pattern lost) scores the pattern's amplitude."""
    from i2v.data.synthetic import SyntheticVideos

    amp = 0.2
    item = SyntheticVideos(1, num_frames=6, size=32, seed=3, texture=amp)[0]
    flat = SyntheticVideos(1, num_frames=6, size=32, seed=3)[0]
    kept = item["video"][None]
    lost = flat["video"][None].clone()
    lost[:, 0] = kept[:, 0]                      # same input image, the pattern gone afterwards
    meta = [item["meta"]]
    colors = (torch.tensor([[c / 127.5 - 1 for c in _rgb(item["meta"]["background"])]]),
              torch.tensor([[c / 127.5 - 1 for c in _rgb(item["meta"]["colour"])]]))
    good = identity_consistency(kept, colors=colors)
    bad = identity_consistency(lost, kept[:, 0], colors=colors)
    assert good["bg_err"].item() < 0.01 and good["identity"].item() > 0.9, (good, meta)
    clamp_free = amp * 0.5                       # cells clamped at -1/1 move less than amp
    assert bad["bg_err"].item() > clamp_free, bad
    assert bad["identity"].item() < good["identity"].item() - 0.2
    # bg_err_affine forgives a per-frame, per-channel gain and offset, never a lost pattern
    assert good["bg_err_affine"].item() < 0.01 and bad["bg_err_affine"].item() > clamp_free, (good, bad)
    cast = kept.clone()
    gains = torch.tensor([0.5, 1.3, 0.8])[None, :, None, None]
    offsets = torch.tensor([0.1, -0.05, 0.2])[None, :, None, None]
    for f in range(1, cast.shape[1]):
        cast[:, f] = cast[:, f] * gains * (1 + 0.1 * f) + offsets * f / cast.shape[1]
    recoloured = identity_consistency(cast, kept[:, 0], colors=colors)
    assert recoloured["bg_err"].item() > 0.05, recoloured
    assert recoloured["bg_err_affine"].item() < 0.1 * recoloured["bg_err"].item(), recoloured


def _rgb(name):
    from i2v.data.synthetic import COLOURS
    return COLOURS[name]
