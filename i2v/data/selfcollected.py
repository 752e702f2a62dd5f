"""Self-collected videos (paper stage 2): any folder tree of videos with sidecar captions, or a manifest.

Sources, in order of precedence:
- `manifest`: JSONL (one object per line with `path` and `caption`; `video`/`text` are accepted aliases) or CSV
  (columns `path`, `caption`). Relative paths are resolved against `root` if given, else the manifest's folder.
- otherwise every file under `root` with a video extension (sorted walk, deterministic), caption from the
  sidecar `<same stem>.txt`.
A missing/empty caption is skipped and counted (`missing_caption`) unless `default_caption` is set.
Paths must stay under the data root (`root`, else the manifest's folder) after resolving `..` and symlinks;
others are skipped and counted (`outside_root`) unless `allow_outside_root=True`.
`min_short_side` (e.g. 720 for the paper's stage 2) rejects smaller videos with a header-only PyAV probe:
lazily at load time (counted `low_resolution`), or for all files up front with `prefilter=True`.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Sequence

from i2v.data.base import RobustMapDataset, StringTable, check_inside
from i2v.data.clip import ClipSpec
from i2v.data.stats import BadSample, UnusableData, format_counts
from i2v.data.video import probe_video
from i2v.utils.tables import read_rows

log = logging.getLogger("i2v.data")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")
_PATH_KEYS, _CAPTION_KEYS = ("path", "video", "file"), ("caption", "text")


def _first(row: dict, keys: Sequence[str], where: str):
    for k in keys:
        if k in row:
            return row[k]
    raise ValueError(f"{where}: no {keys[0]!r} field (accepted: {list(keys)}); got {sorted(row)}")


def read_manifest(manifest: str) -> tuple[list[str], list[Optional[str]]]:
    """(paths, captions) from a .jsonl/.json-lines or .csv manifest; captions may be None."""
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f"manifest not found: {manifest}")
    paths: list[str] = []
    captions: list[Optional[str]] = []
    kind = "row" if manifest.lower().endswith(".csv") else "line"
    for i, row in read_rows(manifest, other="lines"):
        where = f"{manifest} {kind} {i}"
        if isinstance(row, str):
            raise ValueError(f"{where}: {row}")
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
        paths.append(str(_first(row, _PATH_KEYS, where)))
        captions.append(next((row[k] for k in _CAPTION_KEYS if k in row), None))
    return paths, captions


def scan_folder(root: str, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[str]:
    """All video files under root (case-insensitive extensions), sorted for a deterministic order."""
    exts = tuple(e.lower() for e in extensions)
    found = []
    for d, subdirs, files in os.walk(root):
        subdirs.sort()
        found += [os.path.join(d, f) for f in sorted(files) if f.lower().endswith(exts)]
    return found


class FolderVideos(RobustMapDataset):
    """Map-style dataset over a folder tree or manifest. Item as in WebVidDataset (meta has `path`)."""

    def __init__(
        self,
        root: Optional[str] = None,
        manifest: Optional[str] = None,
        clip: ClipSpec | Mapping | None = None,
        deterministic: bool = False,
        seed: int = 0,
        min_short_side: int = 0,
        default_caption: Optional[str] = None,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        prefilter: bool = False,
        allow_outside_root: bool = False,
        max_consecutive_failures: int = 100,
    ):
        super().__init__(clip, deterministic, seed, max_consecutive_failures)
        if root is None and manifest is None:
            raise ValueError("FolderVideos needs root= (folder of videos + .txt captions) or manifest= (jsonl/csv)")
        self.min_short_side, self.default_caption = int(min_short_side), default_caption
        self.allow_outside_root = bool(allow_outside_root)
        if manifest is not None:
            paths, caps = read_manifest(manifest)
            base = root if root is not None else os.path.dirname(os.path.abspath(manifest))
            paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in paths]
        else:
            if not os.path.isdir(root):
                raise FileNotFoundError(f"FolderVideos root is not a directory: {root}")
            paths, caps = scan_folder(root, extensions), []
            base = root
        self.base = os.path.abspath(base)
        if not paths:
            raise ValueError(f"FolderVideos: no videos found in {manifest or root} (extensions {list(extensions)})")
        self.paths = StringTable(paths)
        self.captions = StringTable([(c or "") if c is not None else "" for c in caps]) if manifest else None
        if prefilter and self.min_short_side > 0:
            self._prefilter()

    def _prefilter(self) -> None:
        keep, dropped = [], {}
        for i in range(len(self.paths)):
            try:
                self._check_resolution(self.paths[i])
                keep.append(i)
            except BadSample as e:
                dropped[e.reason] = dropped.get(e.reason, 0) + 1
                self.skips.add(e.reason, name=self.paths[i])
        log.info("FolderVideos prefilter (min_short_side=%d): kept %d of %d, dropped %s",
                 self.min_short_side, len(keep), len(self.paths), format_counts(dropped))
        if not keep:
            raise UnusableData(f"FolderVideos: no video passes min_short_side={self.min_short_side} "
                               f"({format_counts(dropped)})")
        self.paths = StringTable([self.paths[i] for i in keep])
        if self.captions is not None:
            self.captions = StringTable([self.captions[i] for i in keep])

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, index: int) -> str:
        return self.paths[index]

    def _check_resolution(self, path: str) -> None:
        info = probe_video(path, path)
        if min(info.height, info.width) < self.min_short_side:
            raise BadSample("low_resolution", f"{path}: {info.height}x{info.width} < {self.min_short_side}")

    def caption(self, index: int) -> str:
        """Manifest caption or sidecar `<stem>.txt`; default_caption or BadSample("missing_caption") if none."""
        text = ""
        if self.captions is not None:
            text = self.captions[index]
        else:
            side = os.path.splitext(self.paths[index])[0] + ".txt"
            if os.path.isfile(side):
                with open(side, encoding="utf-8", errors="replace") as f:
                    text = f.read()
        text = text.strip()
        if not text:
            if self.default_caption is None:
                raise BadSample("missing_caption", self.paths[index])
            text = self.default_caption
        return text

    def load(self, index: int) -> dict:
        path = self.paths[index]
        check_inside(path, self.base, self.allow_outside_root)
        text = self.caption(index)
        if self.min_short_side > 0:
            self._check_resolution(path)
        video, meta = self.read(path, index, path)
        meta["path"] = path
        return {"video": video, "text": text, "meta": meta}
