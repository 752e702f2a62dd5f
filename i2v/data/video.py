"""Video decoding: decord first, PyAV as fallback, from a path or from in-memory bytes (shards).

Only the requested frame indices are converted to RGB (decord `get_batch`; PyAV seeks to the nearest keyframe
before the first index and stops after the last). Every failure is turned into `BadSample` with a reason, so the
datasets can skip and count it. Clip planning and pixel transforms live in `clip.py`.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence, Union

import av
import numpy as np

from i2v.data.stats import BadSample

try:  # decord has no wheels on some platforms; PyAV alone still works.
    import decord

    decord.logging.set_level(decord.logging.QUIET)
except ImportError:  # pragma: no cover - depends on the platform
    decord = None

log = logging.getLogger("i2v.data")
VideoSource = Union[str, os.PathLike, bytes]
BACKENDS = ("decord", "pyav")


@dataclass
class VideoInfo:
    """What a reader knows after opening: frame count (as reported by the container), fps, frame size
    (0 until decoded for decord)."""

    num_frames: int
    fps: float
    height: int
    width: int


def _check_source(source: VideoSource, name: str) -> None:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadSample("empty_file", name)
        return
    if not os.path.exists(source):
        raise BadSample("missing_file", name)
    if os.path.getsize(source) == 0:
        raise BadSample("empty_file", name)


def _as_input(source: VideoSource):
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    return os.fspath(source)


class ShortStream(ValueError):
    """The stream decodes fewer frames than its header claims; `actual` = frames that exist."""

    def __init__(self, actual: int, reported: int):
        super().__init__(f"stream ends after {actual} frames, header says {reported}")
        self.actual = actual


class DecordReader:
    """decord.VideoReader wrapper; `frames(indices)` -> uint8 (N, H, W, 3)."""

    name = "decord"

    def __init__(self, source: VideoSource, threads: int = 1):
        if decord is None:
            raise RuntimeError("decord is not installed")
        self.vr = decord.VideoReader(_as_input(source), num_threads=threads)
        # decord exposes no header frame size without decoding; read_frames fills it in from the frames.
        self.info = VideoInfo(len(self.vr), float(self.vr.get_avg_fps() or 0.0), 0, 0)

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        return self.vr.get_batch(list(indices)).asnumpy()


class PyAVReader:
    """PyAV wrapper; counts frames by demuxing when the container does not say; `frames(indices)` -> uint8."""

    name = "pyav"

    def __init__(self, source: VideoSource, threads: int = 1, count_frames: bool = True):
        self.source, self.threads = source, threads
        with av.open(_as_input(source)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(0)
            n = int(stream.frames or 0)
            if n <= 0 and count_frames:  # webm/mkv/some gifs: count packets (no decoding)
                n = sum(1 for p in container.demux(stream) if p.size)
            ctx = stream.codec_context
            self.info = VideoInfo(n, float(rate), int(ctx.height), int(ctx.width))

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        wanted = sorted(set(int(i) for i in indices))
        wanted_set = set(wanted)
        got: dict[int, np.ndarray] = {}
        with av.open(_as_input(self.source)) as container:
            stream = container.streams.video[0]
            if self.threads != 1:  # 0 = FFmpeg's automatic thread count
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = max(0, self.threads)
            fps, tb = self.info.fps, stream.time_base
            t0 = stream.start_time or 0
            seekable = fps > 0 and tb is not None and wanted[0] > 2 * fps
            if seekable:
                target = int((wanted[0] / fps) / tb) + t0
                container.seek(target, stream=stream, backward=True, any_frame=False)
            count, last = 0, -1
            frames = container.decode(stream)
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except av.error.FFmpegError:  # truncated/corrupt data: keep what decoded before it
                    break
                if seekable and frame.pts is not None:
                    idx = int(round(float((frame.pts - t0) * tb) * fps))
                else:
                    idx = count
                count, last = count + 1, max(last, idx)
                if idx in got or idx not in wanted_set:
                    if idx > wanted[-1]:
                        break
                    continue
                got[idx] = frame.to_ndarray(format="rgb24")
                if len(got) == len(wanted):
                    break
        missing = [i for i in wanted if i not in got]
        if missing:
            if 0 <= last < missing[0]:  # the stream simply ends early: the header over-reported its length
                raise ShortStream(last + 1, self.info.num_frames)
            raise ValueError(f"frames {missing[:4]} not found in the stream ({self.info.num_frames} reported)")
        return np.stack([got[int(i)] for i in indices])


_READERS = {"decord": DecordReader, "pyav": PyAVReader}


def _available(backends: Sequence[str]) -> list[str]:
    for b in backends:
        if b not in _READERS:
            raise ValueError(f"unknown video backend {b!r}; expected a subset of {BACKENDS}")
    return [b for b in backends if not (b == "decord" and decord is None)]


def read_frames(
    source: VideoSource,
    choose: Callable[[VideoInfo], Sequence[int]],
    name: str = "<bytes>",
    backends: Sequence[str] = BACKENDS,
    threads: int = 1,
) -> tuple[np.ndarray, VideoInfo, list[int], str]:
    """Open `source` with the first backend that works and decode only the frames `choose(info)` returns.

    Returns (frames uint8 (N, H, W, 3), info, indices, backend name). A backend that fails to open or decode
    passes the file to the next one; `BadSample` raised by `choose` (e.g. too_short) is final.
    Raises BadSample("missing_file" | "empty_file" | "corrupt", ...).
    """
    _check_source(source, name)
    errors = []
    for b in _available(backends):
        try:
            reader = _READERS[b](source, threads)
            if reader.info.num_frames <= 0 or reader.info.height < 0 or reader.info.width < 0:
                raise ValueError(f"bad stream header {reader.info}")
        except BadSample:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder error means: try the next backend
            errors.append(f"{b} open: {type(e).__name__}: {str(e)[:120]}")
            continue
        indices = [int(i) for i in choose(reader.info)]
        try:
            try:
                frames = reader.frames(indices)
            except ShortStream as short:  # truncated: re-plan once within the frames that decode
                reader.info.num_frames = short.actual
                try:
                    indices = [int(i) for i in choose(reader.info)]
                except BadSample as e:
                    raise BadSample("corrupt", f"{name}: truncated, {short} ({e})") from None
                frames = reader.frames(indices)
        except BadSample:
            raise
        except Exception as e:  # noqa: BLE001
            errors.append(f"{b} decode: {type(e).__name__}: {str(e)[:120]}")
            continue
        if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
            errors.append(f"{b}: unexpected frame array {frames.shape}")
            continue
        reader.info.height, reader.info.width = int(frames.shape[1]), int(frames.shape[2])
        return frames, reader.info, indices, b
    raise BadSample("corrupt", f"{name}: " + " | ".join(errors) if errors else f"{name}: no backend available")


def probe_video(source: VideoSource, name: str = "<bytes>") -> VideoInfo:
    """Cheap header probe with PyAV: size and fps; num_frames is 0 when the container does not store it.

    Raises BadSample("missing_file" | "empty_file" | "corrupt").
    """
    _check_source(source, name)
    try:
        info = PyAVReader(source, count_frames=False).info
    except Exception as e:  # noqa: BLE001
        raise BadSample("corrupt", f"{name}: probe: {type(e).__name__}: {str(e)[:120]}") from None
    if info.height <= 0 or info.width <= 0:
        raise BadSample("corrupt", f"{name}: probe: no frame size in the header")
    return info
