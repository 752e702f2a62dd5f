"""WebVid-10M / 2.5M from its CSV (`results_2M_train.csv` etc.) plus a folder of downloaded mp4s.

Columns are read by name (`videoid`, `name`, optional `page_dir`; others ignored; order differs between
releases). The video is `<video_folder>/<videoid>.mp4` (AnimateDiff's flat layout) or, when that is absent,
`<video_folder>/<page_dir>/<videoid>.mp4` (m-bain `download.py` layout). Caption = `name`.
Paths that leave `video_folder` (a videoid such as `../x`, symlinks) are skipped as `outside_root` unless
`allow_outside_root=True`. Sampling follows AnimateDiff (16 frames, stride 4, 256², whole-clip flip) with the stride fallback of clip.py.
"""

from __future__ import annotations

import csv
import os
import sys
from typing import Mapping, Optional

from i2v.data.base import RobustMapDataset, StringTable, check_inside
from i2v.data.clip import ClipSpec
from i2v.data.stats import BadSample

REQUIRED_COLUMNS = ("videoid", "name")


def read_webvid_csv(csv_path: str, limit: Optional[int] = None) -> tuple[StringTable, StringTable, StringTable]:
    """(videoids, captions, page_dirs) from a WebVid CSV; page_dirs are "" when the column is absent."""
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"WebVid CSV not found: {csv_path} (expected e.g. results_2M_train.csv)")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    ids, names, dirs = [], [], []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}; found {cols}. Need videoid, name[, page_dir]")
        has_dir = "page_dir" in cols
        for row in reader:
            if limit is not None and len(ids) >= limit:
                break
            vid = (row.get("videoid") or "").strip()
            if not vid:
                continue
            ids.append(vid)
            names.append(row.get("name") or "")
            dirs.append((row.get("page_dir") or "").strip() if has_dir else "")
    return StringTable(ids), StringTable(names), StringTable(dirs)


class WebVidDataset(RobustMapDataset):
    """Map-style WebVid clips.

    Item: {"video": (F, 3, H, W) float32 in [-1, 1], "text": caption,
           "meta": {path, videoid, index, fps, n_frames_source, stride_used, start, indices, flipped, backend, ...}}.
    Missing/corrupt/too-short videos and empty captions are skipped (next index) and counted in `self.skips`.
    """

    def __init__(
        self,
        csv_path: str,
        video_folder: str,
        clip: ClipSpec | Mapping | None = None,
        deterministic: bool = False,
        seed: int = 0,
        limit: Optional[int] = None,
        allow_outside_root: bool = False,
        max_consecutive_failures: int = 100,
    ):
        super().__init__(clip, deterministic, seed, max_consecutive_failures)
        if not os.path.isdir(video_folder):
            raise FileNotFoundError(f"WebVid video_folder is not a directory: {video_folder}")
        self.csv_path, self.video_folder = csv_path, video_folder
        self.allow_outside_root = bool(allow_outside_root)
        self.videoids, self.captions, self.page_dirs = read_webvid_csv(csv_path, limit)
        if len(self.videoids) == 0:
            raise ValueError(f"{csv_path}: no rows with a videoid")

    def __len__(self) -> int:
        return len(self.videoids)

    def describe(self, index: int) -> str:
        return self.video_path(index)

    def video_path(self, index: int) -> str:
        """Flat `<folder>/<videoid>.mp4` if it exists, else `<folder>/<page_dir>/<videoid>.mp4`."""
        vid = self.videoids[index]
        flat = os.path.join(self.video_folder, f"{vid}.mp4")
        page_dir = self.page_dirs[index]
        if page_dir and not os.path.exists(flat):
            nested = os.path.join(self.video_folder, page_dir, f"{vid}.mp4")
            if os.path.exists(nested):
                return nested
        return flat

    def load(self, index: int) -> dict:
        text = self.captions[index].strip()
        if not text:
            raise BadSample("missing_caption", f"videoid {self.videoids[index]}")
        path = self.video_path(index)
        check_inside(path, self.video_folder, self.allow_outside_root)
        video, meta = self.read(path, index, path)
        meta.update(path=path, videoid=self.videoids[index])
        return {"video": video, "text": text, "meta": meta}
