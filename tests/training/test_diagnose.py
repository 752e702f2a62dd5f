"""The learning diagnostic (i2v/training/diagnose.py): the network-free predictors are the closed forms, the
adapter is switched on/off and restored, and the numbers react to what the adapter holds."""
import math

import pytest
import torch

from i2v.toy.build import random_toy_bundle
from i2v.data.synthetic import SyntheticVideos
from i2v.training.diagnose import PREDICTORS, eps_loss_by_timestep, findings, format_table


@pytest.fixture(scope="module")
def clips():
    data = SyntheticVideos(3, num_frames=4, size=32, seed=5)
    items = [data[i] for i in range(3)]
    return torch.stack([it["video"] for it in items]), [it["text"] for it in items]


def test_network_free_predictors_are_the_closed_forms(clips):
    videos, texts = clips
    bundle = random_toy_bundle(for_training=False)
    table = eps_loss_by_timestep(bundle, videos, texts, timesteps=[300, 900], seed=3, batch_size=2)
    for t in (300, 900):
        # recompute with the documented noise: clip n at t uses seed * 1_000_003 + t * 1009 + batch start
        z = bundle.encode_video(videos)
        abar = float(bundle.schedule.alphas_cumprod[t])
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        copy, zero, copy_mean = [], [], []
        for start in (0, 2):
            zz = z[start:start + 2]
            eps = torch.randn(zz.shape, generator=torch.Generator().manual_seed(3 * 1_000_003 + t * 1009 + start))
            zt = a * zz + s * eps
            zt[:, :, 0] = zz[:, :, 0]
            err = ((zt - a * zz[:, :, :1]) / s - eps)[:, :, 1:]
            copy.append(err.pow(2).flatten(1).mean(1))
            copy_mean.append(err.mean(dim=(-2, -1)).pow(2).flatten(1).mean(1))
            zero.append((zt / s - eps)[:, :, 1:].pow(2).flatten(1).mean(1))
        assert table[t]["copy_frame1"] == pytest.approx(float(torch.cat(copy).mean()), rel=1e-5)
        assert table[t]["signal_zero"] == pytest.approx(float(torch.cat(zero).mean()), rel=1e-5)
        # the per-frame-mean part: each frame's spatial mean of the error, squared; a part of the total
        assert table[t]["copy_frame1_frame_mean"] == pytest.approx(float(torch.cat(copy_mean).mean()), rel=1e-5)
        for name in PREDICTORS:
            if not math.isnan(table[t][name]):
                assert 0 <= table[t][f"{name}_frame_mean"] <= table[t][name]
    # static scenes would make "copy frame 1" exact; moving ones do not, and the gap grows as t falls
    assert table[300]["copy_frame1"] > table[900]["copy_frame1"] > 0


def test_adapter_on_off_and_state_restored(clips):
    from i2v.models.adapters import i2v_adapter_layers

    videos, texts = clips
    bundle = random_toy_bundle(for_training=False)
    same = eps_loss_by_timestep(bundle, videos, texts, timesteps=[700])
    assert same[700]["adapter_on"] == pytest.approx(same[700]["adapter_off"], rel=1e-6)  # W'_O = 0 at init
    with torch.no_grad():
        for p in bundle.trainable.values():
            p.add_(torch.randn_like(p) * 0.3)
    layers = i2v_adapter_layers(bundle.unet)
    layers[0][1].processor.enabled = False               # a mixed state must come back as it was
    table = eps_loss_by_timestep(bundle, videos, texts, timesteps=[700])
    assert table[700]["adapter_on"] != pytest.approx(table[700]["adapter_off"], rel=1e-3)
    assert [a.processor.enabled for _, a in layers] == [False] + [True] * (len(layers) - 1)
    assert set(table[700]) == set(PREDICTORS) | {f"{k}_frame_mean" for k in PREDICTORS}
    assert "| 700 |" in format_table(table)


