"""Ceiling check for the I2V-Adapter: train the first-frame-clean objective with more of the base unfrozen and
compare the frames-2..F ε-loss per timestep with the untouched base (see :mod:`i2v.training.ceiling`).

    python scripts/ceiling_check.py experiment=toy group=all                 # what the whole toy UNet can reach
    python scripts/ceiling_check.py experiment=toy group=attn1 steps=400     # + the base's self-attention projections
    python scripts/ceiling_check.py experiment=toy group=up                  # + the decoder (up path, output)

Arguments are the training config's overrides (backbone, adapter, data, stage, ...) plus ``group=`` (adapter |
attn1 | motion | up | all; default all), ``steps=`` (400), ``lr=`` (the base parameters' lr, 3e-4), ``adapter_lr=``
(3e-3), ``n_clips=`` (16, held-out clips as in ``diagnose_adapter.py``), ``timesteps=`` ([200,500,800,950]),
``noise_seed=`` (0, the diagnostic's noise), ``device=`` (auto), ``json=<path>``, ``save=<path>`` (the trained
adapter tensors as safetensors; group=adapter only, since the others change the base), ``save_model=<dir>`` (toy
backbone, ``adapter=no_content``: the trained UNet as ``<dir>/base_unet.safetensors``, with the base file's
metadata, and its adapter as ``<dir>/adapter.safetensors``, so the network the group trained can be sampled:
``python evaluate.py mode=toy experiment=toy_table2 adapter=no_content backbone.unet=<dir>/base_unet.safetensors
ckpt=<dir>/adapter.safetensors``). Nothing is written unless asked: the base files are never modified.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OWN_KEYS = ("group", "steps", "lr", "adapter_lr", "n_clips", "timesteps", "noise_seed", "device", "json", "save",
            "save_model")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import i2v.cli.config  # noqa: F401  (resolvers)
    from i2v.pipeline.bundle import build_bundle
    from i2v.training.ceiling import format_ceiling, train_first_frame_clean, unfreeze
    from i2v.training.diagnose import DEFAULT_TIMESTEPS, eps_loss_by_timestep
    from scripts.diagnose_adapter import held_out_clips, split_args

    own, overrides = split_args(sys.argv[1:] if argv is None else argv, OWN_KEYS)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    OmegaConf.set_struct(cfg, False)
    group = str(own.get("group", "all"))
    if own.get("save") and group != "adapter":
        raise ValueError("save= keeps the adapter of group=adapter only (the other groups change the frozen base)")
    save_model = own.get("save_model")
    if save_model:
        _check_save_model(cfg, Path(str(save_model)))
    dev = own.get("device", "auto")
    device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else ("cpu" if dev == "auto" else dev))
    torch.manual_seed(int(cfg.seed))
    bundle = build_bundle(cfg.backbone, cfg.adapter, device="cpu", dtype=torch.float32, for_training=True).to(device)
    adapter_params, base_params = unfreeze(bundle, group)
    videos, texts = held_out_clips(cfg, int(own.get("n_clips", 16)))
    timesteps = [int(t) for t in own.get("timesteps", DEFAULT_TIMESTEPS)]
    noise_seed = int(own.get("noise_seed", 0))
    before = eps_loss_by_timestep(bundle, videos, texts, timesteps, seed=noise_seed)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    steps = int(own.get("steps", 400))
    n_base = sum(p.numel() for p in base_params)
    print(f"group={group}: training the I2V-Adapter ({sum(p.numel() for p in adapter_params):,} parameters) and "
          f"{n_base:,} base parameters for {steps} steps")
    ema = None

    def progress(step: int, loss: float) -> None:
        nonlocal ema
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step + 1}/{steps}  loss (ema) {ema:.5f}", flush=True)

    train_first_frame_clean(bundle, _forever(dm), steps, float(own.get("adapter_lr", 3e-3)),
                            float(own.get("lr", 3e-4)), adapter_params, base_params, seed=int(cfg.seed),
                            progress=progress)
    after = eps_loss_by_timestep(bundle, videos, texts, timesteps, seed=noise_seed)
    print(f"\nε-MSE on frames 2..F, frame 1 clean; {len(texts)} clips; backbone={cfg.backbone.name}")
    print(format_ceiling(before, after, group))
    if own.get("save"):
        from safetensors.torch import save_file
        save_file({k: v.detach().cpu().contiguous() for k, v in bundle.trainable.items()}, str(own["save"]))
    if save_model:
        for path in write_model(bundle, cfg, Path(str(save_model)), group):
            print(f"wrote {path}")
    result = {"group": group, "steps": steps, "base_params": n_base,
              "before": {str(t): r for t, r in before.items()}, "after": {str(t): r for t, r in after.items()}}
    if own.get("json"):
        Path(str(own["json"])).write_text(json.dumps(result, indent=2))
    return result


MODEL_FILES = ("base_unet.safetensors", "adapter.safetensors")


def _check_save_model(cfg, out: Path) -> None:
    """Refuse ``save_model=`` before any training when its files could not be written or sampled as asked."""
    if cfg.backbone.name != "toy":
        raise ValueError(f"save_model= writes a toy base file; backbone={cfg.backbone.name} has its own formats")
    if cfg.adapter.content:
        raise ValueError("save_model= writes the base and the I2V-Adapter only: run it with adapter=no_content "
                         "(the Content-Adapter's layers would be trained but not saved)")
    taken = [str(out / name) for name in MODEL_FILES if (out / name).exists()]
    if taken:
        raise FileExistsError(f"save_model= would overwrite {', '.join(taken)}; give a new folder")


def write_model(bundle, cfg, out: Path, group: str) -> list[Path]:
    """The bundle's UNet without its adapter tensors, under the metadata of the base file it was built from, and
    its I2V-Adapter (its config records ``group``): ``[<out>/base_unet.safetensors, <out>/adapter.safetensors]``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from i2v.checkpoints.adapter_io import save_adapter

    with safe_open(str(cfg.backbone.unet), "pt") as f:
        meta = f.metadata()
    base = {k: v.detach().cpu().contiguous().clone() for k, v in bundle.unet.state_dict().items()
            if k not in bundle.trainable}            # the adapter's tensors, by the same state-dict names
    out.mkdir(parents=True, exist_ok=True)
    base_path, adapter_path = (out / name for name in MODEL_FILES)
    save_file(base, str(base_path), metadata=meta)
    save_adapter(adapter_path, bundle.trainable, "toy", {**bundle.config, "ceiling_check": {"group": group}})
    return [base_path, adapter_path]


def _forever(dm):
    while True:
        yield from dm.train_dataloader()


if __name__ == "__main__":
    from i2v.cli.config import run_script

    sys.exit(run_script(main, __doc__))
