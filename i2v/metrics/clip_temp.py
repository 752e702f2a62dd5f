"""CLIPTemp (paper §4.1, after EvalCrafter): CLIP-embedding consistency of a generated video.

``mode="image"`` (the paper's wording): mean cosine between the input image's embedding and each frame's.
``mode="consecutive"`` (EvalCrafter ``calculate_clip_temp_score``): mean cosine of consecutive frames.
Which preprocessing and frame set the paper used is unverified (reference §1), so both are switches and
``settings()`` reports them with every number. Encoder builders (open_clip file, transformers folder) at the end.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torchmetrics import Metric

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESS = ("clip", "evalcrafter", "none")
MODES = ("image", "consecutive")


def clip_preprocess(x: torch.Tensor, mode: str = "clip", size: int = 224) -> torch.Tensor:
    """Pixels ``(N, 3, H, W)`` in [-1, 1] -> encoder input.

    - ``"clip"``: standard CLIP: bicubic (antialiased) resize of the short side to ``size``, center crop,
      [0, 1], CLIP mean/std -> ``(N, 3, size, size)``.
    - ``"evalcrafter"``: EvalCrafter as written: values in [0, 255] (no /255), bilinear resize to ``size × size``
      without antialias (torchvision 0.15 tensor ``Resize``), aspect not kept, no crop, no normalisation.
    - ``"none"``: unchanged (the encoder does its own preprocessing).
    """
    if mode == "none":
        return x
    x01 = (x.float() + 1) / 2
    if mode == "evalcrafter":
        return F.interpolate(x01 * 255.0, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if mode != "clip":
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {mode!r}")
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_hw = (size, new_long) if h <= w else (new_long, size)
    y = F.interpolate(x01, size=new_hw, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
    y = y[..., top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, device=y.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=y.device).view(1, 3, 1, 1)
    return (y - mean) / std


def _encoder_dtype(encoder: Callable) -> torch.dtype:
    if isinstance(encoder, nn.Module):
        p = next(encoder.parameters(), None)
        if p is not None:
            return p.dtype
    return torch.float32


class CLIPTemp(Metric):
    """Per-video CLIPTemp; ``compute()`` returns the mean over all videos seen.

    Args:
        encoder: callable ``(N, 3, h, w) -> (N, E)`` embeddings, applied to ``clip_preprocess(x, preprocess)``
            (so with ``preprocess="none"`` it receives pixels in [-1, 1]).
        mode: ``"image"`` (input image vs each frame) or ``"consecutive"`` (frame i vs frame i+1).
        preprocess: ``"clip"`` | ``"evalcrafter"`` | ``"none"`` (see ``clip_preprocess``).
        include_first_frame: image mode: average over all F frames (True) or frames 2..F (False);
            consecutive mode: pairs start at frame 1 (True) or frame 2 (False).
        resize_image_to_video: resize the input image to the video's (H, W) before preprocessing (bicubic).
        size: encoder input size (224 for ViT-B/32).
        chunk: frames per encoder call.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, encoder: Callable[[torch.Tensor], torch.Tensor], mode: str = "image",
                 preprocess: str = "clip", include_first_frame: bool = True, resize_image_to_video: bool = True,
                 size: int = 224, chunk: int = 64, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"CLIPTemp mode must be one of {MODES}, got {mode!r}")
        if preprocess not in PREPROCESS:
            raise ValueError(f"CLIPTemp preprocess must be one of {PREPROCESS}, got {preprocess!r}")
        self.encoder = encoder
        self.mode, self.preprocess, self.size, self.chunk = mode, preprocess, size, chunk
        self.include_first_frame, self.resize_image_to_video = include_first_frame, resize_image_to_video
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def settings(self) -> dict:
        return {"mode": self.mode, "preprocess": self.preprocess, "include_first_frame": self.include_first_frame,
                "resize_image_to_video": self.resize_image_to_video, "size": self.size,
                "encoder": getattr(self.encoder, "description", type(self.encoder).__name__)}

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [-1, 1] -> L2-normalised embeddings ``(N, E)`` (float32)."""
        dtype = _encoder_dtype(self.encoder)
        out = []
        for part in images.split(self.chunk):
            inp = clip_preprocess(part, self.preprocess, self.size).to(dtype)
            e = self.encoder(inp)
            if e.ndim != 2 or e.shape[0] != part.shape[0]:
                raise ValueError(f"CLIPTemp encoder must return (N, E) embeddings, got shape {tuple(e.shape)}")
            out.append(e.float())
        e = torch.cat(out)
        return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def score(self, video: torch.Tensor, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-video values ``{"clip_temp": (B,)}`` for ``video (B, F, 3, H, W)`` and (image mode)
        ``images (B, 3, h, w)``, both in [-1, 1]."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"CLIPTemp expects video (B, F, 3, H, W), got {tuple(video.shape)}")
        b, f, _, h, w = video.shape
        first = 0 if self.include_first_frame else 1
        need = first + (1 if self.mode == "image" else 2)
        if f < need:
            raise ValueError(f"CLIPTemp ({self.mode}, include_first_frame={self.include_first_frame}) needs at least "
                             f"{need} frames, got {f}")
        frames = rearrange(video, "b f c h w -> (b f) c h w")
        emb = rearrange(self.embed(frames), "(b f) e -> b f e", b=b)[:, first:]
        if self.mode == "consecutive":
            return {"clip_temp": (emb[:, :-1] * emb[:, 1:]).sum(-1).mean(-1)}
        if images is None:
            raise ValueError("CLIPTemp mode='image' needs the input images: update(video, images=(B, 3, H, W))")
        if images.ndim != 4 or images.shape[0] != b or images.shape[1] != 3:
            raise ValueError(f"CLIPTemp images must be (B={b}, 3, H, W), got {tuple(images.shape)}")
        if self.resize_image_to_video and images.shape[-2:] != (h, w):
            images = F.interpolate(images.float(), size=(h, w), mode="bicubic", align_corners=False,
                                   antialias=True).clamp(-1, 1)
        ref = self.embed(images.to(video.device))
        return {"clip_temp": torch.einsum("be,bfe->bf", ref, emb).mean(-1)}

    def update(self, video: torch.Tensor, images: torch.Tensor | None = None) -> None:
        self.values.append(self.score(video, images)["clip_temp"])

    def compute(self) -> torch.Tensor:
        vals = self.values if isinstance(self.values, torch.Tensor) else torch.cat(self.values)
        return vals.mean()


# --------------------------------------------------------------------------- encoders (local weights only)
class ClipImageTower(nn.Module):
    """Wraps a CLIP image tower as ``(N, 3, h, w) preprocessed -> (N, E)`` projected embeddings."""

    def __init__(self, model: nn.Module, kind: str, description: str):
        super().__init__()
        self.model, self.kind, self.description = model.eval().requires_grad_(False), kind, description

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind == "open_clip":
            return self.model.encode_image(pixels)
        if self.kind == "hf_vision":                       # CLIPVisionModelWithProjection
            return self.model(pixel_values=pixels).image_embeds
        vision = self.model.vision_model(pixel_values=pixels)  # CLIPModel: get_image_features, version-stable
        return self.model.visual_projection(vision.pooler_output)


def _missing(path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"CLIPTemp encoder weights not found: {path!s}. Expected {what}. CLIPTemp uses OpenAI CLIP ViT-B/32 "
        "(EvalCrafter: HF 'openai/clip-vit-base-patch32'); download it once and pass the local path "
        "(metrics.clip_temp.weights=...), or disable the metric with metrics.clip_temp.enabled=false.")


def open_clip_encoder(weights: str, model_name: str = "ViT-B-32", quick_gelu: bool = True,
                      device: str | torch.device = "cpu") -> ClipImageTower:
    """open_clip model ``model_name`` with weights from a local file (.safetensors/.bin/.pt state dict).
    ``quick_gelu=True`` for OpenAI-trained weights (they use QuickGELU; a local file does not say so)."""
    from pathlib import Path

    import open_clip

    if weights is None or not Path(str(weights)).is_file():
        raise _missing(weights, f"an open_clip {model_name} checkpoint file (e.g. open_clip_pytorch_model.bin "
                                "from timm/vit_base_patch32_clip_224.openai)")
    model = open_clip.create_model(model_name, pretrained=str(weights), force_quick_gelu=quick_gelu,
                                   device=device, weights_only=True)
    return ClipImageTower(model, "open_clip", f"open_clip:{model_name}:{Path(str(weights)).name}")


def transformers_clip_encoder(folder: str, device: str | torch.device = "cpu") -> ClipImageTower:
    """A local transformers CLIP folder (``CLIPModel`` or ``CLIPVisionModelWithProjection``, by config.json)."""
    import json
    from pathlib import Path

    cfg_file = Path(str(folder)) / "config.json" if folder else None
    if cfg_file is None or not cfg_file.is_file():
        raise _missing(folder, "a transformers CLIP folder with config.json and model weights")
    archs = json.loads(cfg_file.read_text()).get("architectures") or ["CLIPModel"]
    import transformers

    if "CLIPVisionModelWithProjection" in archs:
        model = transformers.CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True)
        kind = "hf_vision"
    else:
        model = transformers.CLIPModel.from_pretrained(str(folder), local_files_only=True)
        kind = "hf_clip"
    return ClipImageTower(model.to(device), kind, f"transformers:{archs[0]}:{Path(str(folder)).name}")


def build_clip_encoder(kind: str, weights: str, model_name: str = "ViT-B-32", quick_gelu: bool = True,
                       device: str | torch.device = "cpu") -> ClipImageTower:
    """``kind="open_clip"`` (a weights file), ``"transformers"`` (a folder) or ``"random"`` (open_clip
    ``model_name`` with random weights: tests and benchmarks only, never for reported numbers)."""
    if kind == "random":
        import open_clip

        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu, device=device)
        return ClipImageTower(model, "open_clip", f"open_clip:{model_name}:RANDOM")
    if kind == "open_clip":
        return open_clip_encoder(weights, model_name, quick_gelu, device)
    if kind == "transformers":
        return transformers_clip_encoder(weights, device)
    raise ValueError(f"clip encoder kind must be 'open_clip', 'transformers' or 'random', got {kind!r}")
