"""I2V-Adapter (paper §3.2, eq. 5-6): a trainable cross-frame branch beside every spatial self-attention ``attn1``.

For frame i of a video::

    out_i = Attn(Q_i, K_i, V_i) W_O  +  Attn(X_i W'_Q, K_1, V_1) W'_O

``K_1 = to_k(X_1)``, ``V_1 = to_v(X_1)`` are the frozen key/value projections of frame 0's normalised hidden
states (the attn1 input), shared by all frames of the same video; frame 0's own adapter term is kept (official
behaviour). ``W'_Q`` = ``to_q_ff`` (Linear C→C, no bias, initialised as a copy of ``to_q``), ``W'_O`` =
``to_out_ff`` (Linear C→C with bias, zero-initialised), so at init the model output is unchanged. Both are
registered on the Attention so checkpoint keys read ``…attn1.to_q_ff.weight`` as in the official release.
Trainable size Σ(2C² + C): SD1.5 24,793,280 (16 layers), SDXL 204,883,200 (70 layers).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from einops import rearrange
from torch import nn

from i2v.models.attention import Attention, spatial_attention_layers

ADAPTER_SUFFIXES = ("to_q_ff.weight", "to_out_ff.weight", "to_out_ff.bias")


class I2VAdapterProcessor:
    """attn1 processor for eq. 6. ``x`` ``(B·F, T, C)``; needs ``num_frames`` = F. When ``enabled`` is False it is
    the plain self-attention (ablation ``no_i2v``)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def __call__(self, attn: Attention, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                 num_frames: Optional[int] = None) -> torch.Tensor:
        if context is not None:
            raise ValueError("I2V-Adapter is a self-attention (attn1) processor; got a cross-attention context")
        if not self.enabled:
            return attn.default_forward(x)
        if num_frames is None or x.shape[0] % num_frames:
            raise ValueError(f"I2V-Adapter needs num_frames dividing the batch of frames, got num_frames={num_frames} "
                             f"for x of shape {tuple(x.shape)}")
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        out = attn.project_out(attn.attend(q, k, v))
        return out + attn.to_out_ff(attend_first_frame(attn, attn.to_q_ff(x), k, v, num_frames))


def attend_first_frame(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       num_frames: int) -> torch.Tensor:
    """``Attn(Q_i, K_1, V_1)`` of eq. 5 for every frame i: q, k, v ``(B·F, T, C)`` -> ``(B·F, T, C)`` (before any
    output projection); only frame 0's rows of k and v are read."""
    k1 = rearrange(k, "(b f) t c -> b f t c", f=num_frames)[:, 0]
    v1 = rearrange(v, "(b f) t c -> b f t c", f=num_frames)[:, 0]
    return attend_per_video(attn, q, k1, v1, num_frames)


def attend_per_video(attn: Attention, q: torch.Tensor, k1: torch.Tensor, v1: torch.Tensor,
                     num_frames: int) -> torch.Tensor:
    """Every frame's queries ``q`` ``(B·F, T, C)`` attend to their video's keys/values ``k1``, ``v1`` ``(B, S, C)``
    -> ``(B·F, T, C)``. Softmax is per query, so stacking the frames of one video along the query axis is exact,
    without repeating the keys/values F times."""
    q = rearrange(q, "(b f) t c -> b (f t) c", f=num_frames)
    return rearrange(attn.attend(q, k1, v1), "b (f t) c -> (b f) t c", f=num_frames)


def i2v_adapter_layers(unet: nn.Module) -> list[tuple[str, Attention]]:
    """``(name, attn1)`` of every spatial self-attention carrying an I2V-Adapter."""
    return [(n, a) for n, a in spatial_attention_layers(unet, "attn1") if isinstance(a.processor, I2VAdapterProcessor)]


QUERY_INITS = ("to_q", "to_k")


