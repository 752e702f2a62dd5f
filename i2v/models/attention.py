"""Multi-head attention with diffusers weight names, and the one hook adapters use.

Every attention layer of the codebase (spatial self-attention ``attn1``, text cross-attention ``attn2``,
the motion module's temporal attention) is an :class:`Attention`. Adapters never edit block code: they
register their own tensors as sub-modules of an ``Attention`` (so checkpoint keys read
``...attn1.to_q_ff.weight`` exactly as in the official I2V-Adapter release) and set ``attn.processor``
to a callable that replaces the default computation.

Processor protocol::

    processor(attn, x, context=None, num_frames=None) -> Tensor   # same shape as x

``x`` is ``(N, T, C)`` tokens (for spatial layers ``N = B·F``), ``context`` ``(N, L, d)`` or ``None`` for
self-attention, ``num_frames`` the frame count ``F`` so that a processor can regroup ``(b f) t c``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class AttnProcessor(Protocol):
    def __call__(self, attn: "Attention", x: torch.Tensor, context: Optional[torch.Tensor] = None,
                 num_frames: Optional[int] = None) -> torch.Tensor: ...


class Attention(nn.Module):
    """``to_q``/``to_k``/``to_v`` (no bias) and ``to_out.0`` (bias), scaled dot-product attention.

    Args:
        query_dim: channels C of the queries.
        context_dim: channels of keys/values (``None``: self-attention, same as ``query_dim``).
        heads: number of heads; ``dim_head``: channels per head.
    """

    def __init__(self, query_dim: int, context_dim: Optional[int] = None, heads: int = 8, dim_head: int = 64,
                 qkv_bias: bool = False, out_bias: bool = True):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.is_cross = context_dim is not None
        kv_dim = context_dim if context_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=out_bias), nn.Dropout(0.0)])
        self.processor: Optional[AttnProcessor] = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Head-split SDPA. q ``(N, T, h·d)``, k/v ``(N, S, h·d)`` -> ``(N, T, h·d)`` (before ``to_out``)."""
        h = self.heads
        q, k, v = (rearrange(a, "n t (h d) -> n h t d", h=h) for a in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return rearrange(out, "n h t d -> n t (h d)")

    def project_out(self, y: torch.Tensor) -> torch.Tensor:
        return self.to_out[1](self.to_out[0](y))

    def default_forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        kv = x if context is None else context
        return self.project_out(self.attend(self.to_q(x), self.to_k(kv), self.to_v(kv)))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                num_frames: Optional[int] = None) -> torch.Tensor:
        if self.processor is not None:
            return self.processor(self, x, context=context, num_frames=num_frames)
        return self.default_forward(x, context)


def spatial_attention_layers(model: nn.Module, name: str = "attn1") -> Iterator[tuple[str, Attention]]:
    """Yield ``(qualified_name, module)`` for every spatial ``attn1`` (or ``attn2``) of a UNet, in
    ``named_modules`` order (down blocks, up blocks, mid block as registered), skipping motion modules."""
    for qual, mod in model.named_modules():
        if isinstance(mod, Attention) and qual.rsplit(".", 1)[-1] == name and "motion_modules" not in qual:
            yield qual, mod


@contextmanager
def swapped_processors(model: nn.Module, factory: Callable[["Attention", Optional[AttnProcessor]], AttnProcessor],
                       name: str = "attn1"):
    """Inside the block every spatial ``name`` layer of ``model`` runs ``factory(attn, own)`` (``own``: the processor
    it had, ``None`` = plain attention); the layers' own processors are back afterwards, also after an error."""
    layers = [a for _, a in spatial_attention_layers(model, name)]
    own = [a.processor for a in layers]
    for attn, proc in zip(layers, own):
        attn.processor = factory(attn, proc)
    try:
        yield
    finally:
        for attn, proc in zip(layers, own):
            attn.processor = proc