def test_without_adapter_only_the_base_is_measured(clips):
    videos, texts = clips
    bundle = random_toy_bundle(i2v=False, for_training=False)
    table = eps_loss_by_timestep(bundle, videos, texts, timesteps=[500])
    assert math.isnan(table[500]["adapter_on"]) and table[500]["adapter_off"] > 0
    assert any("no I2V-Adapter" in line for line in findings(table))


def test_bad_arguments(clips):
    videos, texts = clips
    bundle = random_toy_bundle(for_training=False)
    with pytest.raises(ValueError, match="outside"):
        eps_loss_by_timestep(bundle, videos, texts, timesteps=[1000])
    with pytest.raises(ValueError, match="one caption each"):
        eps_loss_by_timestep(bundle, videos, texts[:2])


def test_frame_mean_finding_names_the_drift():
    row = {"adapter_on": 1.0, "adapter_off": 1.0, "copy_frame1": 0.5, "signal_zero": 2.0, "static_oracle": 1.0,
           "adapter_on_frame_mean": 0.4, "adapter_off_frame_mean": 0.4}
    assert any("each frame's mean" in line for line in findings({950: row}))
    row = {**row, "adapter_off_frame_mean": 0.1}
    assert not any("each frame's mean" in line for line in findings({950: row}))


def test_oracle_finding_reports_the_room_frame1_leaves():
    row = {"adapter_on": 0.95, "adapter_off": 1.0, "copy_frame1": 2.0, "signal_zero": 3.0, "static_oracle": 0.3,
           "adapter_on_frame_mean": 0.0, "adapter_off_frame_mean": 0.0}
    lines = [line for line in findings({800: row}) if "frame 1 holds more" in line]
    assert lines and "t=800: 0.30 (adapter 0.95)" in lines[0]
    assert not any("frame 1 holds more" in line for line in findings({800: {**row, "static_oracle": 0.95}}))


def test_findings_name_where_the_adapter_hurts_and_where_it_is_gated_off():
    def row(on):
        return {"adapter_on": on, "adapter_off": 1.0, "copy_frame1": 2.0, "signal_zero": 3.0, "static_oracle": 1.0,
                "adapter_on_frame_mean": 0.0, "adapter_off_frame_mean": 0.0}
    table = {200: row(1.0), 500: row(1.3), 800: row(0.95), 950: row(0.5)}
    lines = findings(table)
    assert any("adds loss" in line and "t=[500]" in line for line in lines)
    assert any("barely helps" in line and "t=[200, 800]" in line for line in lines)     # 500 is told apart
    gated = findings(table, min_t=700)
    assert any("branch off at t=[200, 500]" in line for line in gated)
    assert not any("adds loss" in line for line in gated)
    assert any("barely helps" in line and "t=[800]" in line for line in gated)


def test_attention_focus_measures_sharpness(clips):
    """Uniform attention reads entropy 1 and "x1" at the own/same position; scaling queries and keys up sharpens
    the base's rows (entropy falls); a zeroed adapter query attends uniformly to frame 1."""
    from i2v.models.adapters import i2v_adapter_layers
    from i2v.models.attention import spatial_attention_layers
    from i2v.training.attention_focus import attention_focus, focus_findings, format_focus

    videos, texts = clips
    bundle = random_toy_bundle(for_training=False)
    layers = [a for _, a in i2v_adapter_layers(bundle.unet)]
    with torch.no_grad():
        for a in layers:
            a.to_q_ff.weight.zero_()
    base = attention_focus(bundle, videos, texts, t=500)
    assert set(base) == {n for n, _ in spatial_attention_layers(bundle.unet, "attn1")}
    for row in base.values():
        assert 0.0 <= row["self_entropy"] <= 1.0
        assert row["cross_entropy"] == pytest.approx(1.0, abs=1e-6)
        assert row["cross_same_place"] == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        for _, a in spatial_attention_layers(bundle.unet, "attn1"):
            a.to_q.weight.mul_(30.0)
            a.to_k.weight.mul_(30.0)
    sharp = attention_focus(bundle, videos, texts, t=500)
    for name in base:
        assert sharp[name]["self_entropy"] < base[name]["self_entropy"] - 0.2, (name, base[name], sharp[name])
    assert "| attn1 layer |" in format_focus(base)
    flat = {n: dict(r, self_entropy=0.99) for n, r in base.items()}
    assert focus_findings(flat) and "close to uniform" in focus_findings(flat)[0]
    assert focus_findings({n: dict(r, self_entropy=0.3) for n, r in base.items()}) == []


