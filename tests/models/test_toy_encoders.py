"""Toy-world text/image encoders and codecs: offline tokenizer, shapes, seeding, round trips, safetensors I/O."""
import math
import socket

import pytest
import torch
from safetensors.torch import save_file

from i2v.models.toy import (IdentityCodec, PatchCodec, ToyImageConfig, ToyImageEncoder, ToyTextConfig,
                            ToyTextEncoder, load_toy_state_dict, toy_state_dict)

CAPTION = "a red circle moving left on a blue background"


@pytest.fixture(scope="module")
def text_enc():
    return ToyTextEncoder().eval()


def test_tokenizer_works_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = ToyTextEncoder(ToyTextConfig(context_length=16))
    ids = enc.tokenize(["a photo of a cat", ""])
    # CLIP BPE ids (same as openai/clip-vit-base-patch32's tokenizer): <sot> a photo of a cat <eot>
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[0, 7:].abs().sum() == 0
    assert ids[1, :2].tolist() == [49406, 49407] and ids[1, 2:].abs().sum() == 0
    assert ids.shape == (2, 16)


def test_empty_prompt_and_truncation(text_enc):
    out = text_enc(["", CAPTION, "word " * 50])
    ctx, pooled = out["context"], out["pooled"]
    assert ctx.shape == (3, 16, 64) and pooled.shape == (3, 64)
    assert torch.isfinite(ctx).all() and torch.isfinite(pooled).all()
    # pooled = state at the EOS token: index 1 for "", 10 for the caption (9 words), 15 for the truncated prompt
    n_words = len(CAPTION.split())
    torch.testing.assert_close(pooled[0], ctx[0, 1])
    torch.testing.assert_close(pooled[1], ctx[1, n_words + 1])
    torch.testing.assert_close(pooled[2], ctx[2, 15])
    ids = text_enc.tokenize(["word " * 50])
    assert ids[0, -1].item() == text_enc.eot_id


def test_context_length_config():
    enc = ToyTextEncoder(ToyTextConfig(context_length=8, width=32, heads=2, layers=1))
    out = enc(["a green square moving up on a black background"])
    assert out["context"].shape == (1, 8, 32) and out["pooled"].shape == (1, 32)


def test_text_deterministic_per_seed_and_prompt_sensitive(text_enc):
    prompts = [CAPTION, "a red circle moving right on a blue background", "a green square moving up on a black background"]
    a = ToyTextEncoder(ToyTextConfig(seed=3))(prompts)
    torch.manual_seed(123)  # the global RNG must not matter
    b = ToyTextEncoder(ToyTextConfig(seed=3))(prompts)
    c = ToyTextEncoder(ToyTextConfig(seed=4))(prompts)
    assert torch.equal(a["context"], b["context"]) and torch.equal(a["pooled"], b["pooled"])
    assert (a["context"] - c["context"]).abs().max() > 1e-2
    ctx, pooled = a["context"], a["pooled"]
    for i in range(3):
        for j in range(i + 1, 3):
            assert (pooled[i] - pooled[j]).abs().max() > 1e-2
            assert (ctx[i] - ctx[j]).abs().max() > 1e-2
    # left vs right differ at token 5 ("left"/"right"); causal attention keeps tokens 0..4 identical
    torch.testing.assert_close(ctx[0, :5], ctx[1, :5])
    assert (ctx[0, 5] - ctx[1, 5]).abs().max() > 1e-2


def test_hashed_vocab_gives_every_token_its_own_rows(text_enc):
    n_rows, vocab = text_enc.cfg.vocab_rows, 49408
    rows = text_enc.token_rows(torch.arange(vocab))
    assert rows.shape == (vocab, 2) and rows.min() >= 1 and rows.max() < n_rows
    pairs = {tuple(r) for r in rows.tolist()}
    assert len(pairs) == vocab  # no two BPE ids (incl. SOT/EOS) share an embedding
    assert rows[49406].tolist() == [1, 1] and rows[49407].tolist() == [2, 2]
    ordinary = rows[:49406]
    assert ordinary[:, 0].max() < ordinary[:, 1].min()  # the two hash tables do not overlap
    words = ("red green blue yellow cyan magenta white black orange purple gray pink circle square triangle "
             "moving left right up down on a background").split()
    ids = text_enc.tokenize(words)[:, 1]  # each is a single BPE token after SOT
    assert len(set(ids.tolist())) == len(words)
    assert len({tuple(r) for r in text_enc.token_rows(ids).tolist()}) == len(words)


