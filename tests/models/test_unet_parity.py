"""fp32 parity of the self-written VideoUNet with diffusers (reference only) on identical weights, plus the
GroupNorm statistic modes that diffusers does not have (checked against hand-written references)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from i2v.models.config import MotionConfig, UNetConfig
from i2v.models.resnet import FrameGroupNorm
from i2v.models.unet import VideoUNet, build_video_unet
from i2v.checkpoints.diffusers_config import motion_config_to_diffusers, unet_config_to_diffusers

diffusers = pytest.importorskip("diffusers")


SD15_TINY = UNetConfig(block_out_channels=(16, 32), attention_levels=(True, False), layers_per_block=2,
                       transformer_layers_per_block=(1, 1), num_attention_heads=(2, 2), cross_attention_dim=24,
                       norm_num_groups=8, mid_transformer_layers=1, sample_size=8)
SDXL_TINY = UNetConfig(block_out_channels=(16, 32, 32), attention_levels=(False, True, True), layers_per_block=1,
                       transformer_layers_per_block=(1, 1, 2), num_attention_heads=(1, 2, 4),
                       cross_attention_dim=24, use_linear_projection=True, addition_embed_type="text_time",
                       addition_time_embed_dim=8, projection_class_embeddings_input_dim=12 + 6 * 8,
                       norm_num_groups=8, mid_transformer_layers=2, sample_size=8)


def assert_close(ours: torch.Tensor, ref: torch.Tensor):
    assert ours.shape == ref.shape
    tol = 1e-4 * max(1.0, ref.abs().max().item())
    err = (ours - ref).abs().max().item()
    assert err <= tol, f"max abs err {err:.3g} > {tol:.3g}"


def perturb_(model: torch.nn.Module) -> None:
    """Move every parameter off its default init (norm weights, biases) so nothing is trivially 0/1."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def ref_unet2d(cfg: UNetConfig):
    ref = diffusers.UNet2DConditionModel(**unet_config_to_diffusers(cfg)).eval()
    perturb_(ref)
    return ref


def ours_from(ref, cfg: UNetConfig, motion=None) -> VideoUNet:
    ours = VideoUNet(cfg, motion).eval()
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("pos_embed.pe")}
    ours.load_state_dict(sd, strict=True)
    return ours


def per_frame_ref(ref, x, t, ctx, **kw):
    """Run a diffusers 2-D UNet frame by frame: x (B,C,F,H,W) -> (B,C,F,H,W)."""
    b, _, f, _, _ = x.shape
    out = ref(rearrange(x, "b c f h w -> (b f) c h w"), t.repeat_interleave(f), ctx.repeat_interleave(f, 0),
              **kw).sample
    return rearrange(out, "(b f) c h w -> b c f h w", f=f)


@torch.no_grad()
def test_sd15_like_conv_proj_matches_unet2d():
    ref = ref_unet2d(SD15_TINY)
    ours = ours_from(ref, SD15_TINY)
    assert isinstance(ours.down_blocks[0].attentions[0].proj_in, torch.nn.Conv2d)
    x, t, ctx = torch.randn(2, 4, 2, 8, 8), torch.tensor([3, 901]), torch.randn(2, 5, 24)
    assert_close(ours(x, t, ctx), per_frame_ref(ref, x, t, ctx))


@torch.no_grad()
def test_sdxl_like_linear_proj_text_time_matches_unet2d():
    ref = ref_unet2d(SDXL_TINY)
    ours = ours_from(ref, SDXL_TINY)
    assert len(ours.mid_block.attentions[0].transformer_blocks) == 2
    x, t, ctx = torch.randn(2, 4, 2, 8, 8), torch.tensor([17, 640]), torch.randn(2, 5, 24)
    cond = {"text_embeds": torch.randn(2, 12), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64],
                                                                        [48., 80, 4, 2, 64, 64]])}
    ref_cond = {k: v.repeat_interleave(2, 0) for k, v in cond.items()}
    assert_close(ours(x, t, ctx, added_cond=cond), per_frame_ref(ref, x, t, ctx, added_cond_kwargs=ref_cond))
    with pytest.raises(ValueError, match="text_embeds"):
        ours(x, t, ctx)


@torch.no_grad()
@pytest.mark.parametrize("version", ["v2", "v3"])  # with / without the mid-block motion module
def test_motion_unet_matches_unet_motion_model(version):
    unet = ref_unet2d(SD15_TINY)
    motion = MotionConfig.for_version(version, SD15_TINY).diffusers_norms()
    adapter = diffusers.MotionAdapter(**motion_config_to_diffusers(motion))
    ref = diffusers.UNetMotionModel.from_unet2d(unet, adapter).eval()
    perturb_(ref)  # motion proj_out etc. non-zero
    ours = ours_from(ref, SD15_TINY, motion)
    assert (ours.mid_block.motion_modules is not None) == (version == "v2")
    x, t, ctx = torch.randn(2, 4, 3, 8, 8), torch.tensor([250, 999]), torch.randn(2, 5, 24)
    ref_out = ref(x, t, ctx.repeat_interleave(3, 0)).sample
    assert_close(ours(x, t, ctx), ref_out)
    assert_close(ours(x, 250, ctx), ref(x, 250, ctx.repeat_interleave(3, 0)).sample)  # scalar timestep


