#!/usr/bin/env bash
# One prepared GPU check (device tool; never CI): full-size SD1.5 / SDXL shapes with random weights on one card.
#   1. parity: our VideoUNet vs diffusers UNetMotionModel, same weights and inputs, fp32 (SD1.5 + v2 motion,
#      1 x 16 frames x 64^2 latents) -- the output's max error relative to the reference's scale;
#   2. timing + peak memory, ours / diffusers, fp16, SD1.5 + v2 and SDXL + sdxl_beta, 2 x 16 x 64^2;
#   3. seconds per sampled video (16 x 512^2, 25 DDIM steps, CFG 7.5), the paper's sampler and adapter.noised_kv.
# Needs diffusers (+ importlib_metadata) as wheels in .whl/ (git-ignored) where the machine has no index:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1 importlib_metadata
# Writes everything it prints to $OUT/gpu_check.log (or ./gpu_check.log).
set -uo pipefail
LOG="${OUT:-.}/gpu_check.log"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}" || exit 1
fi
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
  echo "== parity fp32, TF32 off (sd15 + v2 and sdxl + sdxl_beta, 1x16x64^2)"
  python3 scripts/bench_unet.py --device cuda --case sd15 --dtype float32 --batch 1 --warmup 1 --repeats 3
  python3 scripts/bench_unet.py --device cuda --case sdxl --dtype float32 --batch 1 --warmup 1 --repeats 3
  [ "${PARITY_ONLY:-0}" = 1 ] && exit 0
  echo "== timing fp16 (sd15 + v2, sdxl + sdxl_beta; 2x16x64^2)"
  python3 scripts/bench_unet.py --device cuda --warmup 2 --repeats 5
  echo "== sampling, 16x512^2, 25 DDIM steps, the paper's sampler and adapter.noised_kv"
  python3 scripts/bench_sample.py --device cuda --backbone sd15 --t0 1.0 --repeats 2 --noised-kv
  python3 scripts/bench_sample.py --device cuda --backbone sdxl --t0 1.0 --repeats 2 --noised-kv
} 2>&1 | tee "$LOG"
