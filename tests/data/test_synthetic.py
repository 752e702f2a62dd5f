"""SyntheticVideos: pure function of (seed, i); ground-truth centres, motion and caption agree with the pixels."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from i2v.data import SyntheticVideos, make_scene, render_frame
from i2v.data.synthetic import COLOURS, DIRECTIONS, background_image

CAPTION = re.compile(r"^a (\w+) (circle|square|triangle) moving (left|right|up|down)"
                     r"( and a (\w+) (circle|square|triangle) moving (left|right|up|down))? on a (\w+) background$")


def _rgb(video_frame, y, x):
    return tuple(((video_frame[:, y, x] + 1) * 127.5).round().int().tolist())


def test_pure_function_of_seed_and_index():
    a = SyntheticVideos(20, num_frames=6, size=24, seed=3, second_object_prob=0.5)
    b = SyntheticVideos(20, num_frames=6, size=24, seed=3, second_object_prob=0.5)
    order_a = [a[i] for i in (7, 2, 7)]
    order_b = [b[i] for i in (2, 7)]
    assert torch.equal(order_a[0]["video"], order_a[2]["video"]) and order_a[0]["text"] == order_a[2]["text"]
    assert torch.equal(order_a[0]["video"], order_b[1]["video"]) and torch.equal(order_a[1]["video"], order_b[0]["video"])
    c = SyntheticVideos(20, num_frames=6, size=24, seed=4, second_object_prob=0.5)
    assert sum(a[i]["text"] != c[i]["text"] for i in range(20)) > 5
    assert len({a[i]["text"] for i in range(20)}) > 10  # varied captions


@pytest.mark.parametrize("size", [32, (24, 40)])
def test_centres_colours_and_caption(size):
    ds = SyntheticVideos(24, num_frames=8, size=size, seed=1, second_object_prob=0.4)
    h, w = (size, size) if isinstance(size, int) else size
    two = 0
    for i in range(len(ds)):
        item = ds[i]
        v, meta = item["video"], item["meta"]
        assert v.shape == (8, 3, h, w) and v.dtype == torch.float32 and v.min() >= -1 and v.max() <= 1
        m = CAPTION.match(item["text"])
        assert m, item["text"]
        assert (m.group(1), m.group(2), m.group(3), m.group(8)) == (
            meta["colour"], meta["shape"], meta["direction"], meta["background"])
        two += m.group(4) is not None
        assert len(meta["objects"]) == (2 if m.group(4) else 1)
        if m.group(4):
            o = meta["objects"][1]
            assert (m.group(5), m.group(6), m.group(7)) == (o["colour"], o["shape"], o["direction"])
            assert len({meta["background"], meta["colour"], o["colour"]}) == 3
        centres = meta["centers"]
        assert centres.shape == (8, 2)
        for f in range(8):
            x, y = centres[f].tolist()
            assert _rgb(v[f], int(round(y)), int(round(x))) == COLOURS[meta["colour"]]
        # motion: constant step along the caption's direction, speed as reported
        steps = centres[1:] - centres[:-1]
        dx, dy = DIRECTIONS[meta["direction"]]
        assert torch.allclose(steps, torch.tensor([dx, dy]) * meta["speed"], atol=1e-4)
        assert meta["speed"] > 0
        # fully inside the frame
        r = meta["radius"]
        assert centres[:, 0].min() - r >= -0.5 - 1e-4 and centres[:, 0].max() + r <= w - 0.5 + 1e-4
        assert centres[:, 1].min() - r >= -0.5 - 1e-4 and centres[:, 1].max() + r <= h - 0.5 + 1e-4
    assert 0 < two < len(ds)


def test_centroid_of_colour_mask_matches_centre():
    """For symmetric shapes alone on the canvas, the coverage centroid is the centre (a half-pixel convention
    error would be off by 0.5)."""
    ds = SyntheticVideos(10, num_frames=4, size=40, seed=2, shapes=("circle", "square"))
    for i in range(len(ds)):
        item = ds[i]
        col = torch.tensor(COLOURS[item["meta"]["colour"]], dtype=torch.float32) / 127.5 - 1
        bg = torch.tensor(COLOURS[item["meta"]["background"]], dtype=torch.float32) / 127.5 - 1
        for f in range(4):
            frame = item["video"][f]
            # coverage per pixel from the blend: frame = bg + a (col - bg)
            diff = (col - bg).view(3, 1, 1)
            a = ((frame - bg.view(3, 1, 1)) * diff).sum(0) / (diff * diff).sum()
            ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
            cx, cy = (a * xs).sum() / a.sum(), (a * ys).sum() / a.sum()
            assert torch.allclose(torch.stack([cx, cy]), item["meta"]["centers"][f], atol=0.15)  # 4x4 supersampling


def test_first_frame_and_render_frame():
    ds = SyntheticVideos(5, num_frames=4, size=16, seed=0)
    for i in range(5):
        assert torch.equal(ds.first_frame(i), ds[i]["video"][0])
    scene = make_scene(0, 3, num_frames=4, size=16)
    assert torch.equal(render_frame(scene, 2), ds[3]["video"][2])
    assert scene.caption == ds[3]["text"]
    with pytest.raises(IndexError):
        ds[5]


def test_speed_clamped_to_fit():
    ds = SyntheticVideos(30, num_frames=16, size=16, seed=0, speed_range=(0.3, 0.4))
    for i in range(30):
        c = ds[i]["meta"]["centers"].numpy()
        r = ds[i]["meta"]["radius"]
        assert c.min() - r >= -0.5 - 1e-4 and c.max() + r <= 15.5 + 1e-4
        assert np.ptp(c, axis=0).max() > 0


def test_texture_is_a_static_pattern_that_leaves_the_scene_unchanged():
    """texture > 0 adds a +-amplitude cell pattern to the background only, fixed over the clip; shapes, colours,
    motion and caption are those of the flat scene (the pattern is drawn last)."""
    amp, cells = 0.15, 8
    flat = SyntheticVideos(3, num_frames=5, size=32, seed=7)
    tex = SyntheticVideos(3, num_frames=5, size=32, seed=7, texture=amp, texture_cells=cells)
    for i in range(3):
        a, b = flat[i], tex[i]
        assert a["text"] == b["text"]
        torch.testing.assert_close(a["meta"]["centers"], b["meta"]["centers"])
        diff = b["video"] - a["video"]                               # (F, 3, H, W)
        bg = (a["video"] - a["video"][:, :, :1, :1]).abs().sum(1) == 0  # pure background pixels
        d = diff.mean(1)[bg]
        # every background pixel moved by +-amp (less where clamped at -1/1), and both signs occur
        assert (d.abs() <= amp + 1e-6).all() and (d > amp / 2).any() and (d < -amp / 2).any()
        # the pattern does not move: background pixels that are background in every frame agree across frames
        always = bg.all(0)
        assert torch.equal(b["video"][:, :, always][0], b["video"][:, :, always][-1])
        # one value per cell of 4x4 pixels
        cell = b["video"][0, 0].reshape(cells, 4, cells, 4)
        ok = always.reshape(cells, 4, cells, 4).all(3).all(1)
        spread = cell.amax((1, 3)) - cell.amin((1, 3))
        assert (spread[ok] == 0).all()
    with pytest.raises(ValueError, match="texture"):
        SyntheticVideos(1, texture=-0.1)


def test_smooth_colour_field_is_bilinear_between_its_knots_and_leaves_the_scene_unchanged():
    """texture_smooth > 0 adds a static colour field: each channel bilinear between random knots in [-a, a] (the
    outer knots on the outer pixel centres); shapes, motion, caption and the cell pattern are those of the scene
    without it (the field is drawn last), and the field differs from place to place and from scene to scene."""
    amp, k = 0.3, 3
    base = SyntheticVideos(3, num_frames=4, size=32, seed=5, texture=0.2, texture_cells=8)
    smooth = SyntheticVideos(3, num_frames=4, size=32, seed=5, texture=0.2, texture_cells=8,
                             texture_smooth=amp, texture_smooth_knots=k)
    knots = []
    for i in range(3):
        a, b = base[i], smooth[i]
        assert a["text"] == b["text"]
        torch.testing.assert_close(a["meta"]["centers"], b["meta"]["centers"])
        sa, sb = base.scene(i), smooth.scene(i)
        np.testing.assert_array_equal(sa.pattern, sb.pattern)
        assert sa.smooth is None and sb.smooth.shape == (3, k, k)
        assert np.abs(sb.smooth).max() <= amp and np.abs(sb.smooth).max() > amp / 4
        knots.append(sb.smooth)
        assert not np.allclose(sb.smooth[0], sb.smooth[1]) and not np.allclose(sb.smooth[1], sb.smooth[2])  # colour
        # the field on a magenta background without cells (no channel clamps: |colour| + amp < 1)
        plain = dataclasses.replace(sb, pattern=None, texture=0.0, background="magenta")
        field = background_image(plain) - background_image(dataclasses.replace(plain, smooth=None))  # (3, H, W)
        g = torch.from_numpy(sb.smooth)
        for (y, x), (r, c) in {(0, 0): (0, 0), (0, 31): (0, 2), (31, 0): (2, 0), (31, 31): (2, 2)}.items():
            torch.testing.assert_close(field[:, y, x], g[:, r, c])
        # elsewhere bilinear: pixel p sits at knot coordinate p * (k - 1) / 31 along each axis
        def lerp(v0, v1, f):
            return (1 - f) * v0 + f * v1

        for y, x in ((0, 7), (0, 15), (0, 16), (10, 20), (27, 3)):
            (ry, fy), (rx, fx) = (divmod(p * (k - 1) / 31, 1) for p in (y, x))
            ry, rx = int(ry), int(rx)
            want = lerp(lerp(g[:, ry, rx], g[:, ry, rx + 1], fx), lerp(g[:, ry + 1, rx], g[:, ry + 1, rx + 1], fx), fy)
            torch.testing.assert_close(field[:, y, x], want, atol=1e-5, rtol=0)
        # static over the clip: background pixels that are background in every frame agree across frames
        always = (a["video"] == background_image(sa)).all(1).all(0)       # background in every frame
        assert always.float().mean() > 0.5
        assert torch.equal(b["video"][0][:, always], b["video"][-1][:, always])
        torch.testing.assert_close(b["video"][0][:, always], background_image(sb)[:, always])
    assert len({kn.tobytes() for kn in knots}) == 3
    with pytest.raises(ValueError, match="texture_smooth"):
        SyntheticVideos(1, texture_smooth=-0.1)
    with pytest.raises(ValueError, match="texture_smooth_knots"):
        SyntheticVideos(1, texture_smooth=0.2, texture_smooth_knots=1)


def test_texture_tiles_repeat_one_random_tile():
    """texture_tiles=k: the cell pattern is one random tile repeated k x k times (a wallpaper)."""
    data = SyntheticVideos(4, num_frames=1, size=32, seed=2, texture=0.2, texture_cells=8, texture_tiles=2)
    patterns = [data.scene(i).pattern for i in range(4)]
    for p in patterns:
        assert p.shape == (8, 8)
        np.testing.assert_array_equal(p[:4, :4], p[4:, :4])
        np.testing.assert_array_equal(p[:4, :4], p[:4, 4:])
        np.testing.assert_array_equal(p[:4, :4], p[4:, 4:])
    assert len({p.tobytes() for p in patterns}) > 1          # a new tile per scene
    with pytest.raises(ValueError, match="multiple"):
        SyntheticVideos(1, texture=0.2, texture_cells=8, texture_tiles=3)
