"""ControlNet plug-in (paper §4.5, Fig. 5): per-frame control images steer the frozen UNet.

A diffusers ``ControlNetModel`` (loaded from a **local** diffusers folder: ``config.json`` +
``diffusion_pytorch_model.safetensors``) runs on all ``B·F`` frames at the video's shared timestep with the
per-frame context; its 12 (SD1.5) / 9 (SDXL) down residuals and the mid residual, multiplied by
``conditioning_scale``, are added to our UNet's skip connections (``down_residuals`` / ``mid_residual``), exactly
as diffusers' ``StableDiffusionControlNetPipeline`` feeds ``UNet2DConditionModel`` — frame by frame.

Residual layout: the ``(B·F, C_i, h_i, w_i)`` tensors diffusers returns, frames of a video consecutive
(``"(b f) c h w"``), i.e. the layout of the UNet's spatial layers.

Control images are ``(B, F, 3, H, W)`` in [-1, 1] (the repository's pixel convention) and are mapped to the
[0, 1] range ControlNets are trained on. ``num_text_tokens``: with a Content-Adapter the context carries image
tokens after the text tokens; ControlNets were trained with text only, so set it to the text length (77) to
pass only the text tokens (diffusers' IP-Adapter + ControlNet pipelines do the same).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from i2v.utils.io import image_files

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


class VideoControlNet(nn.Module):
    """Frame-wise wrapper around a diffusers ``ControlNetModel``.

    Args:
        controlnet: the diffusers model (kept frozen, eval mode).
        conditioning_scale: multiplies every residual.
        num_text_tokens: pass only ``context[:, :num_text_tokens]`` to the ControlNet (None: the whole context).
    """

    def __init__(self, controlnet: nn.Module, conditioning_scale: float = 1.0, num_text_tokens: Optional[int] = None):
        super().__init__()
        self.controlnet = controlnet.eval().requires_grad_(False)
        self.conditioning_scale = float(conditioning_scale)
        self.num_text_tokens = num_text_tokens

    @classmethod
    def from_folder(cls, path: str | os.PathLike, conditioning_scale: float = 1.0,
                    num_text_tokens: Optional[int] = None, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> "VideoControlNet":
        """Load a diffusers-format ControlNet folder from local disk (never from a hub)."""
        from diffusers import ControlNetModel

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"ControlNet folder {folder} has no config.json; expected a local diffusers ControlNet folder "
                "(config.json + diffusion_pytorch_model.safetensors), e.g. lllyasviel/control_v11p_sd15_openpose "
                "downloaded beforehand")
        weights = [folder / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
        if not any(w.is_file() for w in weights):
            raise FileNotFoundError(f"ControlNet folder {folder} has no diffusion_pytorch_model.safetensors/.bin")
        model = ControlNetModel.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
        return cls(model.to(device), conditioning_scale, num_text_tokens)

    @property
    def downscale(self) -> int:
        """Control-image pixels per latent pixel (the conditioning embedding's stride)."""
        return 2 ** (len(self.controlnet.config.conditioning_embedding_out_channels) - 1)

    def _control_pixels(self, control: torch.Tensor, latent_hw: Tuple[int, int]) -> torch.Tensor:
        """``(N, F, 3, H, W)`` in [-1, 1] → ``(N·F, 3, h·k, w·k)`` in [0, 1] (resized only if needed)."""
        target = (latent_hw[0] * self.downscale, latent_hw[1] * self.downscale)
        pix = rearrange((control + 1) / 2, "n f c h w -> (n f) c h w")
        if tuple(pix.shape[-2:]) != target:
            pix = F.interpolate(pix.float(), size=target, mode="bilinear", align_corners=False, antialias=True)
        return pix.clamp(0, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, control: torch.Tensor,
                added_cond: Optional[Dict[str, torch.Tensor]] = None) -> Tuple[Tuple[torch.Tensor, ...], torch.Tensor]:
        """Residuals for one UNet call.

        Args:
            x: ``(N, C, F, h, w)`` UNet input latents; t: ``(N,)``; context: ``(N, L, d)``;
            control: ``(N, F, 3, H, W)`` in [-1, 1]; added_cond: SDXL dict of ``(N, ...)`` tensors.
        Returns:
            ``(down_residuals, mid_residual)``, each ``(N·F, C_i, h_i, w_i)`` already scaled.
        """
        n, _, f, h, w = x.shape
        if control.shape[:2] != (n, f):
            raise ValueError(f"control {tuple(control.shape)} must be (N={n}, F={f}, 3, H, W)")
        dtype = self.controlnet.dtype
        ctx = context if self.num_text_tokens is None else context[:, : self.num_text_tokens]
        extra = None
        if added_cond is not None:
            extra = {k: repeat(v, "n ... -> (n f) ...", f=f).to(dtype) for k, v in added_cond.items()}
        down, mid = self.controlnet(
            rearrange(x, "n c f h w -> (n f) c h w").to(dtype),
            repeat(t.reshape(n), "n -> (n f)", f=f),
            encoder_hidden_states=repeat(ctx, "n l d -> (n f) l d", f=f).to(dtype),
            controlnet_cond=self._control_pixels(control, (h, w)).to(dtype),
            conditioning_scale=self.conditioning_scale,
            added_cond_kwargs=extra,
            return_dict=False,
        )
        return tuple(down), mid


def _read_video_frames(path: Path, num_frames: int, stride: int) -> List[np.ndarray]:
    import av

    frames: List[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % stride == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == num_frames:
                    break
    except av.error.FFmpegError as e:  # corrupt or unsupported file
        raise ValueError(f"cannot decode control video {path}: {e}") from e
    return frames


def load_control_frames(path: str | os.PathLike, num_frames: int, size: Sequence[int],
                        stride: int = 1) -> torch.Tensor:
    """Read a control sequence (a folder of images sorted by name, or a video file).

    Args:
        path: folder with ``.png/.jpg/...`` images (natural sort: ``2.png`` before ``10.png``) or a video file.
        num_frames: frames to take (the first ``num_frames``, every ``stride``-th); fewer available is an error.
        size: ``(H, W)`` output pixel size (bilinear, antialiased).
    Returns:
        ``(F, 3, H, W)`` float32 in [-1, 1].
    """
    from PIL import Image

    p = Path(path)
    if p.is_dir():
        files = image_files(p)
        files = files[::stride][:num_frames]
        arrays = [np.asarray(Image.open(q).convert("RGB")) for q in files]
    elif p.is_file():
        if p.suffix.lower() not in VIDEO_EXTS:
            raise ValueError(f"control path {p} is neither a folder of images nor a video ({', '.join(VIDEO_EXTS)})")
        arrays = _read_video_frames(p, num_frames, stride)
    else:
        raise FileNotFoundError(f"control path {p} does not exist")
    if len(arrays) < num_frames:
        raise ValueError(f"control sequence {p} has {len(arrays)} usable frames (stride {stride}), need {num_frames}")
    out = []
    for a in arrays:  # resize one by one: images in a folder may differ in size
        img = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255.0
        out.append(F.interpolate(img, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0])
    return torch.stack(out).clamp(0, 1) * 2 - 1