def test_v_prediction_output_is_scored_as_the_eps_it_stands_for(clips):
    """The table is ε-MSE for every backbone: a v-predictor's output goes through ``schedule.to_eps``. A network
    that outputs zeros stands for ε̂ = σ_t z_t under v-prediction (≈ ε at t = 950: tiny error) but for ε̂ = 0 under
    ε-prediction (error ≈ E[ε²] = 1)."""
    videos, texts = clips
    rows = {}
    for kind in ("epsilon", "v_prediction"):
        bundle = random_toy_bundle(for_training=False, prediction_type=kind)
        with torch.no_grad():
            bundle.unet.conv_out.weight.zero_()
            bundle.unet.conv_out.bias.zero_()
        rows[kind] = eps_loss_by_timestep(bundle, videos, texts, timesteps=[950])[950]["adapter_off"]
    assert rows["epsilon"] == pytest.approx(1.0, abs=0.1)
    assert rows["v_prediction"] < 0.05


def test_attention_probes_zero_and_cross_frame(clips):
    """``attn_zero`` equals a forward pass with every attn1 output zeroed; ``cross_frame`` one where every frame's
    attn1 reads frame 1's keys/values (written out here with the base's own projections); processors restored."""
    from einops import rearrange

    from i2v.models.attention import spatial_attention_layers
    from i2v.training.diagnose import format_probes, probe_findings
    from i2v.training.module import first_frame_clean_noising

    videos, texts = clips
    bundle = random_toy_bundle(i2v=False, for_training=False)
    table = eps_loss_by_timestep(bundle, videos[:2], texts[:2], timesteps=[600], seed=1, probes=True)
    row = table[600]
    layers = [a for _, a in spatial_attention_layers(bundle.unet, "attn1")]
    assert all(a.processor is None for a in layers)
    z = bundle.encode_video(videos[:2])
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(1 * 1_000_003 + 600 * 1009))
    tt = torch.full((2,), 600, dtype=torch.long)
    zt = first_frame_clean_noising(z, eps, tt, bundle.schedule)
    ctx = bundle.condition(texts[:2], videos[:2, 0], hw=(32, 32))["context"]

    def by_hand(proc):
        for a in layers:
            a.processor = proc
        try:
            with torch.no_grad():
                out = bundle.unet(zt, tt, ctx)
        finally:
            for a in layers:
                a.processor = None
        return float((out - eps)[:, :, 1:].pow(2).mean())

    def cross(attn, x, context=None, num_frames=None):
        f = num_frames
        x1 = rearrange(x, "(b f) t c -> b f t c", f=f)[:, :1].expand(-1, f, -1, -1).reshape(x.shape)
        return attn.project_out(attn.attend(attn.to_q(x), attn.to_k(x1), attn.to_v(x1)))

    assert row["attn_zero"] == pytest.approx(by_hand(lambda attn, x, **kw: torch.zeros_like(x)), rel=1e-5)
    assert row["cross_frame"] == pytest.approx(by_hand(cross), rel=1e-5)
    zt = bundle.schedule.add_noise(z, eps, tt)                     # frame 1 noised like the others
    assert row["cross_frame_noisy"] == pytest.approx(by_hand(cross), rel=1e-5)
    assert len({row["adapter_off"], row["attn_zero"], row["cross_frame"], row["cross_frame_noisy"]}) == 4
    assert "| 600 |" in format_probes(table)
    idle = {800: {"adapter_off": 1.0, "attn_zero": 1.02, "cross_frame": 3.0, "cross_frame_noisy": 1.0}}
    lines = probe_findings(idle)
    assert len(lines) == 2 and "does not use" in lines[0] and "3.0x" in lines[1] and "clean frame" in lines[1]
    lines = probe_findings({800: dict(idle[800], cross_frame_noisy=3.0)})
    assert "clean frame" not in lines[1]
    assert probe_findings({800: {"adapter_off": 1.0, "attn_zero": 2.0, "cross_frame": 1.1,
                                 "cross_frame_noisy": 1.0}}) == []
    assert "attn_zero" not in eps_loss_by_timestep(bundle, videos[:1], texts[:1], timesteps=[600])[600]


