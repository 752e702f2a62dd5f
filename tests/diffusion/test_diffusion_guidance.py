import pytest
import torch

from i2v.diffusion.guidance import (cfg_combine, guidance_added_cond, guidance_context, split_guided,
                                    uses_uncond)


def test_combine_formula():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(cfg_combine(u, c, 7.5), torch.tensor([1.0 + 7.5 * 2, -2.0 + 7.5 * 2]))
    assert torch.equal(cfg_combine(u, c, 1.0), c)
    assert torch.equal(cfg_combine(u, c, 0.0), u)


def test_context_order_and_broadcast():
    cond, uncond = torch.ones(2, 3, 4), torch.zeros(1, 3, 4)  # negative/empty prompt given once
    ctx = guidance_context(cond, uncond, 7.5, 2)
    assert ctx.shape == (4, 3, 4) and ctx[:2].eq(0).all() and ctx[2:].eq(1).all()
    assert torch.equal(guidance_context(cond, None, 1.0, 2), cond)
    with pytest.raises(ValueError, match="share"):
        guidance_context(cond, torch.zeros(2, 5, 4), 7.5, 2)
    with pytest.raises(ValueError, match="batch"):
        guidance_context(torch.ones(3, 3, 4), None, 1.0, 2)
    assert not uses_uncond(1.0) and uses_uncond(0.0) and uses_uncond(7.5)


def test_split_guided():
    eps = torch.cat([torch.zeros(2, 4), torch.ones(2, 4)])
    assert torch.equal(split_guided(eps, 3.0), torch.full((2, 4), 3.0))
    assert torch.equal(split_guided(eps, 1.0), eps)
    with pytest.raises(ValueError):
        split_guided(torch.zeros(3, 4), 2.0)


def test_added_cond():
    c = {"text_embeds": torch.ones(2, 5), "time_ids": torch.ones(2, 6)}
    u = {"text_embeds": torch.zeros(2, 5), "time_ids": torch.ones(2, 6)}
    out = guidance_added_cond(c, u, 7.5, 2)
    assert out["text_embeds"].shape == (4, 5) and out["text_embeds"][:2].eq(0).all()
    same = guidance_added_cond(c, None, 7.5, 2)
    assert same["text_embeds"].eq(1).all()
    assert guidance_added_cond(c, u, 1.0, 2)["text_embeds"].shape == (2, 5)
    assert guidance_added_cond(None, None, 7.5, 2) is None
    with pytest.raises(ValueError, match="keys"):
        guidance_added_cond(c, {"text_embeds": torch.zeros(2, 5)}, 7.5, 2)
