import av
import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from PIL import Image

from i2v.diffusion.controlnet import VideoControlNet, load_control_frames
from i2v.diffusion.schedule import NoiseSchedule, make_scheduler
from i2v.models.config import UNetConfig
from i2v.models.unet import VideoUNet, build_video_unet
from i2v.checkpoints.diffusers_config import unet_config_to_diffusers

B, F_, H, W = 2, 3, 8, 8


@pytest.fixture(scope="module")
def tiny_pair():
    """diffusers UNet2DConditionModel + ControlNet (zero convs randomised so residuals are non-zero), and our
    VideoUNet (no motion) with the diffusers weights copied 1:1."""
    torch.manual_seed(0)
    cfg = UNetConfig.toy()
    ref = UNet2DConditionModel(**unet_config_to_diffusers(cfg)).eval()
    cn = ControlNetModel.from_unet(ref, conditioning_embedding_out_channels=(8, 16)).eval()
    with torch.no_grad():
        for name, prm in cn.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                prm.copy_(torch.randn_like(prm) * 0.1)
    ours = VideoUNet(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, cn, ours


def _inputs(seed=1, L=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, F_, H, W, generator=g)
    t = torch.tensor([900, 37])
    ctx = torch.randn(B, L, 64, generator=g)
    control = torch.rand(B, F_, 3, 2 * H, 2 * W, generator=g) * 2 - 1
    return x, t, ctx, control


@torch.no_grad()
def test_matches_diffusers_controlnet_unet(tiny_pair):
    ref, cn, ours = tiny_pair
    x, t, ctx, control = _inputs()
    wrap = VideoControlNet(cn, conditioning_scale=0.7)
    assert wrap.downscale == 2
    down, mid = wrap(x, t, ctx, control)
    assert len(down) == 4 and down[0].shape == (B * F_, 32, H, W) and mid.shape == (B * F_, 64, H // 2, W // 2)
    eps = ours(x, t, ctx, down_residuals=down, mid_residual=mid)
    expected = torch.empty_like(eps)
    for b in range(B):
        for f in range(F_):
            d, m = cn(x[b:b + 1, :, f], t[b:b + 1], ctx[b:b + 1], controlnet_cond=(control[b:b + 1, f] + 1) / 2,
                      conditioning_scale=0.7, return_dict=False)
            expected[b, :, f] = ref(x[b:b + 1, :, f], t[b:b + 1], ctx[b:b + 1], down_block_additional_residuals=d,
                                    mid_block_additional_residual=m).sample[0]
    tol = 1e-4 * max(1.0, expected.abs().max().item())
    assert (eps - expected).abs().max().item() <= tol
    plain = ours(x, t, ctx)
    assert (plain - expected).abs().max().item() > 100 * tol  # the residuals matter
    # scale 0 == no ControlNet
    d0, m0 = VideoControlNet(cn, conditioning_scale=0.0)(x, t, ctx, control)
    torch.testing.assert_close(ours(x, t, ctx, down_residuals=d0, mid_residual=m0), plain)


@torch.no_grad()
def test_text_token_truncation_and_resize(tiny_pair):
    _, cn, _ = tiny_pair
    x, t, ctx, control = _inputs(L=7)
    a = VideoControlNet(cn, num_text_tokens=4)(x, t, ctx, control)
    b = VideoControlNet(cn)(x, t, ctx[:, :4], control)
    for u, v in zip(a[0] + (a[1],), b[0] + (b[1],)):
        assert torch.equal(u, v)
    c = VideoControlNet(cn)(x, t, ctx, control)
    assert not torch.allclose(c[1], b[1])
    # control given at another resolution is resized to latent × downscale
    big = torch.nn.functional.interpolate(control.flatten(0, 1), size=(4 * H, 4 * W), mode="nearest")
    d = VideoControlNet(cn)(x, t, ctx, big.reshape(B, F_, 3, 4 * H, 4 * W))
    assert d[1].shape == c[1].shape
    with pytest.raises(ValueError, match="control"):
        VideoControlNet(cn)(x, t, ctx, control[:, :2])


@torch.no_grad()
def test_from_folder_and_sampling_with_toy_unet(tiny_pair, tmp_path, sampler):
    _, cn, _ = tiny_pair
    cn.save_pretrained(tmp_path / "cn", safe_serialization=True)
    loaded = VideoControlNet.from_folder(tmp_path / "cn", conditioning_scale=0.5)
    for (k, v), (k2, v2) in zip(cn.state_dict().items(), loaded.controlnet.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(FileNotFoundError, match="config.json"):
        VideoControlNet.from_folder(tmp_path / "missing")
    torch.manual_seed(0)
    unet = build_video_unet("toy", motion="v2").eval()
    first = torch.randn(1, 4, H, W)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    ctx, unc = torch.randn(1, 5, 64), torch.zeros(1, 5, 64)
    control = torch.rand(1, F_, 3, 2 * H, 2 * W) * 2 - 1
    kw = dict(scheduler=make_scheduler("ddim", NoiseSchedule()), steps=2, cfg=5.0, num_frames=F_, t0=1.0, p=0.5,
              progress=False)
    out = sampler(unet, first, ctx, unc, generator=g(), controlnet=loaded, control=control, **kw)
    plain = sampler(unet, first, ctx, unc, generator=g(), **kw)
    assert torch.equal(out["latents"][:, :, 0], first) and out["nfe"] == 2
    assert (out["latents"] - plain["latents"]).abs().max() > 1e-4


def _frame(i, size=(12, 16)):
    arr = np.zeros((*size, 3), dtype=np.uint8)
    arr[..., 0] = 20 * i
    arr[..., 1] = 255 - 20 * i
    return arr


def test_load_frames_from_folder(tmp_path):
    for i in range(12):  # natural order: frame_2 before frame_10
        Image.fromarray(_frame(i)).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    frames = load_control_frames(tmp_path, 4, (8, 10), stride=3)
    assert frames.shape == (4, 3, 8, 10) and frames.min() >= -1 and frames.max() <= 1
    red = ((frames[:, 0].mean((1, 2)) + 1) / 2 * 255).round().tolist()
    assert red == [0.0, 60.0, 120.0, 180.0]  # frames 0, 3, 6, 9
    with pytest.raises(ValueError, match="usable frames"):
        load_control_frames(tmp_path, 13, (8, 10))
    with pytest.raises(FileNotFoundError):
        load_control_frames(tmp_path / "nope", 2, (8, 8))


def test_load_frames_from_video(tmp_path):
    path = tmp_path / "pose.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(6):
            arr = np.full((32, 32, 3), 40 * i, dtype=np.uint8)
            for pkt in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    frames = load_control_frames(path, 5, (16, 16))
    assert frames.shape == (5, 3, 16, 16)
    grey = ((frames.mean((1, 2, 3)) + 1) / 2 * 255).tolist()
    assert all(abs(g - 40 * i) < 12 for i, g in enumerate(grey))  # lossy codec
    with pytest.raises(ValueError, match="usable frames"):
        load_control_frames(path, 7, (16, 16))
