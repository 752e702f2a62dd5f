"""Convert an I2V-Adapter checkpoint between our ``.safetensors`` and the official release's ``i2v_module.pth``.

    python scripts/export_adapter.py ckpt=outputs/train/<run>/adapter.safetensors to=official out=i2v_module.pth
    python scripts/export_adapter.py ckpt=i2v_module.pth to=ours out=adapter.safetensors   # backbone inferred

Options: ``dtype=float16|float32|bfloat16`` (default: keep), ``backbone=sd15|sdxl`` (``to=ours`` when the names do
not say it), ``overwrite=true``. The official inference script loads the result with
``load_weights(i2v_module_path=...)``; tensors and names are the same, so the conversion is bit-exact.
"""
from __future__ import annotations

import sys

from omegaconf import OmegaConf

from i2v.checkpoints.adapter_io import export_adapter

KEYS = {"ckpt", "to", "out", "dtype", "backbone", "overwrite"}


def main(argv: list[str]) -> int:
    args = OmegaConf.from_cli(argv)
    if unknown := sorted(set(args) - KEYS):
        raise SystemExit(f"unknown arguments {unknown}; allowed: {sorted(KEYS)}")
    if missing := [k for k in ("ckpt", "to", "out") if args.get(k) is None]:
        raise SystemExit(f"give {', '.join(f'{k}=...' for k in missing)} (see the docstring)")
    path, info = export_adapter(str(args.ckpt), str(args.to), str(args.out), backbone=args.get("backbone"),
                                dtype=args.get("dtype"), overwrite=bool(args.get("overwrite", False)))
    print(f"wrote {path}: {info['num_layers']} I2V-Adapter layers ({3 * info['num_layers']} tensors) from "
          f"{args.ckpt} ({info['format']} layout, backbone "
          f"{info['backbone'] or str(args.get('backbone')) + ' (given)'}) -> {args.to} layout")
    return 0


if __name__ == "__main__":
    from i2v.cli.config import run_script

    sys.exit(run_script(main, __doc__))
