"""First-frame-clean training (paper §3.2 / §4.1): noising, loss masking, freezing, one optimiser step."""
import pytest
import torch

from i2v.toy.build import random_toy_bundle
from i2v.training.module import I2VAdapterModule, first_frame_clean_noising, masked_frame_loss

OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": 1.0}
TRAIN = {"text_drop_prob": 0.1, "image_drop_prob": 0.1, "max_nonfinite_in_a_row": 3}


def _batch(b=2, f=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(b, f, 3, 32, 32, generator=g) * 2 - 1,
            "text": ["a red circle moving left on a blue background"] * b}


@pytest.fixture(scope="module")
def module():
    return I2VAdapterModule(random_toy_bundle(seed=0), OPTIM, TRAIN, config={"seed": 0})


def test_noisy_input_keeps_frame0_exactly_clean(module):
    out = module.compute_loss(_batch(), generator=torch.Generator().manual_seed(1))
    z, z_t, t = out["z"], out["z_t"], out["t"]
    assert torch.equal(z_t[:, :, 0], z[:, :, 0])
    # every other frame is noised with its video's timestep
    alpha, sigma = module.bundle.schedule.alpha_sigma(t)
    expect = alpha.view(-1, 1, 1, 1, 1) * z[:, :, 1:] + sigma.view(-1, 1, 1, 1, 1) * out["eps"][:, :, 1:]
    torch.testing.assert_close(z_t[:, :, 1:], expect, rtol=1e-5, atol=1e-5)
    assert not torch.equal(z_t[:, :, 1:], z[:, :, 1:])


def test_first_frame_clean_noising_sets_frame0_after_noising():
    from i2v.diffusion.schedule import NoiseSchedule

    sch = NoiseSchedule()
    z, eps = torch.randn(2, 4, 5, 3, 3), torch.randn(2, 4, 5, 3, 3)
    t = torch.tensor([999, 10])
    z_t = first_frame_clean_noising(z, eps, t, sch)
    assert torch.equal(z_t[:, :, 0], z[:, :, 0])
    assert torch.equal(z_t[:, :, 1:], sch.add_noise(z, eps, t)[:, :, 1:])


def test_loss_ignores_frame0_prediction():
    eps = torch.randn(2, 4, 5, 3, 3)
    eps_hat = torch.randn(2, 4, 5, 3, 3, requires_grad=True)
    loss = masked_frame_loss(eps_hat, eps)
    loss.backward()
    assert torch.count_nonzero(eps_hat.grad[:, :, 0]) == 0
    assert torch.count_nonzero(eps_hat.grad[:, :, 1:]) == eps_hat.grad[:, :, 1:].numel()
    # value: plain MSE over frames 1..F-1
    torch.testing.assert_close(loss, ((eps_hat[:, :, 1:] - eps[:, :, 1:]) ** 2).mean())
    # changing the frame-0 prediction does not change the loss
    with torch.no_grad():
        eps_hat2 = eps_hat.clone()
        eps_hat2[:, :, 0] += 100.0
    assert torch.equal(masked_frame_loss(eps_hat2, eps), loss.detach())


def test_only_adapter_is_trainable_and_counted(module, capsys):
    names = {n for n, p in module.bundle.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(("to_q_ff.weight", "to_out_ff.weight", "to_out_ff.bias")) for n in names)
    assert len(names) == len(module.bundle.trainable)


def test_one_optimizer_step_changes_only_adapter_tensors():
    bundle = random_toy_bundle(seed=3)
    mod = I2VAdapterModule(bundle, OPTIM, TRAIN, config={"seed": 3})
    before = {k: v.clone() for k, v in bundle.state_dict().items()}
    opt = mod.configure_optimizers()
    loss = mod.compute_loss(_batch(seed=4), generator=torch.Generator().manual_seed(5))["loss"]
    loss.backward()
    opt.step()
    after = bundle.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapter = {f"unet.{k}" for k in bundle.trainable}
    assert changed, "the optimiser step changed nothing"
    assert changed <= adapter, f"frozen tensors changed: {sorted(changed - adapter)[:5]}"
    # W'_O is zero at init, so only W'_O (and its bias) receive gradient on the first step
    assert any(k.endswith("to_out_ff.weight") for k in changed)


def test_frozen_tensor_marked_trainable_is_rejected():
    bundle = random_toy_bundle(seed=0)
    bundle.unet.conv_in.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="only the I2V-Adapter may be trainable"):
        I2VAdapterModule(bundle, OPTIM, TRAIN)


