"""Learning diagnostic for an I2V-Adapter: ε-loss per timestep with the adapter on / off and two network-free
predictors ("copy frame 1", "signal is zero"), and the frame-1 oracle (frame 1 copied where the clip did not change,
the base elsewhere: how far frame 1 can take this base); see :mod:`i2v.training.diagnose`. The first thing to run after a
training run.

    python scripts/diagnose_adapter.py experiment=toy                       # the shipped toy adapter
    python scripts/diagnose_adapter.py experiment=toy ckpt=outputs/toy/<run>/adapter.safetensors
    python scripts/diagnose_adapter.py backbone=sd15 stage=2 ckpt=adapter.safetensors \
        backbone.unet=... backbone.motion=... data=selfcollected data.dataset.root=/data/videos

Arguments are the training config's overrides (``configs/train.yaml``: backbone, adapter, data, stage, ...) plus
``ckpt=`` (adapter file; default: the experiment's ``ckpt``; the base alone: ``adapter=none``), ``n_clips=`` (16),
``timesteps=[200,500,800,950]``, ``noise_seed=`` (0), ``batch_size=`` (8), ``device=`` (auto), ``json=<path>``,
``focus_t=`` (500: the timestep of the attention-focus table, which shows per attn1 layer how close to uniform the
base's self-attention and the adapter branch's attention to frame 1 are; ``focus_t=null`` skips it),
``probes=`` (true: two more passes per t with the adapter off -- every spatial self-attention zeroed, and every
frame's self-attention reading frame 1's keys/values -- which tell whether the base gives the branch a route at all),
``static_tol=`` (1e-3: a latent element is "unchanged" for the oracle within this times the clip's latent RMS),
``captions=`` (true: the same loss with no caption and with the caption's direction words swapped, left<->right
and up<->down -- does the model use its text, and does it know which way things move?).
Clips: the toy world's held-out scenes (``SyntheticVideos`` with the evaluation seed), else the data module's
validation split (the training data when it has none).
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

OWN_KEYS = ("ckpt", "n_clips", "timesteps", "noise_seed", "batch_size", "device", "json", "focus_t", "probes",
            "static_tol", "captions")


def split_args(argv: Sequence[str], keys: Sequence[str] = OWN_KEYS) -> tuple[dict, list[str]]:
    """``key=value`` arguments of this script (``keys``; see module docstring) and the Hydra overrides."""
    from omegaconf import OmegaConf

    own, rest = {}, []
    for a in argv:
        key = a.split("=", 1)[0]
        if key in keys and "=" in a:
            own[key] = OmegaConf.from_dotlist([a])[key]
        else:
            rest.append(a)
    return own, rest


def held_out_clips(cfg, n: int) -> tuple[torch.Tensor, list[str]]:
    """``(videos (n, F, 3, H, W), captions)`` for the diagnostic."""
    from hydra.utils import get_class, instantiate

    from i2v.data.synthetic import SyntheticVideos
    from i2v.toy.evaluate import held_out_scenes, scene_options

    spec = cfg.data.dataset
    if get_class(spec._target_) is SyntheticVideos:
        data = held_out_scenes(n, int(cfg.data.num_frames), cfg.data.size, scene_options(cfg.backbone))
        items = [data[i] for i in range(n)]
    else:
        dm = instantiate(cfg.data)
        dm.setup("fit")
        ds = dm.val_dataset if dm.val_dataset is not None else dm.train_dataset
        items = []
        for batch in dm._loader(ds, 1, train=False):
            items.append({"video": batch["video"][0], "text": batch["text"][0]})
            if len(items) == n:
                break
        if not items:
            raise ValueError("the data module yielded no clips")
    return torch.stack([it["video"] for it in items]), [it["text"] for it in items]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import i2v.cli.config  # noqa: F401  (resolvers)
    from i2v.pipeline.bundle import build_bundle, required_adapter_ckpt
    from i2v.training.attention_focus import attention_focus, focus_findings, format_focus
    from i2v.training.caption_probe import caption_findings, caption_probe, format_captions
    from i2v.training.diagnose import (DEFAULT_TIMESTEPS, eps_loss_by_timestep, findings, format_probes,
                                       format_table, probe_findings)

    own, overrides = split_args(sys.argv[1:] if argv is None else argv)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=False)
    OmegaConf.set_struct(cfg, False)
    ckpt = own.get("ckpt", cfg.get("ckpt"))
    dev = own.get("device", "auto")
    device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else ("cpu" if dev == "auto" else dev))
    bundle = build_bundle(cfg.backbone, cfg.adapter, device="cpu", dtype=torch.float32, for_training=False)
    if bundle.trainable:
        ckpt = required_adapter_ckpt(ckpt, cfg.adapter.name)
        bundle.load_i2v_adapter(ckpt)
    else:
        ckpt = None   # no I2V-Adapter in this adapter config: nothing is loaded
    bundle = bundle.to(device)
    videos, texts = held_out_clips(cfg, int(own.get("n_clips", 16)))
    timesteps = [int(t) for t in own.get("timesteps", DEFAULT_TIMESTEPS)]
    table = eps_loss_by_timestep(bundle, videos, texts, timesteps, seed=int(own.get("noise_seed", 0)),
                                 batch_size=int(own.get("batch_size", 8)), probes=bool(own.get("probes", True)),
                                 static_tol=float(own.get("static_tol", 1e-3)))
    min_t = bundle.active_i2v_min_t    # adapter.i2v_min_t where there is a branch to switch off
    print(f"ε-MSE on frames 2..F, frame 1 clean; {len(texts)} clips; backbone={cfg.backbone.name} "
          f"adapter={cfg.adapter.name} ckpt={ckpt}" + (" noised_kv=true ('adapter on' is that forward)"
                                                        if bundle.noised_kv else "")
          + (f" i2v_min_t={min_t} (the branch off below it)" if min_t else ""))
    print(format_table(table))
    if own.get("probes", True):
        print("\nattention probes (adapter off): does the base use its spatial self-attention, and what do frame 1's "
              "keys/values do in it?")
        print(format_probes(table))
    captions = {}
    if own.get("captions", True):
        captions = caption_probe(bundle, videos, texts, timesteps, seed=int(own.get("noise_seed", 0)),
                                 batch_size=int(own.get("batch_size", 8)))
        print("\ncaption probe (the model as measured in 'adapter on'; 'adapter off' without one): does it use its "
              "caption, the caption's direction words" + (", and the Content-Adapter's image?" if bundle.content_enabled
                                                          else "?"))
        print(format_captions(captions))
    focus = {}
    focus_t = own.get("focus_t", 500)
    if focus_t is not None:   # one batch of the clips
        n = int(own.get("batch_size", 8))
        focus = attention_focus(bundle, videos[:n], texts[:n], int(focus_t), seed=int(own.get("noise_seed", 0)))
        gated = (f"; adapter.i2v_min_t={min_t} switches the branch off at this t in sampling: its columns show "
                 f"where it would look (focus_t={min_t} or above for where it runs)" if int(focus_t) < min_t else "")
        print(f"\nattention focus at t={int(focus_t)} (spatial self-attention layers, frame 1 clean{gated}):")
        print(format_focus(focus))
    notes = findings(table, min_t) + probe_findings(table) + caption_findings(captions) + focus_findings(focus)
    if bundle.noised_kv:
        notes.append("adapter.noised_kv: 'adapter on' is that forward; on the toy world its samples keep frame 1 "
                     "far better than this one-step ε ratio suggests (docs/toy_world.md, 'Noised first-frame "
                     "keys/values, trained'): judge it by its samples")
    for line in notes:
        print("-", line)
    result = {"backbone": cfg.backbone.name, "adapter": cfg.adapter.name, "ckpt": str(ckpt) if ckpt else None,
              "noised_kv": bundle.noised_kv, "i2v_min_t": min_t,
              "n_clips": len(texts), "table": {str(t): row for t, row in table.items()},
              "captions": {str(t): row for t, row in captions.items()}, "attention_focus": focus}
    if own.get("json"):
        Path(str(own["json"])).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from i2v.cli.config import run_script

    sys.exit(run_script(main, __doc__))
