"""The ceiling check (i2v/training/ceiling.py, scripts/ceiling_check.py): each group unfreezes exactly its base
parameters next to the I2V-Adapter, training moves those and nothing else, and the script prints its table."""
import pytest
import torch
from script_loader import load_script

from i2v.data.synthetic import SyntheticVideos
from i2v.toy.build import random_toy_bundle
from i2v.training.ceiling import GROUPS, train_first_frame_clean, unfreeze


def _names(bundle, params):
    ids = {id(p) for p in params}
    return {n for n, p in bundle.unet.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_unfreeze_selects_the_group(group):
    bundle = random_toy_bundle(for_training=True)
    adapter, base = unfreeze(bundle, group)
    adapter_names = _names(bundle, adapter)
    assert adapter_names == set(bundle.trainable) and adapter_names
    base_names = _names(bundle, base)
    trainable = {n for n, p in bundle.unet.named_parameters() if p.requires_grad}
    assert trainable == adapter_names | base_names
    others = {n for n, _ in bundle.unet.named_parameters()} - adapter_names
    expected = {
        "adapter": set(),
        "attn1": {n for n in others if ".attn1." in n and "motion_modules." not in n},
        "motion": {n for n in others if "motion_modules." in n},
        "up": {n for n in others if (n.startswith("up_blocks.") and "motion_modules." not in n)
               or n.startswith(("conv_norm_out.", "conv_out."))},
        "all": others,
    }[group]
    assert base_names == expected
    if group == "up":      # the decoder's resnets and the output layer, none of the down path
        assert any(".resnets." in n for n in base_names) and "conv_out.weight" in base_names
        assert not any(n.startswith(("down_blocks.", "mid_block.", "conv_in.")) for n in base_names)
    if group == "attn1":   # the projections the branch reads are among them
        assert any(n.endswith("attn1.to_k.weight") for n in base_names)
        assert any(n.endswith("attn1.to_v.weight") for n in base_names)


def test_unfreeze_rejects_unknown_group_and_adapterless_bundle():
    with pytest.raises(ValueError, match="group must be one of"):
        unfreeze(random_toy_bundle(for_training=True), "everything")
    with pytest.raises(ValueError, match="no I2V-Adapter"):
        unfreeze(random_toy_bundle(for_training=True, i2v=False), "all")


def test_training_moves_the_group_and_nothing_else():
    bundle = random_toy_bundle(for_training=True)
    adapter, base = unfreeze(bundle, "attn1")
    before = {n: p.detach().clone() for n, p in bundle.unet.named_parameters()}
    data = SyntheticVideos(4, num_frames=4, size=32, seed=1)
    batch = {"video": torch.stack([data[i]["video"] for i in range(2)]), "text": [data[i]["text"] for i in range(2)]}
    losses = train_first_frame_clean(bundle, iter([batch, batch]), 2, 1e-2, 1e-2, adapter, base)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    moved = {n for n, p in bundle.unet.named_parameters() if not torch.equal(p, before[n])}
    assert moved <= _names(bundle, adapter + base)
    assert any(".attn1.to_v." in n for n in moved)           # a base projection trained
    assert any("to_out_ff" in n for n in moved)              # and the adapter
    assert not any("motion_modules." in n or ".attn2." in n for n in moved)


def test_script_prints_the_ceiling_table(capsys):
    mod = load_script("ceiling_check")
    result = mod.main(["experiment=toy", "group=motion", "steps=2", "n_clips=2", "timesteps=[500,900]",
                       "data.batch_size=2"])
    out = capsys.readouterr().out
    assert "| t | base (before) | trained: motion |" in out
    assert set(result["after"]) == {"500", "900"}
    # before training the adapter is zero: on == off; after, the motion modules changed the base itself
    for t in ("500", "900"):
        assert result["before"][t]["adapter_on"] == pytest.approx(result["before"][t]["adapter_off"], rel=1e-6)
        assert result["after"][t]["adapter_off"] != result["before"][t]["adapter_off"]
    with pytest.raises(ValueError, match="save= keeps"):
        mod.main(["experiment=toy", "group=all", "steps=1", "save=x.safetensors"])


def test_script_saves_the_trained_network_for_sampling(tmp_path):
    """save_model= writes what the group trained as a base file + adapter file that load back into a bundle: the
    decoder side (group=up) differs from the shipped base, the encoder side is the shipped base's, bit for bit."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from safetensors import safe_open
    from safetensors.torch import load_file

    from i2v.checkpoints.adapter_io import read_adapter
    from i2v.cli.config import CONFIGS
    from i2v.pipeline.bundle import build_bundle

    mod = load_script("ceiling_check")
    out = tmp_path / "model"
    mod.main(["experiment=toy", "adapter=no_content", "group=up", "steps=2", "n_clips=2", "timesteps=[500]",
              "data.batch_size=2", "lr=1e-2", f"save_model={out}"])
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=toy", "adapter=no_content"])
    OmegaConf.set_struct(cfg, False)
    shipped, saved = load_file(str(cfg.backbone.unet)), load_file(str(out / "base_unet.safetensors"))
    assert set(saved) == set(shipped)
    changed = {k for k in saved if not torch.equal(saved[k], shipped[k])}
    assert changed and all(k.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")) for k in changed)
    with safe_open(str(out / "base_unet.safetensors"), "pt") as f, safe_open(str(cfg.backbone.unet), "pt") as g:
        assert f.metadata() == g.metadata()
    tensors, info = read_adapter(out / "adapter.safetensors")
    assert info["backbone"] == "toy" and any(v.abs().sum() > 0 for k, v in tensors.items() if "to_out_ff" in k)
    cfg.backbone.unet = str(out / "base_unet.safetensors")
    bundle = build_bundle(cfg.backbone, cfg.adapter)         # loads strictly: no key missing or left over
    for k, v in bundle.unet.state_dict().items():
        if k in saved:
            assert torch.equal(v, saved[k]), k
    with pytest.raises(FileExistsError, match="would overwrite"):
        mod.main(["experiment=toy", "adapter=no_content", "group=up", "steps=1", f"save_model={out}"])
    with pytest.raises(ValueError, match="adapter=no_content"):
        mod.main(["experiment=toy", "group=up", "steps=1", f"save_model={tmp_path / 'other'}"])