def test_nonfinite_loss_skips_then_stops(module, monkeypatch):
    mod = I2VAdapterModule(random_toy_bundle(seed=1), OPTIM, dict(TRAIN, max_nonfinite_in_a_row=2), config={})
    monkeypatch.setattr(mod, "compute_loss", lambda batch, generator=None: {"loss": torch.tensor(float("nan"))})
    monkeypatch.setattr(mod, "log", lambda *a, **k: None)
    assert mod.training_step(_batch(), 0) is None
    assert mod.skipped_steps == 1
    with pytest.raises(RuntimeError, match="NaN/Inf for 2 steps in a row"):
        mod.training_step(_batch(), 1)


def test_no_trainable_adapter_refuses_to_configure_optimizer():
    mod = I2VAdapterModule(random_toy_bundle(i2v=False, seed=0), OPTIM, TRAIN)
    with pytest.raises(RuntimeError, match="nothing to train"):
        mod.configure_optimizers()


def test_condition_appends_image_tokens_and_drop_uses_uncond():
    bundle = random_toy_bundle(seed=0)
    frames = torch.rand(2, 3, 32, 32) * 2 - 1
    c = bundle.condition(["a", "b"], frames)
    n_txt = bundle.text(["a"])["context"].shape[1]
    assert c["context"].shape == (2, n_txt + 4, 64)
    d = bundle.condition(["a", "b"], frames, drop_image=torch.tensor([True, False]))
    unc = bundle.image_tokens(None, 1)[0]
    torch.testing.assert_close(d["context"][0, n_txt:], unc)
    torch.testing.assert_close(d["context"][1], c["context"][1])
    assert not torch.allclose(c["context"][0, n_txt:], unc)


def test_v_prediction_backbone_regresses_v():
    """A v-prediction backbone's loss compares the output with v = α_t ε − σ_t z on frames 2..F."""
    mod = I2VAdapterModule(random_toy_bundle(seed=0, prediction_type="v_prediction"), OPTIM, TRAIN,
                           config={"seed": 0})
    out = mod.compute_loss(_batch(), generator=torch.Generator().manual_seed(1))
    alpha, sigma = mod.bundle.schedule.alpha_sigma(out["t"])
    v = alpha.view(-1, 1, 1, 1, 1) * out["eps"] - sigma.view(-1, 1, 1, 1, 1) * out["z"]
    torch.testing.assert_close(out["target"], v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss"], ((out["eps_hat"] - v)[:, :, 1:] ** 2).mean(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out["target"], out["eps"])


def test_timestep_skew_zero_is_the_uniform_draw_and_skew_leans_to_high_noise():
    from i2v.training.module import sample_timesteps
    g = torch.Generator().manual_seed(3)
    uniform = sample_timesteps(20_000, 1000, 0.0, g)
    expected = torch.randint(0, 1000, (20_000,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(uniform, expected)          # skew 0 = the paper's draw, bit for bit
    for skew in (1.0, 3.0):
        t = sample_timesteps(20_000, 1000, skew, torch.Generator().manual_seed(4))
        assert int(t.min()) >= 0 and int(t.max()) <= 999
        # density ~ (t/T)^s: mean t/T = (1+s)/(2+s); P(t < T/2) = 0.5^(1+s)
        assert abs(float(t.double().mean()) / 1000 - (1 + skew) / (2 + skew)) < 0.01
        assert abs(float((t < 500).double().mean()) - 0.5 ** (1 + skew)) < 0.01
    with pytest.raises(ValueError, match="timestep_skew"):
        sample_timesteps(4, 1000, -1.0)


def test_compute_loss_draws_its_timesteps_with_train_timestep_skew():
    from i2v.training.module import sample_timesteps
    mod = I2VAdapterModule(random_toy_bundle(seed=0), OPTIM, {**TRAIN, "timestep_skew": 3.0}, config={"seed": 0})
    t = mod.compute_loss(_batch(b=8), generator=torch.Generator().manual_seed(5))["t"]
    g = torch.Generator().manual_seed(5)
    torch.rand(8, generator=g), torch.rand(8, generator=g)    # the caption and image drops come first
    assert torch.equal(t.cpu(), sample_timesteps(8, 1000, 3.0, g))
    g = torch.Generator().manual_seed(5)
    torch.rand(8, generator=g), torch.rand(8, generator=g)
    assert not torch.equal(t.cpu(), sample_timesteps(8, 1000, 0.0, g))   # the config is not ignored
