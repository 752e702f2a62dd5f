"""CLIP text encoders (tiny random models, real offline tokenizer) and the VAE codec (tiny AutoencoderKL)."""
from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from i2v.models.text import SD15TextEncoder, SDXLTextEncoder, load_text_encoder, sdxl_time_ids, write_clip_tokenizer
from i2v.checkpoints.vae import build_vae_from_ldm, convert_ldm_vae_state_dict, vae_codec_from_single_file
from i2v.models.vae import VAECodec
from i2v.pipeline.bundle import decode_video, encode_video

PROMPTS = ["a photo of a Cat, jumping!!  over 3 dogs", ""]
# transformers registers SDXL's pad token "!" as a special token, which splits "!!"; keep "!" out of SDXL prompts
PROMPTS_XL = ["a photo of a Cat, jumping  over 3 dogs", ""]


def _close(a, b, tol=1e-4):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err


# ------------------------------------------------------------------------------------------------------- text
def _tiny_text_model(folder, hidden, with_projection=False, proj=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                         projection_dim=proj or hidden, eos_token_id=49407, bos_token_id=49406, pad_token_id=49407)
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg).eval()
    model.save_pretrained(str(folder))
    # rewrite the weights in the hub layout of real SD folders (``text_model.*`` keys, as transformers 4.x wrote them)
    sd = {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v.contiguous()
          for k, v in model.state_dict().items()}
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return model


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    write_clip_tokenizer(root / "tokenizer")
    write_clip_tokenizer(root / "tokenizer_2", pad_token="!")  # SDXL's second tokenizer pads with "!"
    torch.manual_seed(0)
    models = {"text_encoder": _tiny_text_model(root / "text_encoder", 32),
              "text_encoder_2": _tiny_text_model(root / "text_encoder_2", 48, True, proj=40)}
    return root, models


def _reference_ids(pad_id: int, prompts=PROMPTS) -> torch.Tensor:
    """Token ids from open_clip's own tokenizer (independent reference), padded with ``pad_id``."""
    import open_clip

    ids = open_clip.tokenize(prompts)
    eos = (ids == 49407).int().argmax(dim=1)
    pos = torch.arange(77)[None]
    return torch.where(pos > eos[:, None], torch.full_like(ids, pad_id), ids)


def test_tokenizer_matches_open_clip(pipeline_root):
    from i2v.models.text import load_tokenizer

    root, _ = pipeline_root
    tok = load_tokenizer(root / "tokenizer")
    ids = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    assert torch.equal(ids, _reference_ids(49407))
    tok2 = load_tokenizer(root / "tokenizer_2")
    ids2 = tok2(PROMPTS_XL, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert tok2.convert_tokens_to_ids("!") == 0
    assert torch.equal(ids2, _reference_ids(0, PROMPTS_XL))


def test_sd15_text_encoder(pipeline_root):
    root, models = pipeline_root
    enc = load_text_encoder("sd15", root)
    assert isinstance(enc, SD15TextEncoder)
    out = enc(PROMPTS)
    assert out["context"].shape == (2, 77, 32) and out["pooled"] is None
    with torch.no_grad():
        expected = models["text_encoder"](input_ids=_reference_ids(49407)).last_hidden_state
    _close(out["context"], expected)


def test_sdxl_text_encoder_penultimate_concat_and_pooled(pipeline_root):
    root, models = pipeline_root
    enc = load_text_encoder("sdxl", root)
    assert isinstance(enc, SDXLTextEncoder)
    out = enc(PROMPTS_XL)
    assert out["context"].shape == (2, 77, 32 + 48) and out["pooled"].shape == (2, 40)
    caught = []

    def hook(module, args, output):  # output of the second-to-last encoder layer, before the final LayerNorm
        caught.append(output[0] if isinstance(output, tuple) else output)

    m1, m2 = models["text_encoder"], models["text_encoder_2"]
    h1 = getattr(m1, "text_model", m1).encoder.layers[-2].register_forward_hook(hook)
    h2 = getattr(m2, "text_model", m2).encoder.layers[-2].register_forward_hook(hook)
    with torch.no_grad():
        m1(input_ids=_reference_ids(49407, PROMPTS_XL))
        pooled = m2(input_ids=_reference_ids(0, PROMPTS_XL)).text_embeds
    h1.remove(), h2.remove()
    _close(out["context"][..., :32], caught[0])
    _close(out["context"][..., 32:], caught[1])
    _close(out["pooled"], pooled)


def test_text_encoder_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        load_text_encoder("sd15", tmp_path)
    with pytest.raises(ValueError, match="backbone"):
        load_text_encoder("sd3", tmp_path)


def test_sdxl_time_ids():
    ids = sdxl_time_ids((1024, 768), (0, 16), (512, 512), batch=3)
    assert ids.shape == (3, 6) and ids.dtype == torch.float32
    assert ids[2].tolist() == [1024, 768, 0, 16, 512, 512]
    per = sdxl_time_ids(torch.tensor([[100, 200], [300, 400]]), (0, 0), (64, 64))
    assert per.tolist() == [[100, 200, 0, 0, 64, 64], [300, 400, 0, 0, 64, 64]]
    with pytest.raises(ValueError):
        sdxl_time_ids((1, 2, 3), (0, 0), (1, 1))


# -------------------------------------------------------------------------------------------------------- VAE
TINY_VAE = dict(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4, norm_num_groups=4,
                sample_size=16)


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**TINY_VAE).eval()


