"""Evaluation metrics of the paper's Tables 1-3 (§4.1): DoverVQA (plug-in), CLIPTemp, FlowScore, WarpingError,
plus the MJHQ-30K evaluation-set selection and folder scoring. Protocol details: shared reference §1-6."""
from i2v.metrics.clip_temp import CLIPTemp, build_clip_encoder, clip_preprocess
from i2v.metrics.dover import DoverScorer, DoverVQA, VideoQualityScorer, build_dover_scorer
from i2v.metrics.flow import FlowScore, RaftConfig, RaftFlow, WarpingError, backward_warp, occlusion_mask

__all__ = ["CLIPTemp", "build_clip_encoder", "clip_preprocess", "DoverScorer", "DoverVQA", "VideoQualityScorer",
           "build_dover_scorer", "FlowScore", "RaftConfig", "RaftFlow", "WarpingError", "backward_warp",
           "occlusion_mask"]
