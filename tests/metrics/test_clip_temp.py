"""CLIPTemp with a tiny random encoder, the two preprocessings, and the local-weights encoder builders."""
import json

import pytest
import torch
from torch import nn

from i2v.metrics.clip_temp import CLIP_MEAN, CLIP_STD, CLIPTemp, build_clip_encoder, clip_preprocess


class TinyEncoder(nn.Module):
    """Random conv + linear: (N, 3, h, w) -> (N, 16)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 4 * 4, 16)

    def forward(self, x):
        h = nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 4)
        return self.fc(h.flatten(1))


def make_metric(**kw):
    kw.setdefault("preprocess", "none")
    return CLIPTemp(TinyEncoder(), **kw)


def test_identical_frames_give_one_in_image_mode():
    img = torch.rand(2, 3, 24, 24) * 2 - 1
    video = img[:, None].expand(2, 5, 3, 24, 24).contiguous()
    for pre in ("none", "clip", "evalcrafter"):
        m = make_metric(preprocess=pre, size=32)
        vals = m.score(video, img)["clip_temp"]
        assert vals.shape == (2,)
        assert (vals - 1).abs().max().item() < 1e-6


def test_shuffled_noisy_frames_score_lower():
    torch.manual_seed(1)
    img = torch.rand(1, 3, 24, 24) * 2 - 1
    m = make_metric()
    same = img[:, None].expand(1, 6, 3, 24, 24)
    other = torch.rand(1, 6, 3, 24, 24) * 2 - 1
    noisy = (same + 0.5 * torch.randn(same.shape)).clamp(-1, 1)[:, torch.randperm(6)]
    s_same, s_noisy, s_other = (m.score(v, img)["clip_temp"].item() for v in (same, noisy, other))
    assert s_same > s_noisy > s_other


def test_equals_direct_computation_both_modes_and_first_frame_flag():
    enc = TinyEncoder()
    video = torch.rand(2, 4, 3, 20, 20) * 2 - 1
    img = torch.rand(2, 3, 20, 20) * 2 - 1
    with torch.no_grad():
        e = enc(video.flatten(0, 1)).view(2, 4, -1)
        r = enc(img)
    e = e / e.norm(dim=-1, keepdim=True)
    r = r / r.norm(dim=-1, keepdim=True)
    cos_img = torch.stack([torch.stack([torch.dot(r[b], e[b, f]) for f in range(4)]) for b in range(2)])
    cos_con = torch.stack([torch.stack([torch.dot(e[b, f], e[b, f + 1]) for f in range(3)]) for b in range(2)])
    run = lambda **kw: CLIPTemp(enc, preprocess="none", **kw).score(video, img)["clip_temp"]  # noqa: E731
    torch.testing.assert_close(run(mode="image"), cos_img.mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(run(mode="image", include_first_frame=False), cos_img[:, 1:].mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(run(mode="consecutive"), cos_con.mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(run(mode="consecutive", include_first_frame=False), cos_con[:, 1:].mean(1),
                               atol=1e-5, rtol=0)
    m = CLIPTemp(enc, preprocess="none", chunk=3)            # chunked embedding, update/compute over 2 batches
    m.update(video[:1], img[:1])
    m.update(video[1:], img[1:])
    assert m.compute().item() == pytest.approx(cos_img.mean().item(), abs=1e-5)


def test_image_is_resized_to_the_video_and_errors_are_clear():
    m = make_metric()
    video = torch.zeros(1, 3, 3, 16, 16)
    big = torch.zeros(1, 3, 40, 40)
    assert (m.score(video, big)["clip_temp"] - 1).abs().item() < 1e-6
    with pytest.raises(ValueError, match="input images"):
        m.score(video)
    with pytest.raises(ValueError, match=r"\(B, F, 3, H, W\)"):
        m.score(torch.zeros(3, 3, 16, 16), big)
    with pytest.raises(ValueError, match="preprocess"):
        CLIPTemp(TinyEncoder(), preprocess="imagenet")


def test_preprocess_clip_and_evalcrafter_by_hand():
    x = torch.rand(2, 3, 30, 40) * 2 - 1
    y = clip_preprocess(x, "clip", size=20)
    assert y.shape == (2, 3, 20, 20)
    x01 = (x + 1) / 2                                         # short side 30 -> 20, long 40 -> int(26.67) = 26
    r = torch.nn.functional.interpolate(x01, size=(20, 26), mode="bicubic", antialias=True).clamp(0, 1)[..., 3:23]
    ref = (r - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(y, ref)
    z = clip_preprocess(x, "evalcrafter", size=20)
    assert z.shape == (2, 3, 20, 20) and z.max().item() > 2  # raw [0, 255] scale, no normalisation
    assert z.min().item() >= 0 and z.max().item() <= 255
    const = torch.full((1, 3, 30, 40), 0.2)                  # bilinear resize keeps a constant image constant
    assert torch.allclose(clip_preprocess(const, "evalcrafter", 20), torch.full((1, 3, 20, 20), 0.6 * 255))


def test_open_clip_builder_loads_local_file(tmp_path):
    import open_clip

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                          "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}}
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "TinyTest-ViT.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfgs")
    src = open_clip.create_model("TinyTest-ViT", force_quick_gelu=True)
    torch.save(src.state_dict(), tmp_path / "tiny.bin")
    enc = build_clip_encoder("open_clip", str(tmp_path / "tiny.bin"), "TinyTest-ViT", quick_gelu=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), src.eval().encode_image(x))
    m = CLIPTemp(enc, size=32)
    assert m.score(torch.rand(1, 2, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1)["clip_temp"].shape == (1,)


def test_transformers_builder_loads_local_folder(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "vocab_size": 64, "max_position_embeddings": 8},
                     vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
                     projection_dim=8)
    src = CLIPModel(cfg).eval()
    src.save_pretrained(tmp_path / "clip")
    enc = build_clip_encoder("transformers", str(tmp_path / "clip"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = src.get_image_features(pixel_values=x)
        ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
        torch.testing.assert_close(enc(x), ref)


def test_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="clip-vit-base-patch32"):
        build_clip_encoder("open_clip", str(tmp_path / "missing.bin"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_clip_encoder("transformers", str(tmp_path))
    with pytest.raises(ValueError, match="kind"):
        build_clip_encoder("timm", "x")
