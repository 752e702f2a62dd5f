"""I2V-Adapter (eq. 5-6): parameter counts, zero-init identity, first-frame K/V, explicit reference, on/off, detach."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from i2v.models import build_video_unet
from i2v.models.attention import Attention
from i2v.models.adapters import (I2VAdapterProcessor, attach_i2v_adapter, detach_i2v_adapter,
                                 i2v_adapter_parameters, set_i2v_adapter_enabled)


def _close(a, b, tol=1e-4):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err


def _perturb_adapter(unet: nn.Module, seed: int = 0, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in i2v_adapter_parameters(unet).items():
            p.add_(torch.randn(p.shape, generator=g) * (std if "to_out_ff" in name else 0.5 * std))


def _toy(motion="v2"):
    torch.manual_seed(0)
    return build_video_unet("toy", motion=motion).eval()


def _inputs(b=2, f=3, hw=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, hw, hw, generator=g)
    ctx = torch.randn(b, 5, 64, generator=g)
    return x, torch.tensor([10, 500][:b]), ctx


# ------------------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("name,motion,layers,expected", [("sd15", "v1", 16, 24_793_280), ("sdxl", None, 70, 204_883_200)])
def test_trainable_counts_on_meta(name, motion, layers, expected):
    unet = build_video_unet(name, motion=motion, device="meta")
    params = attach_i2v_adapter(unet)
    assert len(params) == 3 * layers
    assert sum(p.numel() for p in params.values()) == expected  # reference §7 / paper 24M / 204M
    assert all(p.requires_grad and p.is_meta for p in params.values())
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q_ff.weight" in params
    assert not any("motion_modules" in k for k in params)
    state = unet.state_dict()
    assert all(k in state for k in params)
    assert detach_i2v_adapter(unet) == layers and not any("_ff." in k for k in unet.state_dict())


# ---------------------------------------------------------------------------------------- whole-UNet behaviour
def test_zero_init_is_identity_and_disable_restores_base():
    unet = _toy()
    x, t, ctx = _inputs()
    with torch.no_grad():
        base = unet(x, t, ctx)
        params = attach_i2v_adapter(unet)
        for name, p in params.items():  # init: W'_Q = W_Q, W'_O = 0
            attn = unet.get_submodule(name.rsplit(".", 2)[0])
            assert torch.equal(p, attn.to_q.weight) if name.endswith("to_q_ff.weight") else not p.any()
        assert (unet(x, t, ctx) - base).abs().max().item() <= 1e-6
        _perturb_adapter(unet)
        adapted = unet(x, t, ctx)
        assert (adapted - base).abs().max().item() > 1e-3
        assert set_i2v_adapter_enabled(unet, False) == 4
        assert (unet(x, t, ctx) - base).abs().max().item() <= 1e-6
        set_i2v_adapter_enabled(unet, True)
        _close(unet(x, t, ctx), adapted)
        detach_i2v_adapter(unet)
        assert (unet(x, t, ctx) - base).abs().max().item() <= 1e-6



def test_query_init_from_keys_scaled_and_checked():
    """``query_init="to_k"``: W'_Q = s·W_K (output still unchanged at init, W'_O = 0); with frame i = frame 1 the
    branch's score s·<W_K x_i(p), W_K x_1(p')> peaks at p' = p, so a larger s gives a sharper same-place lookup."""
    unet = _toy()
    x, t, ctx = _inputs()
    with torch.no_grad():
        base = unet(x, t, ctx)
        params = attach_i2v_adapter(unet, query_init="to_k", query_init_scale=4.0)
        for name, p in params.items():
            if name.endswith("to_q_ff.weight"):
                attn = unet.get_submodule(name.rsplit(".", 2)[0])
                assert torch.equal(p, 4.0 * attn.to_k.weight)
        assert (unet(x, t, ctx) - base).abs().max().item() <= 1e-6
    attn = Attention(32, None, heads=1, dim_head=32)
    tokens = torch.nn.functional.layer_norm(torch.randn(1, 64, 32, generator=torch.Generator().manual_seed(3)), (32,))
    same_place = []
    for scale in (1.0, 16.0):
        with torch.no_grad():
            q = tokens @ (scale * attn.to_k.weight).T
            k = attn.to_k(tokens)
            a = (q @ k.transpose(-1, -2) / math.sqrt(32)).softmax(-1)
        same_place.append(float(a.diagonal(dim1=-2, dim2=-1).mean()))
    assert same_place[1] > 0.5 and same_place[1] > 4 * same_place[0], same_place
    with pytest.raises(ValueError, match="query_init"):
        attach_i2v_adapter(_toy(), query_init="to_v")
    with pytest.raises(ValueError, match="query_init_scale"):
        attach_i2v_adapter(_toy(), query_init_scale=0.0)

def _record_attend(attn: Attention, log: list):
    orig = attn.attend

    def attend(q, k, v):
        log.append((q.detach().clone(), k.detach().clone(), v.detach().clone()))
        return orig(q, k, v)

    attn.attend = attend