def test_vae_codec_scaling_round_trip(tmp_path):
    vae = _tiny_vae()
    vae.save_pretrained(str(tmp_path / "vae"))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    sd = VAECodec.from_folder(tmp_path / "vae", scaling_factor=0.18215, sample_posterior=False)
    xl = VAECodec.from_folder(tmp_path / "vae", scaling_factor=0.13025, sample_posterior=False)
    assert sd.latent_channels == 4 and sd.downsample == 4
    with torch.no_grad():
        mode = vae.encode(x).latent_dist.mode()
        z_sd, z_xl = sd.encode(x), xl.encode(x)
        _close(z_sd, mode * 0.18215)
        _close(z_xl, mode * 0.13025)
        _close(sd.decode(z_sd), vae.decode(mode).sample)
        _close(xl.decode(z_xl), vae.decode(mode).sample)
        # sampling: reproducible with a generator, distinct from the mode
        samp = VAECodec.from_folder(tmp_path / "vae", scaling_factor=0.18215)
        a = samp.encode(x, torch.Generator().manual_seed(4))
        b = samp.encode(x, torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and (a - z_sd).abs().max() > 1e-4
        # video helpers: (B, F, 3, H, W) <-> (B, C, F, h, w), frames in order
        video = torch.rand(2, 3, 3, 16, 16) * 2 - 1
        z = encode_video(sd, video, chunk=4)
        assert z.shape == (2, 4, 3, 4, 4)
        _close(z[1, :, 2], sd.encode(video[1, 2:3])[0])
        _close(decode_video(sd, z, chunk=5)[0, 1], sd.decode(z[0:1, :, 1])[0])
    with pytest.raises(FileNotFoundError, match="vae"):
        VAECodec.from_folder(tmp_path / "nope")


def test_vae_upcast_decode_half():
    codec = VAECodec(_tiny_vae().to(torch.bfloat16), 0.13025, upcast_decode=True)
    z = torch.randn(1, 4, 4, 4, dtype=torch.bfloat16)
    out = codec.decode(z)
    assert out.dtype == torch.bfloat16 and codec.vae.decoder.conv_in.weight.dtype == torch.float32


def _to_ldm(key: str, n_levels: int) -> str:
    """diffusers -> LDM VAE key (written out by hand from reference §1.6, the inverse direction)."""
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", key)
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
    k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
               lambda m: f"decoder.up.{n_levels - 1 - int(m[1])}.block.{m[2]}.", k)
    k = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
               lambda m: f"decoder.up.{n_levels - 1 - int(m[1])}.upsample.", k)
    k = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", k)
    for a, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        k = k.replace(f".mid_block.attentions.0.{a}.", f".mid.attn_1.{b}.")
    return k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")


def _ldm_state_dict(vae, prefix="first_stage_model."):
    out = {}
    for k, v in vae.state_dict().items():
        lk = _to_ldm(k, len(vae.config.block_out_channels))
        out[prefix + lk] = v[:, :, None, None] if ".attn_1." in lk and lk.endswith("weight") and v.ndim == 2 else v
    return out


def test_ldm_single_file_matches_diffusers_converter(tmp_path):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import save_file

    vae = _tiny_vae()
    ldm = _ldm_state_dict(vae)
    assert "first_stage_model.decoder.up.2.block.0.conv1.weight" in ldm  # reversed decoder levels
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    ours = convert_ldm_vae_state_dict({**ldm, "first_stage_model.loss.logvar": torch.zeros(()),
                                       "model.diffusion_model.conv_in.weight": torch.zeros(1)})
    ref = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert set(ours) == set(ref) == set(vae.state_dict())
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k

    path = tmp_path / "model.safetensors"   # a whole single file: only its first_stage_model.* tensors are read
    save_file({**ldm, "model.diffusion_model.conv_in.weight": torch.zeros(4, 4, 3, 3),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(8)}, str(path))
    codec = vae_codec_from_single_file(path, scaling_factor=0.18215, norm_num_groups=4, sample_posterior=False)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        _close(codec.encode(x), vae.encode(x).latent_dist.mode() * 0.18215)
    with pytest.raises(KeyError, match="unrecognised VAE key"):
        convert_ldm_vae_state_dict({**ldm, "first_stage_model.encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="first_stage_model"):
        vae_codec_from_single_file(tmp_path / "missing.safetensors", 0.18215)


def test_sd_vae_full_size_counts_on_meta():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        ref = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
    ldm = _ldm_state_dict(ref)
    assert len(ldm) == 248  # reference §1.6
    vae = build_vae_from_ldm(ldm)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert vae.config.block_out_channels == (128, 256, 512, 512) or list(vae.config.block_out_channels) == [128, 256, 512, 512]
