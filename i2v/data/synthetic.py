"""Synthetic moving-shapes clips for the toy world: a static background (one colour, optionally with a random cell
pattern and a smooth colour field: ``make_scene``) and one (optionally two) coloured shapes (circle, square,
triangle) moving left/right/up/down at constant speed, fully inside the frame.

Item i is a pure function of (seed, i). Coordinates: pixel (row r, column c) has its centre at (x=c, y=r);
`meta["centers"]` is (F, 2) float32 (x, y) of the main object, which is drawn last (on top), so the pixel
nearest to its centre always shows its colour. Edges are anti-aliased by supersampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from i2v.data.clip import ClipSpec, Size, as_hw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "cyan": (40, 200, 210),
    "magenta": (200, 50, 190),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
RADIUS_RANGE = (0.1, 0.18)  # default object radius range, fractions of the image side (the shipped toy world)
# The background options of a world (make_scene / SyntheticVideos keywords) and their defaults: what a toy base's
# pretraining clips, the adapter's clips and the held-out clips must agree on (with the radius range).
BACKGROUND_DEFAULTS = {"texture": 0.0, "texture_cells": 8, "texture_tiles": 1, "texture_smooth": 0.0,
                       "texture_smooth_knots": 3}


@dataclass
class ShapeObject:
    shape: str
    colour: str
    direction: str
    speed: float  # pixels per frame
    radius: float  # pixels
    centers: np.ndarray  # (F, 2) float (x, y)


@dataclass
class Scene:
    background: str
    objects: list  # [main, *others]; drawn in reverse order so the main object is on top
    size: tuple  # (H, W)
    caption: str = field(default="")
    texture: float = 0.0  # amplitude of the background's static pattern ([-1, 1] units; 0 = flat background)
    pattern: Optional[np.ndarray] = None  # (cells, cells) of +-1: the background pattern, fixed over the clip
    smooth: Optional[np.ndarray] = None  # (3, k, k) in [-smooth amplitude, +]: knots of the smooth colour field


def _trajectory(rng, num_frames: int, hw: tuple, radius: float, direction: str, speed: float):
    """(F, 2) centres moving along `direction`, fully inside the image; speed is reduced if it cannot fit."""
    h, w = hw
    dx, dy = DIRECTIONS[direction]
    lo = radius - 0.5  # a shape of "radius" r around c covers [c - r, c + r]; the image spans [-0.5, side - 0.5]
    hi_x, hi_y = w - 0.5 - radius, h - 0.5 - radius
    along = max(0.0, hi_x - lo if dx else hi_y - lo)
    speed = min(speed, along / max(num_frames - 1, 1))
    travel = speed * (num_frames - 1)
    cross = lo + rng.random() * max(0.0, (hi_y if dx else hi_x) - lo)
    start = lo + rng.random() * max(0.0, along - travel)
    if (dx or dy) < 0:  # moving towards 0: start at the high end
        start = start + travel
    t = np.arange(num_frames, dtype=np.float64) * speed
    if dx:
        xs, ys = start + dx * t, np.full(num_frames, cross)
    else:
        xs, ys = np.full(num_frames, cross), start + dy * t
    return np.stack([xs, ys], axis=1).astype(np.float32), float(speed)


def _check_texture(texture: float, cells: int, tiles: int, smooth: float = 0.0, knots: int = 3) -> None:
    if texture < 0 or cells < 1 or tiles < 1 or cells % tiles:
        raise ValueError(f"texture must be >= 0 and texture_cells a positive multiple of texture_tiles, got "
                         f"texture={texture}, texture_cells={cells}, texture_tiles={tiles}")
    if smooth < 0 or knots < 2:
        raise ValueError(f"texture_smooth must be >= 0 and texture_smooth_knots >= 2, got "
                         f"texture_smooth={smooth}, texture_smooth_knots={knots}")


def make_scene(
    seed: int,
    index: int,
    num_frames: int = 16,
    size: Size = 32,
    speed_range: Sequence[float] = (0.015, 0.04),
    radius_range: Sequence[float] = RADIUS_RANGE,
    second_object_prob: float = 0.0,
    shapes: Sequence[str] = SHAPES,
    colours: Sequence[str] = tuple(COLOURS),
    texture: float = 0.0,
    texture_cells: int = 8,
    texture_tiles: int = 1,
    texture_smooth: float = 0.0,
    texture_smooth_knots: int = 3,
) -> Scene:
    """Scene for item `index`: a pure function of the arguments. speed/radius ranges are fractions of the image
    side (speed per frame); radius is at least 2.5 px (so the centre pixel lies well inside the shape) and at most
    (side - 1) / 2. ``texture`` > 0 gives the background a static random pattern: a ``texture_cells`` x
    ``texture_cells`` grid of cells, each brighter or darker by ``texture`` (the caption does not describe it, so
    only the first frame tells it). With ``texture_tiles`` = k > 1 the pattern is a random tile of
    ``texture_cells / k`` cells repeated k x k times (a wallpaper: matching far-apart places is what a model's
    self-attention learns from it). ``texture_smooth`` > 0 adds a smooth colour field: each channel bilinear
    between random values in [-texture_smooth, texture_smooth] on a ``texture_smooth_knots`` x
    ``texture_smooth_knots`` grid of knots (corners included), so every place of the background has its own colour
    that survives heavy noise (a place code that content-matching attention can use). Both are drawn after
    everything else (the field last), so a scene's shapes, colours, motion and cell pattern do not depend on them."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
    hw = as_hw(size)
    side = min(hw)
    palette = list(colours)
    bg = palette[rng.integers(len(palette))]
    n_obj = 2 if rng.random() < second_object_prob else 1
    used, objects = {bg}, []
    for _ in range(n_obj):
        colour = rng.choice([c for c in palette if c not in used])
        used.add(colour)
        shape = shapes[rng.integers(len(shapes))]
        direction = list(DIRECTIONS)[rng.integers(4)]
        radius = min(max(2.5, rng.uniform(*radius_range) * side), (side - 1) / 2)
        speed = rng.uniform(*speed_range) * side
        centers, speed = _trajectory(rng, num_frames, hw, radius, direction, speed)
        objects.append(ShapeObject(shape, str(colour), direction, speed, float(radius), centers))
    parts = [f"a {o.colour} {o.shape} moving {o.direction}" for o in objects]
    pattern = None
    _check_texture(texture, texture_cells, texture_tiles, texture_smooth, texture_smooth_knots)
    if texture > 0:
        tile = texture_cells // texture_tiles
        pattern = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(tile, tile))
        pattern = np.tile(pattern, (texture_tiles, texture_tiles))
    smooth = None
    if texture_smooth > 0:
        k = int(texture_smooth_knots)
        smooth = (rng.uniform(-1.0, 1.0, size=(3, k, k)) * texture_smooth).astype(np.float32)
    return Scene(bg, objects, hw, " and ".join(parts) + f" on a {bg} background", float(texture), pattern, smooth)