def attach_i2v_adapter(unet: nn.Module, enabled: bool = True, query_init: str = "to_q",
                       query_init_scale: float = 1.0) -> dict[str, nn.Parameter]:
    """Add ``to_q_ff`` and ``to_out_ff`` (zeros) to every spatial attn1 and set the processor.

    ``to_q_ff`` starts as ``query_init_scale`` x a copy of ``to_q`` (the paper's init with scale 1, the default) or of
    ``to_k``: with ``W'_Q = s·W_K`` the branch's score ``s·<W_K x_i, W_K x_1>`` is a feature similarity, so each
    query starts by looking up the places of frame 1 that resemble it, however uniform the base's own ``to_q``/``to_k``
    attention is (the toy base; see the README's toy section). The output is unchanged at init either way.

    Works on the meta device (tensors are created where ``to_q`` lives). Returns the trainable tensors by full
    state-dict name (``<block>.attn1.to_q_ff.weight``, ``…attn1.to_out_ff.{weight,bias}``), with requires_grad=True.
    """
    if i2v_adapter_layers(unet):
        raise ValueError("attach_i2v_adapter: the model already carries an I2V-Adapter")
    if query_init not in QUERY_INITS:
        raise ValueError(f"query_init must be one of {QUERY_INITS}, got {query_init!r}")
    if not query_init_scale > 0:
        raise ValueError(f"query_init_scale must be > 0, got {query_init_scale}")
    params: dict[str, nn.Parameter] = {}
    for qual, attn in spatial_attention_layers(unet, "attn1"):
        w = getattr(attn, query_init).weight
        inner, c = w.shape
        q_ff = nn.Linear(c, inner, bias=False, device=w.device, dtype=w.dtype)
        out_ff = nn.Linear(inner, c, bias=True, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            q_ff.weight.copy_(w)
            if query_init_scale != 1.0:
                q_ff.weight.mul_(query_init_scale)
            nn.init.zeros_(out_ff.weight)
            nn.init.zeros_(out_ff.bias)
        attn.to_q_ff, attn.to_out_ff = q_ff, out_ff
        attn.processor = I2VAdapterProcessor(enabled)
        for suffix, p in zip(ADAPTER_SUFFIXES, (q_ff.weight, out_ff.weight, out_ff.bias)):
            p.requires_grad_(True)
            params[f"{qual}.{suffix}"] = p
    if not params:
        raise ValueError("attach_i2v_adapter: the model has no spatial attn1 layers")
    return params


def i2v_adapter_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter tensors currently attached, by full state-dict name (same names as ``attach_i2v_adapter``)."""
    layers = i2v_adapter_layers(unet)
    if not layers:
        raise ValueError("no I2V-Adapter attached (call attach_i2v_adapter first)")
    return {f"{n}.{s}": p for n, a in layers
            for s, p in zip(ADAPTER_SUFFIXES, (a.to_q_ff.weight, a.to_out_ff.weight, a.to_out_ff.bias))}


def set_i2v_adapter_enabled(unet: nn.Module, enabled: bool) -> int:
    """Switch the adapter branch on/off in every layer (off = default self-attention). Returns the layer count."""
    layers = i2v_adapter_layers(unet)
    if not layers:
        raise ValueError("no I2V-Adapter attached (call attach_i2v_adapter first)")
    for _, attn in layers:
        attn.processor.enabled = bool(enabled)
    return len(layers)


@contextmanager
def i2v_adapter_gated(unet: nn.Module, on: bool, layers: Optional[list] = None) -> Iterator[None]:
    """Within the block the branch runs only where it was on and ``on`` holds (an ablation's off layers stay off);
    every layer's switch is restored afterwards. ``layers``: ``i2v_adapter_layers(unet)`` when the caller has them."""
    layers = i2v_adapter_layers(unet) if layers is None else layers
    was = [attn.processor.enabled for _, attn in layers]
    try:
        for (_, attn), w in zip(layers, was):
            attn.processor.enabled = w and bool(on)
        yield
    finally:
        for (_, attn), w in zip(layers, was):
            attn.processor.enabled = w


def check_i2v_min_t(min_t, num_train_timesteps: int) -> int:
    """``adapter.i2v_min_t`` as an int in [0, T): the branch runs at timesteps t >= it (0: every t, the paper)."""
    if isinstance(min_t, bool) or not isinstance(min_t, (int, float)) or min_t != int(min_t) \
            or not 0 <= int(min_t) < num_train_timesteps:
        raise ValueError(f"adapter.i2v_min_t must be an integer timestep in [0, {num_train_timesteps}) (0: the branch "
                         f"at every t, the paper), got {min_t!r}")
    return int(min_t)


class I2VTimestepGate:
    """``denoise(x, t, cond, uncond)`` (a :class:`~i2v.diffusion.sampler.Denoiser` or a wrapper of one) with the
    I2V-Adapter branch switched off at the sampler steps whose t is below ``min_t`` (``adapter.i2v_min_t``; not the
    paper's method, which runs it at every step). ``calls`` counts the wrapped denoiser's network calls."""

    def __init__(self, denoise: Callable, unet: nn.Module, min_t: int):
        self.denoise, self.unet, self.min_t = denoise, unet, int(min_t)
        self.layers = i2v_adapter_layers(unet)      # found once, not at every gated step

    @property
    def calls(self) -> int:
        return getattr(self.denoise, "calls", 0)

    def __call__(self, x: torch.Tensor, t, cond: dict, uncond: Optional[dict]) -> torch.Tensor:
        t_val = float(torch.as_tensor(t).reshape(-1)[0])
        if t_val >= self.min_t:
            return self.denoise(x, t, cond, uncond)
        with i2v_adapter_gated(self.unet, False, self.layers):
            return self.denoise(x, t, cond, uncond)


def detach_i2v_adapter(unet: nn.Module) -> int:
    """Remove ``to_q_ff``/``to_out_ff`` and the processors. Returns the number of layers restored."""
    layers = i2v_adapter_layers(unet)
    if not layers:
        raise ValueError("no I2V-Adapter attached (call attach_i2v_adapter first)")
    for _, attn in layers:
        del attn.to_q_ff, attn.to_out_ff
        attn.processor = None
    return len(layers)


def expected_trainable_count(channels: list[int]) -> int:
    """Σ(2C² + C) over the attn1 layers' channel widths (W'_Q without bias + W'_O with bias)."""
    return sum(2 * c * c + c for c in channels)