def test_first_frame_keys_values_and_information_flow():
    """Without motion modules frames only interact through the adapter: frame 0 drives frames 1.. and never the
    other way round; the K/V the adapter branch uses are to_k/to_v of frame 0's attn1 input."""
    unet = _toy(motion=None)
    attach_i2v_adapter(unet)
    _perturb_adapter(unet)
    layer = unet.get_submodule("up_blocks.1.attentions.1.transformer_blocks.0.attn1")
    calls, inputs = [], []
    _record_attend(layer, calls)
    layer.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    b, f = 2, 3
    x, t, ctx = _inputs(b, f)
    x_late = x.clone()
    x_late[:, :, 1:] = torch.randn_like(x_late[:, :, 1:])
    x_first = x.clone()
    x_first[:, :, 0] = torch.randn_like(x_first[:, :, 0])
    with torch.no_grad():
        outs = [unet(v, t, ctx) for v in (x, x_late, x_first)]
    k1 = [c[1] for c in calls[1::2]]  # second attend call of each forward = adapter branch
    v1 = [c[2] for c in calls[1::2]]
    assert k1[0].shape[0] == b  # one K_1 per video, not per frame
    # K_1 / V_1 = frozen to_k / to_v of frame 0's normalised hidden states
    frame0 = inputs[0].view(b, f, *inputs[0].shape[1:])[:, 0]
    _close(k1[0], layer.to_k(frame0).detach())
    _close(v1[0], layer.to_v(frame0).detach())
    # changing frames 2..F leaves K_1, V_1 and frame 0's output unchanged
    assert torch.equal(k1[0], k1[1]) and torch.equal(v1[0], v1[1])
    _close(outs[1][:, :, 0], outs[0][:, :, 0], tol=1e-6)
    # changing frame 1 changes K_1 and the output of frames 2..F
    assert (k1[2] - k1[0]).abs().max() > 1e-3
    assert (outs[2][:, :, 1:] - outs[0][:, :, 1:]).abs().max() > 1e-3
    # control: with the adapter off, frames are independent
    set_i2v_adapter_enabled(unet, False)
    with torch.no_grad():
        off = [unet(v, t, ctx) for v in (x, x_first)]
    _close(off[1][:, :, 1:], off[0][:, :, 1:], tol=1e-6)


# -------------------------------------------------------------------------------------------- one-layer eq. 6
def _explicit_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v with explicit head split, q (T, C), k/v (S, C)."""
    d = q.shape[-1] // heads
    out = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(d), dim=-1)
        out.append(w @ v[:, sl])
    return torch.cat(out, dim=-1)


def test_processor_matches_handwritten_eq6():
    C, heads, b, f, T = 16, 2, 2, 3, 5
    holder = nn.Module()
    holder.attn1 = Attention(C, None, heads=heads, dim_head=C // heads)
    attach_i2v_adapter(holder)
    _perturb_adapter(holder, seed=3, std=0.3)
    a = holder.attn1
    x = torch.randn(b * f, T, C)
    got = a(x, num_frames=f)
    with torch.no_grad():
        ref = torch.empty_like(got)
        for bi in range(b):
            x1 = x[bi * f]
            k1, v1 = x1 @ a.to_k.weight.T, x1 @ a.to_v.weight.T
            for fi in range(f):
                xi = x[bi * f + fi]
                qi, ki, vi = xi @ a.to_q.weight.T, xi @ a.to_k.weight.T, xi @ a.to_v.weight.T
                self_term = _explicit_attention(qi, ki, vi, heads) @ a.to_out[0].weight.T + a.to_out[0].bias
                q_prime = xi @ a.to_q_ff.weight.T
                cross_term = _explicit_attention(q_prime, k1, v1, heads) @ a.to_out_ff.weight.T + a.to_out_ff.bias
                ref[bi * f + fi] = self_term + cross_term
    _close(got, ref)
    assert isinstance(a.processor, I2VAdapterProcessor)
    with pytest.raises(ValueError, match="num_frames"):
        a(x)
    with pytest.raises(ValueError, match="num_frames"):
        a(x, num_frames=4)
    with pytest.raises(ValueError, match="already"):
        attach_i2v_adapter(holder)


def test_gradients_reach_only_adapter_output_at_init():
    """At init W'_O = 0, so the loss gradient reaches to_out_ff but not yet to_q_ff (ControlNet-style zero init)."""
    unet = _toy(motion=None)
    unet.requires_grad_(False)
    params = attach_i2v_adapter(unet)
    x, t, ctx = _inputs(1, 2)
    unet(x, t, ctx).square().mean().backward()
    grads = {k: p.grad for k, p in params.items()}
    assert all(g is not None for g in grads.values())
    assert all(g.abs().max() > 0 for k, g in grads.items() if "to_out_ff" in k)
    assert all(g.abs().max() == 0 for k, g in grads.items() if "to_q_ff" in k)
    assert all(p.grad is None for n, p in unet.named_parameters() if n not in params)


def test_i2v_and_ip_adapters_coexist():
    """Both adapters attached (attn1 / attn2): the zero-init I2V-Adapter leaves the IP-Adapter model unchanged."""
    from i2v.models.content import attach_ip_adapter

    unet = _toy()
    attach_ip_adapter(unet, num_tokens=4)
    x, t, ctx = _inputs()
    ctx = torch.cat([ctx, torch.randn(2, 4, 64)], dim=1)
    with torch.no_grad():
        ip_only = unet(x, t, ctx)
        attach_i2v_adapter(unet)
        assert (unet(x, t, ctx) - ip_only).abs().max().item() <= 1e-6
        _perturb_adapter(unet)
        assert (unet(x, t, ctx) - ip_only).abs().max().item() > 1e-3
    assert all(hasattr(unet.get_submodule(n.replace("attn1", "attn2")), "to_k_ip")
               for n in {k.rsplit(".", 2)[0] for k in i2v_adapter_parameters(unet)})
