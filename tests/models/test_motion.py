"""Motion module behaviour: frame-count limit, PE table, zero init, module parity with diffusers, the
processor hook seeing num_frames, and gradient checkpointing equivalence (toy)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from i2v.models.attention import spatial_attention_layers
from i2v.models.motion import MotionModule
from i2v.models.unet import build_video_unet

diffusers = pytest.importorskip("diffusers")



def test_too_many_frames_raise_naming_the_pe_length():
    model = build_video_unet("toy", "v1").eval()  # v1: PE length 24
    with pytest.raises(ValueError, match="max_seq_length=24"):
        model(torch.randn(1, 4, 25, 8, 8), 1, torch.randn(1, 3, 64))
    module = MotionModule(32, heads=2, groups=8, max_seq_length=4)
    with pytest.raises(ValueError, match="max_seq_length=4"):
        module(torch.randn(5, 32, 2, 2), num_frames=5)
    short = build_video_unet("toy", "v3", motion_max_seq_length=8).eval()
    with torch.no_grad():
        short(torch.randn(1, 4, 8, 8, 8), 1, torch.randn(1, 3, 64))  # exactly the limit is fine
    with pytest.raises(ValueError, match="max_seq_length=8"):
        short(torch.randn(1, 4, 9, 8, 8), 1, torch.randn(1, 3, 64))


def test_pe_table_matches_diffusers_and_survives_meta_materialisation():
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding as RefPE

    ref = RefPE(40, max_seq_length=24).pe
    model = build_video_unet("toy", "v1", device="meta")
    model.to_empty(device="cpu")
    pe = model.up_blocks[0].motion_modules[1].transformer_blocks[0].pos_embed.pe  # 64 channels
    assert not pe.is_meta and pe.shape == (1, 24, 64)
    assert torch.equal(MotionModule(40, heads=2, groups=8, max_seq_length=24)
                       .transformer_blocks[0].pos_embed.pe, ref)
    assert torch.equal(pe, RefPE(64, max_seq_length=24).pe)
    assert torch.equal(model.double().up_blocks[0].motion_modules[1].transformer_blocks[0].pos_embed.pe,
                       RefPE(64, max_seq_length=24).pe.double())


@torch.no_grad()
def test_motion_module_matches_diffusers_transformer3d():
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    ref = AnimateDiffTransformer3D(num_attention_heads=4, attention_head_dim=8, in_channels=32, norm_num_groups=8,
                                   positional_embeddings="sinusoidal", num_positional_embeddings=16,
                                   double_self_attention=True).eval()
    for p in ref.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    ours = MotionModule(32, heads=4, groups=8, max_seq_length=16, across_frames=True).eval()
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.endswith("pe")}, strict=True)
    x = torch.randn(2 * 5, 32, 3, 4)
    want = ref(x, num_frames=5)
    got = ours(x, num_frames=5)
    assert (got - want).abs().max() <= 1e-4 * max(1.0, want.abs().max().item())
    assert got.is_contiguous()


@torch.no_grad()
def test_fresh_motion_modules_are_identity_and_frames_mix_once_trained():
    video, ctx = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 5, 64)
    motion = build_video_unet("toy", "v2").eval()
    plain = build_video_unet("toy").eval()
    plain.load_state_dict({k: v for k, v in motion.state_dict().items() if "motion_modules" not in k})
    assert torch.allclose(motion(video, 7, ctx), plain(video, 7, ctx), atol=1e-6)
    for name, p in motion.named_parameters():
        if "motion_modules" in name and "proj_out" in name:
            p.normal_(0, 0.1)
    changed = video.clone()
    changed[:, :, 2] += 1.0
    delta = motion(changed, 7, ctx) - motion(video, 7, ctx)
    assert delta[:, :, :2].abs().max() > 1e-4  # frame 2 now influences frames 0 and 1
    delta_plain = plain(changed, 7, ctx) - plain(video, 7, ctx)
    assert delta_plain[:, :, :2].abs().max() == 0


@torch.no_grad()
def test_spatial_processors_see_num_frames_and_motion_attention_is_separate():
    model = build_video_unet("toy", "v2").eval()
    seen = []

    def make(name, attn):
        def processor(attn, x, context=None, num_frames=None):
            seen.append((name, num_frames, x.shape[0]))
            return attn.default_forward(x, context)
        return processor

    layers = list(spatial_attention_layers(model, "attn1"))
    assert [n for n, _ in layers] == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                                      "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
                                      "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
                                      "mid_block.attentions.0.transformer_blocks.0.attn1"]
    for name, attn in layers:
        attn.processor = make(name, attn)
    model(torch.randn(2, 4, 3, 8, 8), torch.tensor([1, 2]), torch.randn(2, 5, 64))
    assert len(seen) == 4 and all(f == 3 and n == 6 for _, f, n in seen)
    motion_attn = [n for n, m in model.named_modules() if "motion_modules" in n and n.endswith(("attn1", "attn2"))]
    assert len(motion_attn) == 2 * (2 * 1 + 2 * 2 + 1)  # 2 levels x (down 1 + up 2), mid 1; attn1+attn2


def test_gradient_checkpointing_gives_same_loss_and_grads():
    torch.manual_seed(0)
    model = build_video_unet("toy", "v2")
    for name, p in model.named_parameters():
        if "proj_out" in name:
            nn.init.normal_(p, 0, 0.05)
    video, ctx = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 5, 64)
    target = torch.randn(1, 4, 3, 8, 8)

    def loss_and_grads():
        model.zero_grad()
        loss = torch.nn.functional.mse_loss(model(video, 500, ctx), target)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    model.train()
    loss_a, grads_a = loss_and_grads()
    model.gradient_checkpointing = True
    calls = []  # the recomputation in backward runs each checkpointed block's forward a second time
    handle = model.down_blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    loss_b, grads_b = loss_and_grads()
    handle.remove()
    assert len(calls) == 2
    assert torch.allclose(loss_a, loss_b, rtol=0, atol=1e-6)
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=1e-4, atol=1e-6), name
    assert grads_a["down_blocks.0.motion_modules.0.proj_in.weight"].abs().max() > 0
