"""``train.ema_decay``: the adapter files hold the moving average of the adapter's tensors, training itself is
unchanged, and a resumed run continues the average exactly."""
import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from i2v.training.callbacks import AdapterCheckpoint
from i2v.training.ema import AdapterEMA
from i2v.training.module import I2VAdapterModule
from toy_fit import fit_toy_module

OPTIM = {"lr": 1e-2, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": 1.0}
TRAIN = {"text_drop_prob": 0.1, "image_drop_prob": 0.1, "max_nonfinite_in_a_row": 3}


def test_average_follows_its_definition():
    """avg_n = sum_k (1 - d) d^(n-k) w_k / (1 - d^n), written out by hand for d = 0.5 and w = 1, 2, 4."""
    w = torch.zeros(3)
    ema = AdapterEMA({"w": w}, decay=0.5)
    assert torch.equal(ema.tensors({"w": w})["w"], w)            # no step yet: the starting tensors
    expected = [1.0,                                             # 0.5 * 1 / 0.5
                (0.25 * 1 + 0.5 * 2) / 0.75,                     # 5/3
                (0.125 * 1 + 0.25 * 2 + 0.5 * 4) / 0.875]        # 2.625 / 0.875 = 3
    for v, want in zip([1.0, 2.0, 4.0], expected):
        w.fill_(v)
        ema.update({"w": w})
        assert torch.allclose(ema.tensors({"w": w})["w"], torch.full((3,), want), rtol=1e-6), v
    # bias-corrected: a constant sequence averages to itself from the first step, whatever the start
    const = AdapterEMA({"w": torch.full((2,), 7.0)}, decay=0.999)
    for _ in range(3):
        const.update({"w": torch.full((2,), -1.0)})
    assert torch.allclose(const.tensors({"w": torch.zeros(2)})["w"], torch.full((2,), -1.0), rtol=1e-6)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_bad_decay_is_refused(decay):
    with pytest.raises(ValueError, match="ema_decay"):
        AdapterEMA({"w": torch.zeros(1)}, decay)


class _Weights(L.Callback):
    """The adapter's trained tensors after every optimiser step."""

    def __init__(self):
        self.steps = []

    def on_train_start(self, trainer, pl_module):
        self.steps.append({k: p.detach().clone() for k, p in pl_module.bundle.trainable.items()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({k: p.detach().clone() for k, p in pl_module.bundle.trainable.items()})


def _fit(root, max_steps, ema_decay=0.0, ckpt_path=None, save_every=0, callbacks=()):
    return fit_toy_module(root, max_steps, OPTIM, {**TRAIN, "ema_decay": ema_decay}, ckpt_path=ckpt_path,
                          save_every=save_every, callbacks=callbacks)


def test_training_writes_the_average_and_trains_as_without_it(tmp_path):
    weights = _Weights()
    saver = AdapterCheckpoint(tmp_path / "run", every_n_steps=2, config={"seed": 0})
    mod = _fit(tmp_path / "a", 4, ema_decay=0.6, callbacks=[weights, saver])
    plain = _fit(tmp_path / "b", 4)
    for k, p in plain.bundle.trainable.items():   # the average does not feed back into training
        assert torch.equal(mod.bundle.trainable[k], p), k

    assert len(weights.steps) == 5   # the start + 4 steps
    avg = mod.adapter_tensors()
    for k in avg:
        steps = weights.steps[1:]
        n = len(steps)
        expected = sum((1 - 0.6) * 0.6 ** (n - i) * w[k].double() for i, w in enumerate(steps, start=1))
        expected = (expected / (1 - 0.6 ** n)).float()
        assert torch.allclose(avg[k], expected, rtol=1e-5, atol=1e-7), k
    # the zero-initialised output projection has moved, so the average is not the trained tensors
    out_key = next(k for k in avg if k.endswith("to_out_ff.weight"))
    assert not torch.allclose(avg[out_key], mod.bundle.trainable[out_key])

    final = load_file(str(tmp_path / "run" / "adapter.safetensors"))
    assert set(final) == set(avg)
    for k in avg:
        assert torch.equal(final[k], avg[k]), k
    snap = load_file(str(tmp_path / "run" / "checkpoints" / "adapter-step2.safetensors"))
    assert not torch.equal(snap[out_key], final[out_key])

    mod.use_average()   # what train() does before its after-train samples
    for k in avg:
        assert torch.equal(mod.bundle.trainable[k], avg[k]), k


def test_resume_continues_the_average_exactly(tmp_path):
    full = _fit(tmp_path / "a", 4, ema_decay=0.6, save_every=2)
    state = torch.load(tmp_path / "a" / "step=2.ckpt", map_location="cpu", weights_only=True)
    assert state["adapter_ema"]["updates"] == 2
    resumed = _fit(tmp_path / "b", 4, ema_decay=0.6, ckpt_path=str(tmp_path / "a" / "step=2.ckpt"))
    assert resumed.ema.updates == 4
    want, got = full.adapter_tensors(), resumed.adapter_tensors()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_resume_without_an_average_starts_it_from_the_resumed_tensors(tmp_path, caplog):
    _fit(tmp_path / "a", 2, save_every=2)
    with caplog.at_level("WARNING"):
        resumed = _fit(tmp_path / "b", 3, ema_decay=0.6, ckpt_path=str(tmp_path / "a" / "step=2.ckpt"))
    assert "holds no adapter average" in caplog.text
    assert resumed.ema.updates == 1


def test_resume_with_another_decay_is_refused(tmp_path):
    _fit(tmp_path / "a", 2, ema_decay=0.6, save_every=2)
    with pytest.raises(ValueError, match="decay 0.6"):
        _fit(tmp_path / "b", 3, ema_decay=0.9, ckpt_path=str(tmp_path / "a" / "step=2.ckpt"))


def test_a_skipped_step_does_not_move_the_average(tmp_path, monkeypatch):
    """A NaN step (skipped by the module) is not an update of the average; the other steps are."""
    real = I2VAdapterModule.compute_loss
    calls = {"n": 0}

    def nan_on_second(self, batch, generator=None):
        calls["n"] += 1
        out = real(self, batch, generator)
        return {**out, "loss": out["loss"] * float("nan")} if calls["n"] == 2 else out

    monkeypatch.setattr(I2VAdapterModule, "compute_loss", nan_on_second)
    mod = _fit(tmp_path, 3, ema_decay=0.6)
    assert mod.skipped_steps == 1
    assert mod.ema.updates == 2


def test_train_samples_with_the_saved_average(tmp_path, monkeypatch):
    """python train.py experiment=toy (train.ema_decay 0.99): the after-train samples use the tensors the adapter file
    holds (the average), not the last step's."""
    from hydra import compose, initialize_config_dir

    import i2v.toy.evaluate
    from i2v.cli.config import CONFIGS
    from i2v.train import train

    seen = {}

    def capture(cfg, bundle, out_dir):
        seen.update({k: p.detach().clone() for k, p in bundle.trainable.items()})
        return {}

    monkeypatch.setattr(i2v.toy.evaluate, "sample_and_score", capture)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=toy", f"out_dir={tmp_path}", "trainer.max_steps=3",
                                                      "logger=none", "trainer.enable_checkpointing=false"])
    assert cfg.train.ema_decay == 0.99
    train(cfg)
    saved = load_file(str(tmp_path / "adapter.safetensors"))
    assert seen and set(seen) == set(saved)
    for k in saved:
        assert torch.equal(seen[k], saved[k]), k


def test_warmup_form_is_diffusers_warm_up_average():
    """The toy base's pretraining form: avg_n = d_n avg_{n-1} + (1 - d_n) w_n with d_n = min(d, n / (n + 9)), starting
    from the tensors before training (not from zero), and no bias correction on read."""
    from i2v.utils.ema import ExponentialMovingAverage
    w = torch.tensor([2.0, -1.0])
    ema = ExponentialMovingAverage({"w": w}, decay=0.5, form="warmup")
    want = w.clone()
    for n, v in enumerate([1.0, 3.0, -2.0, 5.0], start=1):
        w = torch.full((2,), v)
        d = min(0.5, n / (n + 9))                                     # 0.1, 0.1818, 0.25, 0.3077 (<= 0.5 here)
        want = d * want + (1 - d) * w
        ema.update({"w": w})
        assert torch.allclose(ema.tensors({"w": w})["w"], want, rtol=1e-6), n
    assert ema.current_decay() == pytest.approx(min(0.5, 5 / 14))
    for _ in range(30):                                               # long after the warm-up: d itself
        ema.update({"w": w})
    assert ema.current_decay() == 0.5


def test_ema_forms_and_decays_are_checked():
    from i2v.utils.ema import ExponentialMovingAverage
    w = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="form"):
        ExponentialMovingAverage(w, 0.5, form="adam")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ExponentialMovingAverage(w, 1.0)
    last = ExponentialMovingAverage(w, 0.0, form="warmup")           # decay 0: the last tensors
    last.update({"w": torch.full((2,), 7.0)})
    assert torch.equal(last.tensors(w)["w"], torch.full((2,), 7.0))
    other = ExponentialMovingAverage(w, 0.5, form="bias_corrected")
    with pytest.raises(ValueError, match="warmup"):
        other.load_state_dict(last.state_dict() | {"decay": 0.5})