def test_static_oracle_copies_frame1_only_where_nothing_changed():
    """On a clip whose frames all equal frame 1 the oracle is "copy frame 1" (exact: zero error); on a clip where
    every element changes it is the base; on a half-static clip it mixes the two element by element."""
    bundle = random_toy_bundle(for_training=False)
    data = SyntheticVideos(2, num_frames=4, size=32, seed=11)
    moving = torch.stack([data[i]["video"] for i in range(2)])
    frozen = moving[:, :1].expand_as(moving).clone()                      # every frame = frame 1
    changed = moving.clone()                                              # every later latent element differs
    changed[:, 1:] += 0.1 + 0.2 * torch.rand(changed[:, 1:].shape, generator=torch.Generator().manual_seed(0))
    texts = [data[i]["text"] for i in range(2)]
    t = 800
    st = eps_loss_by_timestep(bundle, frozen, texts, timesteps=[t])[t]
    assert st["static_oracle"] == pytest.approx(0.0, abs=1e-10) and st["copy_frame1"] == pytest.approx(0.0, abs=1e-10)
    assert st["adapter_off"] > 1e-4
    ch = eps_loss_by_timestep(bundle, changed, texts, timesteps=[t], static_tol=0.0)[t]   # exact equality only
    assert ch["static_oracle"] == pytest.approx(ch["adapter_off"], rel=1e-6)
    # half static: the right half of every later frame replaced, the left half kept (the codec is 2x2 patches)
    half = frozen.clone()
    half[:, 1:, :, :, 16:] = changed[:, 1:, :, :, 16:]
    hf = eps_loss_by_timestep(bundle, half, texts, timesteps=[t], static_tol=0.0)[t]
    z = bundle.encode_video(half)
    abar = float(bundle.schedule.alphas_cumprod[t])
    # recompute the base on this input with the documented noise and mix by the same mask
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(0 * 1_000_003 + t * 1009 + 0))
    zt = math.sqrt(abar) * z + math.sqrt(1 - abar) * eps
    zt[:, :, 0] = z[:, :, 0]
    cond = bundle.condition(texts, half[:, 0], hw=(32, 32))
    tt = torch.full((2,), t)
    with torch.no_grad():
        base = bundle.schedule.to_eps(bundle.unet(zt, tt, cond["context"]), zt, tt)
    copy = (zt - math.sqrt(abar) * z[:, :, :1]) / math.sqrt(1 - abar)
    static = torch.zeros_like(z, dtype=torch.bool)
    static[..., :8] = True                                                 # left half of the 16-wide latent
    want = (torch.where(static, copy, base) - eps)[:, :, 1:].pow(2).flatten(1).mean(1).mean()
    assert hf["static_oracle"] == pytest.approx(float(want), rel=1e-4)
    assert 0 < hf["static_oracle"] < hf["adapter_off"]


def test_swap_directions_replaces_whole_direction_words_only():
    from i2v.training.caption_probe import swap_directions

    assert swap_directions("a red circle moving left on a blue background") == \
        "a red circle moving right on a blue background"
    assert swap_directions("a cyan square moving down and a red circle moving up") == \
        "a cyan square moving up and a red circle moving down"
    assert swap_directions("Left, then RIGHT") == "Right, then Left"
    assert swap_directions("a boat drifting upward past the downtown") is None      # not whole words
    assert swap_directions("") is None