def test_padding_after_eos_is_ignored(text_enc):
    # positions after EOS use the padding row, whatever id the tokenizer wrote there (its pad id 0 is also "!")
    out = text_enc([CAPTION])
    ids = text_enc.tokenize([CAPTION])
    bump = torch.randn(text_enc.cfg.width)  # not a constant: LayerNorm would remove a constant shift
    with torch.no_grad():
        text_enc.token_embedding.weight[0] += bump
    try:
        moved = text_enc([CAPTION])
    finally:
        with torch.no_grad():
            text_enc.token_embedding.weight[0] -= bump
    n = int((ids[0] == text_enc.eot_id).nonzero()) + 1
    torch.testing.assert_close(moved["context"][:, :n], out["context"][:, :n])  # causal: pads never seen
    assert (moved["context"][:, n:] - out["context"][:, n:]).abs().max() > 1e-3
    bang = text_enc.token_rows(torch.tensor([0]))  # "!" itself is an ordinary token, not the pad row
    assert bang.min() >= 3


def test_too_small_vocab_table_is_refused():
    with pytest.raises(ValueError, match="vocab_rows"):
        ToyTextEncoder(ToyTextConfig(vocab_rows=300))


def test_image_encoder_shapes_and_structure():
    enc = ToyImageEncoder().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = enc(x)
    assert out["image_embeds"].shape == (2, 64) and out["penultimate"].shape == (2, 65, 64)
    # rebuild by hand: patches -> CLS + pos -> ln_pre -> blocks; penultimate after block 1 of 3, embeds via ln_post@proj
    patches = enc.conv1(x).flatten(2).transpose(1, 2)
    h = torch.cat([enc.class_embedding.expand(2, 1, 64), patches], 1) + enc.positional_embedding
    h = enc.blocks[1](enc.blocks[0](enc.ln_pre(h)))
    torch.testing.assert_close(out["penultimate"], h)
    torch.testing.assert_close(out["image_embeds"], enc.ln_post(enc.blocks[2](h)[:, 0]) @ enc.proj)
    # larger inputs are resized to 32x32: a 64x64 nearest-upsampled image gives the same features
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    torch.testing.assert_close(enc(big)["image_embeds"], out["image_embeds"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.zeros(2, 4, 32, 32))


def test_image_encoder_seeded_and_input_sensitive():
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    a = ToyImageEncoder(ToyImageConfig(seed=1))(x)
    b = ToyImageEncoder(ToyImageConfig(seed=1))(x)
    c = ToyImageEncoder(ToyImageConfig(seed=2))(x)
    assert torch.equal(a["image_embeds"], b["image_embeds"]) and torch.equal(a["penultimate"], b["penultimate"])
    assert (a["image_embeds"] - c["image_embeds"]).abs().max() > 1e-2
    e = a["image_embeds"]
    assert (e[0] - e[1]).abs().max() > 1e-3 and (e[1] - e[2]).abs().max() > 1e-3
    zero = ToyImageEncoder(ToyImageConfig(seed=1))(torch.zeros(1, 3, 32, 32))  # IP-Adapter's uncond image
    assert torch.isfinite(zero["image_embeds"]).all()


def test_identity_codec_exact_round_trip():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codec = IdentityCodec()
    assert codec.latent_channels == 3 and codec.downsample == 1 and len(list(codec.parameters())) == 0
    z = codec.encode(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, x) and torch.equal(codec.decode(z), x)
    half = IdentityCodec(scale=0.5)
    assert torch.equal(half.encode(x), x * 0.5) and torch.equal(half.decode(half.encode(x)), x)
    with pytest.raises(ValueError, match="IdentityCodec.encode"):
        codec.encode(torch.zeros(2, 4, 8, 8))


def test_patch_codec_invertible_and_orthonormal():
    codec = PatchCodec()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (2, 12, 8, 8) and codec.latent_channels == 12 and codec.downsample == 2
    assert (codec.decode(z) - x).abs().max() <= 1e-5
    assert math.isclose(z.norm().item(), x.norm().item(), rel_tol=1e-5)  # orthonormal mix keeps the energy
    # a flat grey image v only excites channel 0: 12 inputs * v / (sqrt(3) * 2) = 2 * sqrt(3) * v
    flat = codec.encode(torch.full((1, 3, 4, 4), 0.5))
    torch.testing.assert_close(flat[:, 0], torch.full((1, 2, 2), math.sqrt(3)))
    assert flat[:, 1:].abs().max() < 1e-6
    with pytest.raises(ValueError, match="even"):
        codec.encode(torch.zeros(1, 3, 5, 6))


def test_patch_codec_position_channels():
    """position_channels appends fixed sin/cos codes (same for every image, x scale) that decode drops; their dot
    product singles out the same place: every latent position is most similar to itself."""
    from i2v.models.toy import position_channels

    codec = PatchCodec(scale=2.0, position_channels=8)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (3, 20, 16, 16) and codec.latent_channels == 20
    torch.testing.assert_close(z[:, :12], PatchCodec(scale=2.0).encode(x))
    pos = position_channels(8, 16, 16)
    torch.testing.assert_close(z[:, 12:], 2.0 * pos.expand(3, -1, -1, -1))
    assert (codec.decode(z) - x).abs().max() <= 1e-5
    flat = pos.flatten(1).T                          # (256 places, 8 codes)
    sim = flat @ flat.T
    assert torch.equal(sim.argmax(dim=1), torch.arange(256))
    assert (sim.diagonal() - sim.masked_fill(torch.eye(256, dtype=torch.bool), -1e9).max(dim=1).values).min() > 0.1
    torch.testing.assert_close(pos[0], torch.sin(2 * math.pi * torch.arange(16.0) / 16).expand(16, 16))  # sin x
    with pytest.raises(ValueError, match="PatchCodec.decode"):
        codec.decode(torch.zeros(1, 12, 16, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        PatchCodec(position_channels=6)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_state_dict_safetensors_round_trip(tmp_path, kind):
    if kind == "text":
        src, dst, inp = ToyTextEncoder(ToyTextConfig(seed=5)), ToyTextEncoder(ToyTextConfig(seed=6)), [CAPTION, ""]
        key = "pooled"
    else:
        src, dst, inp = ToyImageEncoder(ToyImageConfig(seed=5)), ToyImageEncoder(ToyImageConfig(seed=6)), \
            torch.rand(2, 3, 32, 32) * 2 - 1
        key = "image_embeds"
    sd = toy_state_dict(src)
    ptrs = [t.untyped_storage().data_ptr() for t in sd.values()]
    assert len(set(ptrs)) == len(ptrs)
    assert not set(ptrs) & {p.untyped_storage().data_ptr() for p in src.state_dict().values()}
    path = tmp_path / f"{kind}.safetensors"
    save_file(sd, str(path))
    assert not torch.equal(src(inp)[key], dst(inp)[key])
    load_toy_state_dict(dst, str(path))
    assert torch.equal(src(inp)[key], dst(inp)[key])
    sd.pop(next(iter(sd)))
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(KeyError, match="bad.safetensors"):
        load_toy_state_dict(dst, str(tmp_path / "bad.safetensors"))


def test_real_ip_adapter_projections_apply_unchanged():
    from i2v.models.content import ImageProjModel, Resampler, image_tokens, uncond_image_tokens

    enc = ToyImageEncoder().eval()
    feats = enc(torch.rand(2, 3, 32, 32) * 2 - 1)
    base = ImageProjModel(clip_dim=64, cross_dim=32, num_tokens=4)
    plus = Resampler(dim=32, depth=1, dim_head=8, heads=4, num_queries=16, embedding_dim=64, output_dim=32)
    assert image_tokens(base, feats).shape == (2, 4, 32)
    assert image_tokens(plus, feats).shape == (2, 16, 32)
    # Plus' unconditional branch runs the encoder on an all-zero preprocessed image
    un = uncond_image_tokens(plus, enc, batch=3)
    torch.testing.assert_close(un[0], image_tokens(plus, enc(torch.zeros(1, 3, 32, 32)))[0])
    assert un.shape == (3, 16, 32)
