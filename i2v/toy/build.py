"""The toy backbone: :class:`ToyBuilder` (the ``_target_`` of ``configs/backbone/toy.yaml``) loads the shipped tiny
checkpoints in ``i2v/assets/toy`` (made by ``scripts/make_toy_checkpoint.py``); :func:`random_toy_bundle` gives the
same classes with random weights and no files (tests, benchmarks)."""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from i2v.checkpoints.ip_adapter import load_ip_adapter
from i2v.diffusion.schedule import NoiseSchedule
from i2v.models.content import Resampler, attach_ip_adapter
from i2v.models.toy import (IdentityCodec, PatchCodec, ToyImageConfig, ToyImageEncoder, ToyTextConfig,
                            ToyTextEncoder, load_toy_state_dict)
from i2v.models.unet import build_video_unet
from i2v.pipeline.bundle import BackboneBuilder, Bundle, freeze_and_attach
from i2v.toy.pretrain import read_base_file_metadata

CODECS = {"identity": IdentityCodec, "patch": PatchCodec}


class ToyBuilder(BackboneBuilder):
    """``backbone=toy``: the CPU toy world from its shipped files."""

    def required_paths(self, adapter: DictConfig) -> list[str]:
        return ["unet", "text_encoder"] + (["ip_adapter", "image_encoder"] if adapter.content else [])

    def build_parts(self, adapter: DictConfig, *, device="cpu", dtype=torch.float32) -> dict:
        backbone = self.cfg
        with safe_open(str(backbone.unet), "pt") as f:
            meta = read_base_file_metadata(f.metadata())
        wanted = OmegaConf.select(backbone, "schedule.prediction_type", default="epsilon")
        if meta["prediction_type"] != wanted:
            raise ValueError(f"{backbone.unet} is a {meta['prediction_type']!r} base but backbone.schedule."
                             f"prediction_type is {wanted!r}; set backbone.schedule.prediction_type="
                             f"{meta['prediction_type']} (its MANIFEST.json 'schedule' says so too)")
        if meta["codec_scale"] is not None and float(meta["codec_scale"]) != float(backbone.vae_scale):
            raise ValueError(f"{backbone.unet} was trained on latents scaled by {meta['codec_scale']:g} but "
                             f"backbone.vae_scale is {float(backbone.vae_scale):g}; set backbone.vae_scale="
                             f"{meta['codec_scale']:g}")
        unet = build_video_unet("toy", motion=backbone.motion_version, **meta["build_overrides"])
        unet.load_state_dict(load_file(str(backbone.unet)), strict=True)
        text = ToyTextEncoder()
        load_toy_state_dict(text, str(backbone.text_encoder))
        kind = backbone.get("codec", "patch")
        if kind not in CODECS:
            raise ValueError(f"backbone.codec must be one of {sorted(CODECS)}, got {kind!r}")
        if meta["position_channels"] and kind != "patch":
            raise ValueError(f"{backbone.unet} expects {meta['position_channels']} position channels from the "
                             f"patch codec; backbone.codec is {kind!r}")
        codec = (PatchCodec(float(backbone.vae_scale), position_channels=int(meta["position_channels"]))
                 if meta["position_channels"] else CODECS[kind](float(backbone.vae_scale)))
        parts = {"unet": unet, "codec": codec, "text": text}
        if adapter.content:
            enc = ToyImageEncoder()
            load_toy_state_dict(enc, str(backbone.image_encoder))
            proj = load_ip_adapter(unet, str(backbone.ip_adapter), scale=float(adapter.content_scale))
            parts.update(image_encoder=enc, image_proj=proj)
        return parts


def random_toy_bundle(content: bool = True, i2v: bool = True, motion: str = "v2", seed: int = 0,
                      for_training: bool = True, prediction_type: str = "epsilon") -> Bundle:
    """A toy bundle with random weights and no files (tests, benchmarks): same classes as ``backbone=toy``."""
    torch.manual_seed(seed)
    unet = build_video_unet("toy", motion=motion, in_channels=12, out_channels=12)
    with torch.no_grad():  # AnimateDiff zero-inits the temporal proj_out; give the random model real motion paths
        for name, p in unet.named_parameters():
            if "motion_modules" in name and "proj_out" in name:
                p.normal_(0, 0.02)
    parts = {"unet": unet, "codec": PatchCodec(), "text": ToyTextEncoder(ToyTextConfig(seed=seed))}
    if content:
        parts["image_encoder"] = ToyImageEncoder(ToyImageConfig(seed=seed))
        parts["image_proj"] = Resampler(dim=64, depth=1, dim_head=16, heads=4, num_queries=4, embedding_dim=64,
                                        output_dim=64, ff_mult=2)
        attach_ip_adapter(unet, num_tokens=4, scale=1.0)
    schedule = NoiseSchedule(1000, 0.00085, 0.012, "linear", prediction_type=prediction_type)
    return freeze_and_attach("toy", parts, schedule, i2v=i2v, for_training=for_training, resolution=32)