def test_caption_probe_scores_own_empty_and_swapped_captions(clips):
    """``caption`` is the diagnostic's 'adapter on' on the same noise; the empty and the direction-swapped captions
    change a random toy model's loss (its text encoder tells the words apart); captions without a direction word
    leave the swap column empty."""
    from i2v.training.caption_probe import caption_findings, caption_probe, format_captions

    videos, texts = clips
    assert all("moving" in t for t in texts)
    bundle = random_toy_bundle(for_training=False)
    with torch.no_grad():
        for p in bundle.trainable.values():
            p.add_(torch.randn_like(p) * 0.3)       # W'_O non-zero: 'adapter on' differs from 'adapter off'
    table = caption_probe(bundle, videos, texts, timesteps=[300, 900], seed=3, batch_size=2)
    ref = eps_loss_by_timestep(bundle, videos, texts, timesteps=[300, 900], seed=3, batch_size=2)
    for t in (300, 900):
        row = table[t]
        assert row["caption"] == pytest.approx(ref[t]["adapter_on"], rel=1e-6)
        assert row["caption"] != pytest.approx(ref[t]["adapter_off"], rel=1e-4)
        assert row["n_direction"] == 3 and row["caption_direction"] == pytest.approx(row["caption"], rel=1e-6)
        assert row["no_caption"] != pytest.approx(row["caption"], rel=1e-5)
        assert row["swapped"] != pytest.approx(row["caption"], rel=1e-5)
    assert "| 900 |" in format_captions(table) and "(3 clips)" in format_captions(table)
    plain = caption_probe(bundle, videos, ["a red circle"] * 3, timesteps=[500], seed=3)
    assert plain[500]["n_direction"] == 0 and math.isnan(plain[500]["swapped"])
    assert "no caption names a direction" in format_captions(plain)
    assert not any("direction words" in line for line in caption_findings(plain))


def _probe_by_hand(bundle, videos, seed: int, t: int):
    """``per_clip(captions, drop_image=False)``: each clip's ε-MSE on frames 2..F at ``t``, frame 1 clean, on the
    noise the probe documents (a function of seed, t and the batch start, 0 here), written out independently."""
    from i2v.training.module import first_frame_clean_noising

    n = videos.shape[0]
    with torch.no_grad():
        z = bundle.encode_video(videos, generator=torch.Generator().manual_seed(seed))
        eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + t * 1009 + 0))
        tt = torch.full((n,), t, dtype=torch.long)
        z_t = first_frame_clean_noising(z, eps, tt, bundle.schedule)

    @torch.no_grad()
    def per_clip(captions, drop_image: bool = False):
        cond = bundle.condition(captions, videos[:, 0], drop_image=torch.full((n,), drop_image),
                                hw=tuple(videos.shape[-2:]))
        out = bundle.schedule.to_eps(bundle.unet(z_t, tt, cond["context"]), z_t, tt)
        return (out - eps)[:, :, 1:].pow(2).flatten(1).mean(1)
    return per_clip


def test_caption_probe_swaps_only_the_clips_with_a_direction(clips):
    """Mixed captions: the swap and its reference cover the clips whose caption has a direction word only, each
    clip scored on the documented noise (recomputed here clip by clip)."""
    from i2v.training.caption_probe import caption_probe, swap_directions

    videos, texts = clips
    bundle = random_toy_bundle(for_training=False)
    mixed = [texts[0], "a red circle", texts[2]]
    table = caption_probe(bundle, videos, mixed, timesteps=[600], seed=1, batch_size=3)[600]
    per_clip = _probe_by_hand(bundle, videos, seed=1, t=600)
    own = per_clip(mixed)
    swapped = per_clip([swap_directions(c) or c for c in mixed])
    assert table["n_direction"] == 2
    assert table["caption"] == pytest.approx(float(own.mean()), rel=1e-5)
    assert table["caption_direction"] == pytest.approx(float(own[[0, 2]].mean()), rel=1e-5)
    assert table["swapped"] == pytest.approx(float(swapped[[0, 2]].mean()), rel=1e-5)


