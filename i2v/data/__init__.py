"""Video data: decord/PyAV clip reading, WebVid CSV, video2dataset shards, self-collected folders, synthetic
moving shapes, and the LightningDataModule that builds them from the `data/` config group."""

from i2v.data.base import RobustMapDataset, SubsetView
from i2v.data.clip import ClipSpec, plan_clip, read_clip, resize_crop
from i2v.data.datamodule import VideoDataModule, collate_videos
from i2v.data.selfcollected import FolderVideos
from i2v.data.stats import REASONS, BadSample, DataSkipReport, SkipCounter
from i2v.data.synthetic import Scene, SyntheticVideos, make_scene, render_frame, render_video
from i2v.data.video import VideoInfo, probe_video, read_frames
from i2v.data.webdataset import WebDatasetVideos, expand_urls, shards_for
from i2v.data.webvid import WebVidDataset

__all__ = [
    "BadSample", "ClipSpec", "DataSkipReport", "FolderVideos", "REASONS", "RobustMapDataset", "Scene",
    "SkipCounter", "SubsetView", "SyntheticVideos", "VideoDataModule", "VideoInfo", "WebDatasetVideos",
    "WebVidDataset", "collate_videos", "expand_urls", "make_scene", "plan_clip", "probe_video", "read_clip",
    "read_frames", "render_frame", "render_video", "resize_crop", "shards_for",
]
