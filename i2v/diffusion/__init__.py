"""Diffusion side of I2V-Adapter (paper §3.3): noise schedule, Frame Similarity Prior, first-frame-clamped sampler,
classifier-free guidance, LAB colour matching and the ControlNet plug-in."""
from .color import color_match_video
from .controlnet import VideoControlNet, load_control_frames
from .fsp import degrade, frame_similarity_prior, fsp_num_steps, fsp_start_index, gaussian_blur, initial_latents
from .guidance import cfg_combine
from .sampler import Denoiser, check_scheduler, sample_video
from .schedule import NoiseSchedule, SamplerConfig, make_scheduler

__all__ = ["NoiseSchedule", "SamplerConfig", "make_scheduler", "degrade", "gaussian_blur", "frame_similarity_prior",
           "fsp_num_steps", "fsp_start_index", "initial_latents", "sample_video", "Denoiser", "check_scheduler",
           "cfg_combine", "color_match_video", "VideoControlNet", "load_control_frames"]