@torch.no_grad()
def test_controlnet_residuals_match_unet2d():
    ref = ref_unet2d(SD15_TINY)
    ours = ours_from(ref, SD15_TINY)
    b, f = 1, 2
    x, t, ctx = torch.randn(b, 4, f, 8, 8), torch.tensor([500]), torch.randn(b, 5, 24)
    # shapes of diffusers' down_block_res_samples on (B·F, C, h, w)
    shapes = [(16, 8), (16, 8), (16, 8), (16, 4), (32, 4), (32, 4)]
    down = [torch.randn(b * f, c, s, s) for c, s in shapes]
    mid = torch.randn(b * f, 32, 4, 4)
    ref_out = per_frame_ref(ref, x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    out = ours(x, t, ctx, down_residuals=down, mid_residual=mid)
    assert_close(out, ref_out)
    assert (out - ours(x, t, ctx)).abs().max() > 1e-2  # the residuals do something
    with pytest.raises(ValueError, match="down_residuals"):
        ours(x, t, ctx, down_residuals=down[:-1])


# ------------------------------------------------------------------------------------------------ norm modes
def _gn_across_reference(x5: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    """Explicit formula: x5 (B, F, C, H, W); mean/var over (frames, channels of group, H, W)."""
    b, f, c, h, w = x5.shape
    g = x5.reshape(b, f, groups, c // groups, h, w).double()
    mean = g.mean(dim=(1, 3, 4, 5), keepdim=True)
    var = ((g - mean) ** 2).mean(dim=(1, 3, 4, 5), keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(b, f, c, h, w)
    return (y * weight.double()[:, None, None] + bias.double()[:, None, None]).float()


def test_group_norm_across_frames_matches_hand_written_reference():
    norm = FrameGroupNorm(4, 16, eps=1e-5, across_frames=True)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x5 = torch.randn(2, 3, 16, 5, 6) * torch.arange(1.0, 4.0)[None, :, None, None, None] + 0.5
    out = norm(rearrange(x5, "b f c h w -> (b f) c h w"), num_frames=3)
    assert_close(out, rearrange(_gn_across_reference(x5, 4, norm.weight, norm.bias, 1e-5), "b f c h w -> (b f) c h w"))
    per_frame = F.group_norm(rearrange(x5, "b f c h w -> (b f) c h w"), 4, norm.weight, norm.bias, 1e-5)
    assert (out - per_frame).abs().max() > 1e-2


def _randomised_toy(version: str, **over) -> VideoUNet:
    torch.manual_seed(0)
    model = build_video_unet("toy", version, **over).eval()
    perturb_(model)
    return model


@torch.no_grad()
def test_spatial_norm_across_frames_differs_for_videos_and_not_for_single_frames():
    across = _randomised_toy("v1")  # v1: UNet GroupNorm statistics over all frames
    assert across.motion_config.spatial_norm == "across_frames"
    per_frame = build_video_unet("toy", "v1", motion_spatial_norm="per_frame").eval()
    per_frame.load_state_dict(across.state_dict())
    ctx = torch.randn(1, 5, 64)
    video = torch.randn(1, 4, 4, 8, 8) * torch.tensor([0.5, 1.0, 2.0, 3.0])[None, None, :, None, None]
    assert (across(video, 10, ctx) - per_frame(video, 10, ctx)).abs().max() > 1e-3
    single = video[:, :, :1]
    assert_close(across(single, 10, ctx), per_frame(single, 10, ctx))
    # per-frame spatial norms: the model without its motion modules is the 2-D UNet on every frame
    motionless = build_video_unet("toy").eval()
    motionless.load_state_dict({k: v for k, v in across.state_dict().items() if "motion_modules" not in k})
    frame_outs = torch.cat([motionless(video[:, :, i:i + 1], 10, ctx) for i in range(4)], dim=2)
    for mm in (m for n, m in per_frame.named_modules() if n.endswith("motion_modules")):
        for module in mm:
            torch.nn.init.zeros_(module.proj_out.weight)
            torch.nn.init.zeros_(module.proj_out.bias)
    assert_close(per_frame(video, 10, ctx), frame_outs)


@torch.no_grad()
def test_motion_norm_modes_differ_and_per_frame_matches_reference():
    torch.manual_seed(1)
    model = _randomised_toy("v3")  # motion norm per frame
    module = model.down_blocks[0].motion_modules[0]
    x = torch.randn(2 * 4, 32, 6, 6) * torch.linspace(0.5, 3, 4).repeat(2)[:, None, None, None]
    per = module(x, num_frames=4)
    # hand-written per-frame reference: plain GroupNorm on (b f) c h w inside the same module
    norm = module.norm
    ref = module.proj_in(rearrange(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps),
                                   "(b f) c h w -> (b h w) f c", f=4))
    for block in module.transformer_blocks:
        ref = block(ref)
    ref = x + rearrange(module.proj_out(ref), "(b h w) f c -> (b f) c h w", b=2, h=6, w=6)
    assert_close(per, ref)
    module.norm.across_frames = True
    assert (module(x, num_frames=4) - per).abs().max() > 1e-3
