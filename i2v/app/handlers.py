"""What the page's buttons do, without Gradio: check the inputs, run :class:`~i2v.app.engine.DemoEngine`, write the
files. Every handler returns a dict: ``{"ok": True, ...}`` or ``{"ok": False, "error": "<message for the page>"}`` --
bad input never raises, and an unexpected failure becomes a one-line message (its traceback goes to the server log).

Files of one request, in ``out_dir`` (the app's run folder): ``<stem>.mp4`` (the video, as ``sample.py`` writes
it), ``<stem>.json`` (the settings, the seed actually used and the ``sample.py`` command that gives the same
frames), ``<stem>_strip.png`` (frames side by side, lossless), ``<stem>_input<ext>`` (the uploaded image) and, for
videos smaller than 256 px, ``<stem>_preview.mp4`` (nearest-neighbour enlarged, for the page's player only).
"""
from __future__ import annotations

import itertools
import math
import secrets
import shlex
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch

from i2v.app.engine import ABLATIONS, DemoEngine, DemoSettings
from i2v.utils.io import image_size, save_contact_sheet, save_json, save_mp4, save_strip

ProgressCb = Optional[Callable[[int, int], None]]
MAX_SEED = 2**31 - 1
PREVIEW_SIDE = 256          # videos smaller than this get an enlarged copy for the page's player
# what a user can be told about (bad settings, unreadable files); anything else is logged with its traceback
USER_ERRORS = (ValueError, OSError, FloatingPointError)


class DemoInputError(ValueError):
    """Bad input from the page; the message is shown as it is."""


def check_image_file(path, max_pixels: int) -> Path:
    """The uploaded file exists, is an image PIL can read and has at most ``max_pixels`` pixels (checked from the
    header, before decoding). Raises :class:`DemoInputError` with the message for the page."""
    if path is None or str(path).strip() == "":
        raise DemoInputError("No image: upload an image (or press \"random toy scene\") first.")
    p = Path(str(path))
    if not p.is_file():
        raise DemoInputError(f"The uploaded image {p.name} is gone; upload it again.")
    try:
        w, h = image_size(p)
    except ValueError as e:
        reason = type(e.__cause__).__name__ if e.__cause__ is not None else "unreadable"
        raise DemoInputError(f"{p.name} is not an image this app can read ({reason}); "
                             f"upload a PNG, JPEG or WebP file.") from None
    if w * h > max_pixels:
        raise DemoInputError(f"The image is {w}x{h} = {w * h / 1e6:.1f} MP; the limit is {max_pixels / 1e6:.1f} MP. "
                             f"Upload a smaller image (it is resized to the model's size anyway).")
    return p


def parse_settings(t0, p, steps, guidance_scale, num_frames, negative_prompt="", adapter="full") -> DemoSettings:
    """Page values (strings or numbers, possibly None) -> :class:`DemoSettings`, with a message for each bad one.
    Ranges are checked by the engine (``SamplingSettings``)."""
    def number(name, value, kind):
        try:
            x = kind(float(value)) if kind is int else float(value)
        except (TypeError, ValueError):
            raise DemoInputError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(x) or (kind is int and float(value) != x):
            raise DemoInputError(f"{name} must be a finite {'whole ' if kind is int else ''}number, got {value!r}")
        return x

    if adapter not in ABLATIONS:
        raise DemoInputError(f"adapter must be one of {', '.join(ABLATIONS)}, got {adapter!r}")
    return DemoSettings(t0=number("t0", t0, float), p=number("p", p, float), steps=number("steps", steps, int),
                        guidance_scale=number("guidance scale", guidance_scale, float),
                        num_frames=number("frames", num_frames, int), negative_prompt=str(negative_prompt or ""),
                        adapter=str(adapter))


def parse_seed(seed, random_seed: bool) -> int:
    if random_seed:
        return secrets.randbelow(MAX_SEED + 1)
    try:
        s = int(float(seed))
    except (TypeError, ValueError):
        raise DemoInputError(f"seed must be a whole number, got {seed!r}") from None
    if not 0 <= s <= MAX_SEED or float(seed) != s:
        raise DemoInputError(f"seed must be a whole number in [0, {MAX_SEED}], got {seed!r}")
    return s


def hydra_quote(value) -> str:
    """A string as one quoted Hydra override value (so ``,``, ``=``, ``42`` or ``null`` stay text)."""
    return "'" + str(value).replace("'", "\\'") + "'"


