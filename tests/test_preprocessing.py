"""The official pre-processing options: ``resize=fit`` (short side to the target, sides at multiples of 64, no
crop), the ``official`` negative-prompt preset and the colour-match reference (input vs decoded frame 0)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from i2v.diffusion.color import color_match, color_match_video, rgb_to_lab
from i2v.diffusion.guidance import negative_prompt
from i2v.utils.io import fit_size, load_image


def _write(path, h, w):
    """Colour ramps plus a marker pixel block in each corner, so a crop would be visible."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full((h, w), 90)], -1).astype(np.uint8)
    for r, c in ((0, 0), (0, w - 8), (h - 8, 0), (h - 8, w - 8)):
        arr[r:r + 8, c:c + 8] = 255
    Image.fromarray(arr).save(path)
    return arr


def test_fit_keeps_the_whole_3_by_2_image_at_multiples_of_64(tmp_path):
    _write(tmp_path / "wide.png", 300, 450)                           # 3:2, landscape
    fit = load_image(tmp_path / "wide.png", size=(512, 512), resize="fit")
    assert fit.shape == (3, 512, 768)                                 # short side 512, long side 768 = 12 x 64
    crop = load_image(tmp_path / "wide.png", size=(512, 512))
    assert crop.shape == (3, 512, 512)
    # the corners survive with fit (white markers), while the centre crop cuts the left/right ones away
    for img, kept in ((fit, True), (crop, False)):
        assert (img[:, :6, :6].min().item() > 0.9) == kept            # top-left marker
        assert (img[:, -6:, -6:].min().item() > 0.9) == kept          # bottom-right marker
    # the official rounding: each side to the nearest multiple of 64 after scaling the short side
    assert fit_size(300, 450, 512) == (512, 768)
    assert fit_size(720, 1280, 512) == (512, 896)                      # 910.2 -> 896
    assert fit_size(1000, 700, 256) == (384, 256)                      # 365.7 -> 384 (portrait)
    assert fit_size(10, 10, 20) == (64, 64)
    with pytest.raises(ValueError, match="resize must be one of"):
        load_image(tmp_path / "wide.png", size=(64, 64), resize="pad")


def test_official_negative_prompt_preset():
    assert negative_prompt("official").startswith("worst quality, low quality") and "moles" in negative_prompt(
        "official")
    assert negative_prompt("blurry") == "blurry" and negative_prompt(None) == "" and negative_prompt("") == ""


def test_color_match_reference_switch():
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(3, 16, 16, generator=g) * 2 - 1) * 0.8
    decoded0 = (image + torch.tensor([0.3, -0.1, 0.05])[:, None, None]).clamp(-1, 1)   # VAE tint on frame 0
    video = torch.stack([decoded0, decoded0.flip(-1) - 0.1, decoded0.flip(-2)]).clamp(-1, 1)
    official = color_match(video, image, reference="decoded_frame0")
    assert torch.equal(official[0], video[0])                          # frame 0 stays as decoded
    assert torch.allclose(official, color_match_video(video[None])[0])
    to_input = color_match(video, image, reference="input")
    assert torch.allclose(to_input, color_match_video(video[None], image[None])[0])
    a = lambda x: rgb_to_lab((x + 1) / 2)[1].flatten().sort().values  # noqa: E731
    # frames follow their reference's a-channel histogram, and the two references differ
    assert (a(official[1]) - a(video[0])).abs().mean() < (a(official[1]) - a(image)).abs().mean()
    assert (a(to_input[1]) - a(image)).abs().mean() < (a(to_input[1]) - a(video[0])).abs().mean()
    with pytest.raises(ValueError, match="reference must be one of"):
        color_match(video, image, reference="frame0")


def test_color_match_settings_from_the_sampling_config():
    from omegaconf import OmegaConf

    from i2v.pipeline.sampling import color_match_settings

    def settings(post):
        return color_match_settings(OmegaConf.create({"post": post}))

    assert settings({"color_match": {"enabled": False, "reference": "decoded_frame0"}}) is None
    assert settings({"color_match": {"enabled": True, "reference": "decoded_frame0", "channels": "ab"}}) == \
        {"reference": "decoded_frame0", "channels": "ab"}
    assert settings({"color_match": True}) == {"reference": "input", "channels": "ab"}    # older configs: a bool
    assert settings({"color_match": False}) is None and settings({}) is None


@pytest.mark.parametrize("orientation,upright", [(6, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180),
                                                  (8, Image.Transpose.ROTATE_90)])
def test_exif_orientation_is_applied(tmp_path, capsys, orientation, upright):
    """A phone photo stores the sensor's pixels and an EXIF Orientation tag; the image is read as viewers show it."""
    rng = np.random.default_rng(0)
    pixels = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    exif = pixels.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.png"
    pixels.save(path, exif=exif)
    want = np.asarray(pixels.transpose(upright), dtype=np.float32) / 127.5 - 1.0
    got = load_image(path).permute(1, 2, 0).numpy()
    assert got.shape == want.shape and np.array_equal(got, want)
    assert f"EXIF orientation {orientation}" in capsys.readouterr().out
    pixels.save(tmp_path / "plain.png")                        # no tag: untouched, no note
    assert load_image(tmp_path / "plain.png").shape == (3, 40, 60) and "EXIF" not in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_laid_on_white(tmp_path, capsys, mode):
    """A cut-out PNG stores arbitrary colours (here black) under its transparent pixels: they read as white, a
    half-transparent pixel as the blend of its colour and white, opaque pixels as they are."""
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)         # transparent black
    rgba[:4, :, :] = (200, 30, 60, 255)                # opaque
    rgba[4:6, :, :] = (0, 0, 0, 128)                   # half-transparent black
    img = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":     # a palette image with one transparent index, as GIF-like PNGs store it
        img = Image.fromarray(rgba[..., :3]).quantize(4)
        img.info["transparency"] = img.getpixel((7, 7))
        rgba[4:6, :, 3] = 0                            # a palette marks whole colours transparent, not halves
    path = tmp_path / "cutout.png"
    img.save(path, transparency=img.info["transparency"]) if mode == "P" else img.save(path)
    got = (load_image(path).permute(1, 2, 0).numpy() + 1.0) * 127.5
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    colour = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., :3]
    want = colour * alpha + 255.0 * (1.0 - alpha)
    assert np.abs(got - want).max() <= 1.0, np.abs(got - want).max()
    assert got[7, 7].min() >= 254.0                    # the transparent corner: white, not the stored black
    assert "transparent pixels laid on white" in capsys.readouterr().out
