"""Text encoders inside single-file SD1.5 / SDXL checkpoints: the CLIP-L keys (HF names, old merges without
``text_model.``) and the SGM OpenCLIP bigG keys (open_clip names, fused in_proj, [width, proj] projection) give
models whose outputs equal the source models' -- transformers' CLIPTextModel for CLIP-L, open_clip itself for
bigG -- and ``backbone.unet=<single file>`` builds the text encoder from them."""
from __future__ import annotations

import pytest
import torch
from ckpt_layouts import (SD15_HINTS, TEXT_WIDTH, make_clip_l, make_openclip_bigg, openclip_text_keys,
                          save_single_file, sd15_text_file, sdxl_text_file, to_ldm_single_file)
from omegaconf import OmegaConf

from i2v.checkpoints.clip_text import (clip_text_model_from_state, read_single_file_text, single_file_text_to_hf)
from i2v.checkpoints.common import CheckpointError, KeyMapError
from i2v.models.text import load_tokenizer, write_clip_tokenizer

PROMPTS = ["a red fox jumps over a sleeping dog", "", "two cats"]


def _close(a, b, tol=1e-4):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    write_clip_tokenizer(root / "tokenizer")
    write_clip_tokenizer(root / "tokenizer_2", pad_token="!")
    return root


def _ids(folder, prompts=PROMPTS):
    tok = load_tokenizer(folder)
    return tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def _without_text(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith(("cond_stage_model.", "conditioner."))}


def _openclip_reference(bigg, ids):
    """(penultimate hidden states, pooled projection) computed by open_clip itself."""
    caught = []
    h = bigg.transformer.resblocks[-2].register_forward_hook(lambda m, a, out: caught.append(out))
    with torch.no_grad():
        pooled = bigg.encode_text(ids, normalize=False)
    h.remove()
    return caught[0], pooled


# ----------------------------------------------------------------------------------------------- key maps
@pytest.mark.parametrize("old_merge", [False, True])
def test_sd15_clip_l_from_single_file(tok_dir, old_merge):
    clip_l = make_clip_l(seed=1)
    hf = single_file_text_to_hf(sd15_text_file(clip_l, old_merge))
    assert list(hf) == ["text_encoder"] and "text_model.embeddings.position_ids" not in hf["text_encoder"]
    model = clip_text_model_from_state(hf["text_encoder"], "text_encoder")
    assert model.config.hidden_act == "quick_gelu" and model.config.num_attention_heads == TEXT_WIDTH // 64
    assert not any(p.requires_grad for p in model.parameters())
    ids = _ids(tok_dir / "tokenizer")
    with torch.no_grad():
        got, ref = model(input_ids=ids), clip_l(input_ids=ids)
    _close(got.last_hidden_state, ref.last_hidden_state, 1e-6)
    _close(got.pooler_output, ref.pooler_output, 1e-6)


def test_sdxl_bigg_matches_open_clip(tok_dir):
    clip_l, bigg = make_clip_l(seed=2), make_openclip_bigg(seed=3)
    hf = single_file_text_to_hf(sdxl_text_file(clip_l, bigg))
    assert sorted(hf) == ["text_encoder", "text_encoder_2"]
    model = clip_text_model_from_state(hf["text_encoder_2"], "text_encoder_2")
    assert model.config.hidden_act == "gelu" and model.config.projection_dim == 96
    ids = _ids(tok_dir / "tokenizer_2")
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    penult, pooled = _openclip_reference(bigg, ids)
    _close(out.hidden_states[-2], penult)
    _close(out.text_embeds, pooled)
    clip = clip_text_model_from_state(hf["text_encoder"], "text_encoder")
    with torch.no_grad():
        _close(clip(input_ids=_ids(tok_dir / "tokenizer")).last_hidden_state,
               clip_l(input_ids=_ids(tok_dir / "tokenizer")).last_hidden_state, 1e-6)


def test_square_projection_is_transposed(tok_dir):
    """bigG's projection is square (1280x1280): loading it untransposed raises nothing, so compare outputs."""
    bigg = make_openclip_bigg(seed=4, embed=TEXT_WIDTH)
    hf = single_file_text_to_hf({"conditioner.embedders.1.model." + k: v for k, v in
                                 openclip_text_keys(bigg).items()})
    model = clip_text_model_from_state(hf["text_encoder_2"], "text_encoder_2")
    ids = _ids(tok_dir / "tokenizer_2")
    with torch.no_grad():
        got = model(input_ids=ids).text_embeds
    _, pooled = _openclip_reference(bigg, ids)
    _close(got, pooled)