def test_caption_findings_name_an_ignored_caption_and_ignored_directions():
    from i2v.training.caption_probe import caption_findings

    def row(no_caption, swapped, n=8):
        return {"caption": 1.0, "no_caption": no_caption, "caption_direction": 1.0, "swapped": swapped,
                "n_direction": n}
    blind = caption_findings({500: row(1.03, 1.0001), 950: row(1.02, 0.9999)})
    assert len(blind) == 1 and "direction words" in blind[0] and "0.01%" in blind[0]
    assert not caption_findings({500: row(1.03, 1.0001), 950: row(1.02, 1.02)})   # it does react at t = 950
    deaf = caption_findings({500: row(1.001, 1.0), 950: row(0.999, 1.0)})
    assert any("does not use its text" in line for line in deaf)
    assert not caption_findings({500: row(1.03, 1.0, n=0)})


def test_caption_probe_drops_the_content_adapters_image(clips):
    """With a Content-Adapter the probe also scores the own caption and the empty caption with the image prompt
    dropped (recomputed here through ``Bundle.condition(drop_image=...)`` on the documented noise); a random toy
    Content-Adapter changes the loss; without one the image columns are NaN and not printed."""
    from i2v.training.caption_probe import caption_probe, format_captions

    videos, texts = clips
    bundle = random_toy_bundle(for_training=False)
    assert bundle.content_enabled
    row = caption_probe(bundle, videos, texts, timesteps=[700], seed=2, batch_size=3)[700]
    per_clip = _probe_by_hand(bundle, videos, seed=2, t=700)
    want = {"caption": per_clip(texts), "no_image": per_clip(texts, drop_image=True),
            "no_caption": per_clip([""] * 3), "no_caption_no_image": per_clip([""] * 3, drop_image=True)}
    want = {k: float(v.mean()) for k, v in want.items()}
    for k, v in want.items():
        assert row[k] == pytest.approx(v, rel=1e-5), k
    assert row["no_image"] != pytest.approx(row["caption"], rel=1e-4)
    assert row["no_caption_no_image"] != pytest.approx(row["no_caption"], rel=1e-4)
    assert "image dropped" in format_captions({700: row})

    plain = random_toy_bundle(content=False, for_training=False)
    row = caption_probe(plain, videos, texts, timesteps=[700], seed=2)[700]
    assert math.isnan(row["no_image"]) and math.isnan(row["no_caption_no_image"])
    assert "image dropped" not in format_captions({700: row})


def test_caption_findings_name_a_content_adapter_that_ignores_its_image():
    """The line appears when dropping the image moves the loss by less than ``image_tol`` at every t, beside the
    caption and without it; one t where it matters (either way) keeps it out; no image columns, no line."""
    from i2v.training.caption_probe import caption_findings

    def table(no_image, no_cap_no_image):
        return {t: {"caption": 1.0, "no_caption": 1.2, "n_direction": 0, "caption_direction": float("nan"),
                    "swapped": float("nan"), "no_image": a, "no_caption_no_image": b}
                for t, a, b in zip((200, 800), no_image, no_cap_no_image)}

    def says(tab):
        return any("does not read its image" in line for line in caption_findings(tab))
    assert says(table((1.004, 0.996), (1.2 * 1.008, 1.2 * 0.995)))
    assert not says(table((1.004, 1.03), (1.2, 1.2)))                 # beside the caption at t = 800
    assert not says(table((1.0, 1.0), (1.2, 1.2 * 1.05)))             # without the caption at t = 800
    assert not says(table((1.0, 1.0), (1.2 * 0.97, 1.2)))             # dropping it helps: it is read (wrongly)
    assert not says(table((float("nan"),) * 2, (float("nan"),) * 2))


@pytest.mark.parametrize("ckpt", ["ckpt=none", "ckpt=null"])
def test_script_says_how_to_measure_the_base_alone(ckpt):
    """`ckpt=none` is what a user types for "the base without an adapter"; with an adapter config that has an
    I2V-Adapter the script says which adapter configs measure that instead of looking for a file called "none"."""
    from script_loader import load_script

    script = load_script("diagnose_adapter")
    with pytest.raises(ValueError, match=r"adapter=none \(the base alone\) or adapter=no_i2v"):
        script.main(["experiment=toy", ckpt, "n_clips=2", "timesteps=[950]", "probes=false", "captions=false"])