def background_image(scene: Scene) -> torch.Tensor:
    """The scene's background (3, H, W) in [-1, 1]: its colour, plus the static pattern when it has one (each cell
    covers the pixels whose centres fall in it), plus the smooth colour field when it has one (bilinear between its
    knots, the outer knots on the outer pixel centres)."""
    h, w = scene.size
    img = _colour(scene.background).expand(3, h, w).clone()
    if scene.pattern is not None and scene.texture > 0:
        cells_y, cells_x = scene.pattern.shape
        rows = (torch.arange(h) * cells_y) // h
        cols = (torch.arange(w) * cells_x) // w
        img = img + scene.texture * torch.from_numpy(scene.pattern)[rows][:, cols]
    if scene.smooth is not None:
        img = img + torch.nn.functional.interpolate(torch.from_numpy(scene.smooth)[None], size=(h, w),
                                                    mode="bilinear", align_corners=True)[0]
    return img.clamp(-1.0, 1.0)


def _coverage(shape: str, x: torch.Tensor, y: torch.Tensor, cx: float, cy: float, r: float) -> torch.Tensor:
    dx, dy = x - cx, y - cy
    if shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif shape == "square":
        inside = torch.maximum(dx.abs(), dy.abs()) <= 0.85 * r
    elif shape == "triangle":  # apex up at (cx, cy - r), base at y = cy + r with half-width r
        inside = (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return inside.float()


def _colour(name: str) -> torch.Tensor:
    return torch.tensor(COLOURS[name], dtype=torch.float32).view(3, 1, 1) / 127.5 - 1.0


def render_frame(scene: Scene, f: int, supersample: int = 4) -> torch.Tensor:
    """Frame f of the scene: (3, H, W) float32 in [-1, 1]."""
    h, w = scene.size
    s = supersample
    off = (torch.arange(s, dtype=torch.float32) + 0.5) / s - 0.5
    ys = (torch.arange(h, dtype=torch.float32)[:, None] + off[None, :]).reshape(-1)
    xs = (torch.arange(w, dtype=torch.float32)[:, None] + off[None, :]).reshape(-1)
    y, x = torch.meshgrid(ys, xs, indexing="ij")  # (H·s, W·s)
    img = background_image(scene)
    for obj in reversed(scene.objects):  # main object last = on top
        cx, cy = (float(v) for v in obj.centers[f])
        cov = _coverage(obj.shape, x, y, cx, cy, obj.radius)
        alpha = cov.reshape(h, s, w, s).mean(dim=(1, 3))  # "(h sh) (w sw) -> h w" as a mean
        img = img * (1 - alpha) + _colour(obj.colour) * alpha
    return img


def render_video(scene: Scene, supersample: int = 4) -> torch.Tensor:
    """All frames: (F, 3, H, W) float32 in [-1, 1]."""
    n = len(scene.objects[0].centers)
    return torch.stack([render_frame(scene, f, supersample) for f in range(n)])


class SyntheticVideos(Dataset):
    """Deterministic moving-shapes dataset. Item: {"video": (F, 3, H, W) in [-1, 1], "text": caption,
    "meta": {index, shape, colour, background, direction, speed (px/frame), radius, centers (F, 2) (x, y),
    objects: [per-object dicts]}}."""

    def __init__(
        self,
        n_items: int,
        num_frames: int = 16,
        size: Size = 32,
        seed: int = 0,
        speed_range: Sequence[float] = (0.015, 0.04),
        radius_range: Sequence[float] = RADIUS_RANGE,
        second_object_prob: float = 0.0,
        shapes: Sequence[str] = SHAPES,
        colours: Sequence[str] = tuple(COLOURS),
        supersample: int = 4,
        texture: float = 0.0,
        texture_cells: int = 8,
        texture_tiles: int = 1,
        texture_smooth: float = 0.0,
        texture_smooth_knots: int = 3,
        clip: ClipSpec | Mapping | None = None,
        deterministic: bool = True,
    ):
        """``clip`` (what :class:`i2v.data.VideoDataModule` passes every dataset: a ClipSpec or a mapping) sets
        ``num_frames`` and ``size`` where it has them; its stride and flip do not apply to rendered clips. Items are
        always a pure function of (seed, index), so ``deterministic`` changes nothing."""
        if isinstance(clip, ClipSpec):
            num_frames, size = clip.num_frames, clip.size
        elif clip:
            num_frames, size = clip.get("num_frames", num_frames), clip.get("size", size)
        if n_items < 1 or num_frames < 1:
            raise ValueError(f"n_items and num_frames must be >= 1, got {n_items}, {num_frames}")
        bad = [s for s in shapes if s not in SHAPES] + [c for c in colours if c not in COLOURS]
        _check_texture(texture, texture_cells, texture_tiles, texture_smooth, texture_smooth_knots)
        if bad or len(colours) < 3:
            raise ValueError(f"bad shapes/colours {bad}: shapes from {SHAPES}, >= 3 colours from {list(COLOURS)}")
        self.n_items, self.num_frames, self.size, self.seed = int(n_items), int(num_frames), as_hw(size), int(seed)
        self.scene_kwargs = dict(speed_range=tuple(speed_range), radius_range=tuple(radius_range),
                                 second_object_prob=float(second_object_prob), shapes=tuple(shapes),
                                 colours=tuple(colours), texture=float(texture),
                                 texture_cells=int(texture_cells), texture_tiles=int(texture_tiles),
                                 texture_smooth=float(texture_smooth), texture_smooth_knots=int(texture_smooth_knots))
        self.supersample = int(supersample)

    def __len__(self) -> int:
        return self.n_items

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.n_items:
            raise IndexError(f"index {index} out of range for {self.n_items} items")
        return make_scene(self.seed, index, self.num_frames, self.size, **self.scene_kwargs)

    def first_frame(self, index: int) -> torch.Tensor:
        """The input image of item `index`: (3, H, W) float32 in [-1, 1] (= item["video"][0])."""
        return render_frame(self.scene(index), 0, self.supersample)

    def __getitem__(self, index: int) -> dict:
        sc = self.scene(index)
        objs = [dict(shape=o.shape, colour=o.colour, direction=o.direction, speed=o.speed, radius=o.radius,
                     centers=torch.from_numpy(o.centers)) for o in sc.objects]
        meta = dict(index=index, background=sc.background, objects=objs, **objs[0])
        return {"video": render_video(sc, self.supersample), "text": sc.caption, "meta": meta}