def test_single_file_text_errors():
    with pytest.raises(CheckpointError, match="SD2.x OpenCLIP-H"):
        single_file_text_to_hf({"cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)})
    with pytest.raises(KeyMapError, match="outside the SD1.5 / SDXL layouts") as e:
        single_file_text_to_hf({"conditioner.embedders.2.model.x": torch.zeros(1)})
    assert e.value.unexpected == ["conditioner.embedders.2.model.x"]
    with pytest.raises(KeyMapError, match="OpenCLIP text keys outside") as e:
        single_file_text_to_hf({"conditioner.embedders.1.model.transformer.resblocks.0.attn.foo": torch.zeros(1)})
    hf = single_file_text_to_hf(sd15_text_file(make_clip_l()))["text_encoder"]
    dropped = dict(hf)
    del dropped["text_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(KeyMapError, match="missing") as e:
        clip_text_model_from_state(dropped, "text_encoder")
    assert "encoder.layers.1.mlp.fc2.bias" in e.value.missing[0]
    narrow = {k: v[..., :40] if v.shape[-1] == TEXT_WIDTH else v for k, v in hf.items()}
    with pytest.raises(CheckpointError, match="not a multiple of 64.*backbone.text_encoder"):
        clip_text_model_from_state(narrow, "text_encoder")
    assert single_file_text_to_hf({}) == {}


def test_read_single_file_text_reads_only_text(tmp_path, sd15_unet):
    sd = {**_without_text(to_ldm_single_file(sd15_unet, sdxl=False)), **sd15_text_file(make_clip_l())}
    for suffix in (".safetensors", ".ckpt"):
        save_single_file(sd, tmp_path / f"m{suffix}")
        got = read_single_file_text(tmp_path / f"m{suffix}")
        assert sorted(got) == sorted(k for k in sd if k.startswith("cond_stage_model."))


# ----------------------------------------------------------------------------------------------- backbone path
def _backbone(name, **kw):
    base = OmegaConf.load(f"configs/backbone/{name}.yaml")
    return OmegaConf.merge(base, kw)


def test_build_text_encoder_sd15_single_file(tmp_path, tok_dir, sd15_unet):
    from i2v.pipeline.bundle import check_paths
    from i2v.pipeline.sd import build_text_encoder

    clip_l, other = make_clip_l(seed=5), make_clip_l(seed=6)
    path = tmp_path / "dreambooth.safetensors"
    save_single_file({**_without_text(to_ldm_single_file(sd15_unet, sdxl=False)), **sd15_text_file(clip_l)}, path)
    other.save_pretrained(str(tmp_path / "text_encoder"))
    ids = _ids(tok_dir / "tokenizer")
    with torch.no_grad():
        want, want_other = clip_l(input_ids=ids).last_hidden_state, other(input_ids=ids).last_hidden_state
    assert (want - want_other).abs().max() > 0.1
    bb = _backbone("sd15", unet=str(path), tokenizer=str(tok_dir / "tokenizer"), motion=str(tmp_path))
    check_paths(bb, OmegaConf.create({"content": False}))        # text_encoder may stay unset for a single file
    _close(build_text_encoder(bb)(PROMPTS)["context"], want, 1e-6)               # config from shapes
    bb.text_encoder = str(tmp_path / "text_encoder")
    _close(build_text_encoder(bb)(PROMPTS)["context"], want, 1e-6)               # folder config, file weights
    bb.text_from_single_file = False
    _close(build_text_encoder(bb)(PROMPTS)["context"], want_other, 1e-6)         # the folder's own weights


def test_build_text_encoder_sdxl_single_file(tmp_path, tok_dir, sdxl_unet):
    from i2v.pipeline.sd import build_text_encoder

    clip_l, bigg = make_clip_l(seed=7), make_openclip_bigg(seed=8)
    path = tmp_path / "sdxl_dreambooth.safetensors"
    save_single_file({**_without_text(to_ldm_single_file(sdxl_unet, sdxl=True)), **sdxl_text_file(clip_l, bigg)},
                     path)
    bb = _backbone("sdxl", unet=str(path), tokenizer=str(tok_dir / "tokenizer"),
                   tokenizer_2=str(tok_dir / "tokenizer_2"))
    out = build_text_encoder(bb)(PROMPTS)
    caught = []
    h = clip_l.encoder.layers[-2] if hasattr(clip_l, "encoder") else clip_l.text_model.encoder.layers[-2]
    handle = h.register_forward_hook(lambda m, a, o: caught.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        clip_l(input_ids=_ids(tok_dir / "tokenizer"))
    handle.remove()
    penult, pooled = _openclip_reference(bigg, _ids(tok_dir / "tokenizer_2"))
    assert out["context"].shape == (3, 77, 2 * TEXT_WIDTH)
    _close(out["context"][..., :TEXT_WIDTH], caught[0])
    _close(out["context"][..., TEXT_WIDTH:], penult)
    _close(out["pooled"], pooled)


def test_single_file_without_text_needs_folders(tmp_path, tok_dir, sd15_unet):
    from i2v.pipeline.sd import build_text_encoder

    path = tmp_path / "unet_only.safetensors"
    save_single_file(_without_text(to_ldm_single_file(sd15_unet, sdxl=False)), path)
    bb = _backbone("sd15", unet=str(path), tokenizer=str(tok_dir / "tokenizer"))
    with pytest.raises(FileNotFoundError, match=r"set backbone.text_encoder .*holds no weights"):
        build_text_encoder(bb)


def test_build_real_parts_sd15_single_file(tmp_path, tok_dir, sd15_unet):
    """The whole ``backbone=sd15`` path on a tiny DreamBooth-style file (UNet + text inside, VAE from a folder)."""
    from diffusers import AutoencoderKL

    from i2v.pipeline.sd import build_real_parts

    clip_l = make_clip_l(seed=9)
    path = tmp_path / "db.safetensors"
    save_single_file({**_without_text(to_ldm_single_file(sd15_unet, sdxl=False)), **sd15_text_file(clip_l)}, path)
    AutoencoderKL(block_out_channels=(32,), norm_num_groups=32, latent_channels=4).save_pretrained(tmp_path / "vae")
    bb = _backbone("sd15", unet=str(path), vae=str(tmp_path / "vae"), tokenizer=str(tok_dir / "tokenizer"),
                   unet_hints=dict(SD15_HINTS))
    parts = build_real_parts(bb, OmegaConf.create({"content": False}))
    with torch.no_grad():
        want = clip_l(input_ids=_ids(tok_dir / "tokenizer")).last_hidden_state
    _close(parts["text"](PROMPTS)["context"], want, 1e-6)
    ref = dict(sd15_unet.state_dict())
    got = parts["unet"].state_dict()
    assert all(torch.equal(got[k], v) for k, v in ref.items())