def enlarge(frames: torch.Tensor, side: int = PREVIEW_SIDE) -> torch.Tensor:
    """Nearest-neighbour enlargement of ``(F, 3, H, W)`` so that the short side reaches ``side`` (an integer factor)."""
    k = max(1, -(-side // min(frames.shape[-2:])))
    return frames.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def strip_for_display(frames: torch.Tensor, height: int = 128):
    """Frames ``(F, 3, H, W)`` in [0, 1] side by side as an ``(H', F·W', 3)`` uint8 array, enlarged (nearest) so
    that small videos stay visible in the page; the lossless native strip is the ``_strip.png`` download."""
    import numpy as np

    from i2v.utils.io import to_uint8

    return np.concatenate(list(to_uint8(enlarge(frames * 2 - 1, height))), axis=1)


class DemoApp:
    """The handlers behind the page, bound to one engine and one output folder.

    Args:
        engine: the loaded model.
        out_dir: where every request's files go.
        sample_overrides: the ``sample.py`` arguments that select the same model (written into each .json as the
            command that reproduces the video), e.g. ``["experiment=toy"]``.
        max_image_pixels: larger uploads get a message.
        toy_scene_seed: the dataset seed of the "random toy scene" button (held-out scenes).
    """

    def __init__(self, engine: DemoEngine, out_dir, sample_overrides: Optional[list[str]] = None,
                 max_image_pixels: int = 4096 * 4096, toy_scene_seed: int = 10_000):
        self.engine, self.out_dir = engine, Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.sample_overrides = list(sample_overrides or [])
        self.max_image_pixels, self.toy_scene_seed = int(max_image_pixels), int(toy_scene_seed)
        self._counter = itertools.count(1)
        self._names = threading.Lock()

    # ------------------------------------------------------------------ one video
    def generate(self, image, prompt, settings: DemoSettings, seed: Optional[int] = None,
                 progress_cb: ProgressCb = None, label: str = "") -> dict:
        """One video. ``seed=None`` draws a random one (recorded in the settings). Returns ``{"ok", "video",
        "preview", "strip", "settings", "files", "frames" (F, 3, H, W) in [0, 1]}`` or ``{"ok": False, "error"}``."""
        return self._guard(lambda: self._generate(image, prompt, settings, seed, progress_cb, label))

    def _generate(self, image, prompt, settings, seed, progress_cb, label) -> dict:
        path = check_image_file(image, self.max_image_pixels)
        prompt = str(prompt or "").strip()
        if not prompt:
            raise DemoInputError("No prompt: describe the motion you want, e.g. \"a red circle moving left\".")
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else int(seed)
        self.engine.sampling_settings(settings)                   # range errors before any work
        image_t = self.engine.load_image(path)
        stem = self._stem(settings.adapter, seed, label)
        input_copy = self.out_dir / f"{stem}_input{path.suffix.lower() or '.png'}"
        shutil.copyfile(path, input_copy)
        start = time.perf_counter()
        frames = self.engine.generate(image_t, prompt, settings, seed, progress_cb)
        seconds = time.perf_counter() - start
        signed = frames * 2 - 1                                  # the writers take [-1, 1]
        fps = int(self.engine.cfg.sampling.get("fps", 8))
        video = save_mp4(signed, self.out_dir / f"{stem}.mp4", fps=fps)
        preview = video
        if min(signed.shape[-2:]) < PREVIEW_SIDE:
            preview = save_mp4(enlarge(signed), self.out_dir / f"{stem}_preview.mp4", fps=fps)
        strip = save_strip(signed, self.out_dir / f"{stem}_strip.png")
        meta = {"prompt": prompt, "seed": seed, **settings.as_dict(), "backbone": self.engine.backbone,
                "ckpt": self.engine.cfg.get("ckpt"), "height": int(frames.shape[-2]), "width": int(frames.shape[-1]),
                "denoising_steps": self.engine.denoising_steps(settings), "seconds": round(seconds, 3),
                "image": str(input_copy), "video": str(video),
                "sample_py": self.sample_command(input_copy, prompt, settings, seed)}
        js = save_json(meta, self.out_dir / f"{stem}.json", allow_nan=False)
        return {"ok": True, "video": str(video), "preview": str(preview), "strip": str(strip), "settings": meta,
                "files": [str(video), str(js), str(strip)], "frames": frames}

    def sample_command(self, image, prompt: str, s: DemoSettings, seed: int) -> str:
        """The ``python sample.py`` command that writes the same frames."""
        args = [*self.sample_overrides, f"image={hydra_quote(image)}", f"prompt={hydra_quote(prompt)}", f"seed={seed}",
                f"t0={s.t0}", f"p={s.p}", f"steps={s.steps}", f"cfg={s.guidance_scale}", f"frames={s.num_frames}",
                f"adapter={s.adapter}"]
        if s.negative_prompt:
            args.append(f"negative_prompt={hydra_quote(s.negative_prompt)}")
        return "python sample.py " + " ".join(shlex.quote(a) for a in args)

    # ------------------------------------------------------------------ comparisons
    def compare(self, image, prompt, a: DemoSettings, b: DemoSettings, seed: Optional[int] = None,
                progress_cb: ProgressCb = None) -> dict:
        """The same image, prompt and seed with two settings; ``{"ok", "a", "b", "sheet"}`` (``a``/``b`` as
        :meth:`generate` returns them; ``sheet``: both frame strips, labelled, one PNG)."""
        return self.compare_many(image, prompt, [("A", a), ("B", b)], seed, progress_cb)

    def table3(self, image, prompt, settings: DemoSettings, seed: Optional[int] = None,
               progress_cb: ProgressCb = None) -> dict:
        """Every ablation the loaded model has (paper Table 3 rows) with the same image, prompt, seed and settings."""
        rows = [(name, DemoSettings(**{**settings.as_dict(), "adapter": name})) for name in self.engine.ablations]
        return self.compare_many(image, prompt, rows, seed, progress_cb)

    def compare_many(self, image, prompt, rows: list[tuple[str, DemoSettings]], seed: Optional[int] = None,
                     progress_cb: ProgressCb = None) -> dict:
        def run() -> dict:
            check_image_file(image, self.max_image_pixels)
            for _, s in rows:                                    # every setting checked before the first video
                self.engine.sampling_settings(s)
            the_seed = secrets.randbelow(MAX_SEED + 1) if seed is None else int(seed)
            totals = [self.engine.denoising_steps(s) for _, s in rows]
            out, done = {}, 0
            for (name, s), total in zip(rows, totals):
                def cb(i, n, done=done):
                    if progress_cb is not None:
                        progress_cb(done + i, sum(totals))
                res = self._generate(image, prompt, s, the_seed, cb, label="" if name == s.adapter else name)
                out[name] = res
                done += total
            sheet_rows = [(f"{name if name == s.adapter else name + ': ' + s.adapter}\nt0={s.t0:g} p={s.p:g}\n"
                           f"steps={s.steps} cfg={s.guidance_scale:g}",
                           out[name]["frames"] * 2 - 1) for name, s in rows]
            h = int(sheet_rows[0][1].shape[-2])
            sheet = save_contact_sheet(sheet_rows, self.out_dir / f"{self._stem('compare', the_seed, '')}.png",
                                       scale=max(1, -(-128 // h)))
            return {"ok": True, "sheet": str(sheet), "seed": the_seed, **out}
        return self._guard(run)

    # ------------------------------------------------------------------ toy scenes
    def random_toy_scene(self, index: Optional[int] = None) -> dict:
        """A held-out synthetic scene's first frame as a PNG and its caption: ``{"ok", "image", "prompt"}``."""
        def run() -> dict:
            from PIL import Image

            from i2v.data.synthetic import SyntheticVideos
            from i2v.toy.evaluate import scene_options
            from i2v.utils.io import to_uint8

            if self.engine.backbone != "toy":
                raise DemoInputError("random toy scenes are for the toy world (python app.py with experiment=toy)")
            h, w = self.engine.size
            data = SyntheticVideos(n_items=100_000, num_frames=int(self.engine.cfg.sampling.num_frames), size=(h, w),
                                   seed=self.toy_scene_seed, **scene_options(self.engine.cfg.backbone))
            i = secrets.randbelow(len(data)) if index is None else int(index)
            path = self.out_dir / f"toy_scene_{i:05d}.png"
            if not path.exists():
                Image.fromarray(to_uint8(data.first_frame(i)[None])[0]).save(path)
            return {"ok": True, "image": str(path), "prompt": data.scene(i).caption, "index": i}
        return self._guard(run)

    # ------------------------------------------------------------------ helpers
    def _stem(self, adapter: str, seed: int, label: str) -> str:
        with self._names:
            n = next(self._counter)
            while list(self.out_dir.glob(f"{n:04d}_*")):         # a reused out_dir: never overwrite
                n = next(self._counter)
        return f"{n:04d}_{label + '_' if label else ''}{adapter}_seed{seed}"

    @staticmethod
    def _guard(fn: Callable[[], dict]) -> dict:
        try:
            return fn()
        except DemoInputError as e:
            return {"ok": False, "error": str(e)}
        except USER_ERRORS as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        except Exception as e:  # noqa: BLE001 - the page gets one line, the server log the traceback
            traceback.print_exc(file=sys.stderr)
            return {"ok": False, "error": f"internal error ({type(e).__name__}: {e}); the server log has the details"}
