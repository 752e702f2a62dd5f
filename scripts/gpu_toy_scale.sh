#!/usr/bin/env bash
# One prepared GPU run (device tool; never CI): the toy world at a scale the CPU cannot reach in a session.
#   A. the toy base pretrained with the shipped command's settings but batch 64 and as many steps as fit
#      (make_toy_checkpoint.py --device cuda; a 100-step calibration run first sets the step count), then its
#      Content-Adapter (150 steps) -> $OUT/A/ (the four files + MANIFEST.json);
#   B. beside it, the I2V-Adapter trained long on the *shipped* base (train.py experiment=toy trainer=gpu, batch 16),
#      saved every 1,000 steps -> $OUT/rest.tar.gz (with both logs).
# Run once (2026-12-04, one H200): B's files and what they score are in docs/toy_world.md, "Twenty times the adapter's
# training, on a GPU"; A then stopped in its Content-Adapter phase on a module left on the CPU (fixed since).
# Budget: BUDGET_S seconds in all (default 500). Needs the wheels of .whl/ (git-ignored) where the machine has no
# index: hydra-core, omegaconf, antlr4-python3-runtime, open_clip_torch, ftfy, wcwidth, diffusers, importlib_metadata.
set -uo pipefail
T_START=$(date +%s); BUDGET_S=${BUDGET_S:-500}; DEV=${DEV:-cuda}   # DEV=cpu: a dry run of the script here
TRAINER=$([ "$DEV" = cpu ] && echo cpu || echo gpu)
OUT=${OUT:-./gpu_out}; mkdir -p "$OUT/A"; W=/tmp/toyscale; mkdir -p $W
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}" || exit 1
fi
# The video readers' and the shard reader's libraries are imported by i2v.data but never used by the toy world: an
# empty module stands in for each one that is absent
for m in av braceexpand webdataset; do
  python3 -c "import $m" 2>/dev/null || { mkdir -p /tmp/stub/$m && : > /tmp/stub/$m/__init__.py; }
done
export PYTHONPATH="/tmp/stub:${PYTHONPATH:-}"
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=2
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU"; } | tee $W/A.log
elapsed() { echo $(( $(date +%s) - T_START )); }
CAL=${CAL_STEPS:-100}; MIN=${MIN_STEPS:-500}   # (a dry run here: CAL_STEPS=2 MIN_STEPS=4 BATCH=2)
BASE="--seed 0 --batch-size ${BATCH:-64} --lr 0.003 --ip-lr 0.003 --offset-noise 0"
BASE="$BASE --texture 0.5 --texture-cells 16 --texture-tiles 1 --prediction-type ${PRED:-epsilon}"
# the shipped base's UNet unless UNET (a JSON of --unet-overrides) says otherwise; PARTS=A or B runs one part alone;
# PRED=v_prediction pretrains A as a v-prediction base (docs/toy_world.md, "v-prediction"; evaluate it with
# backbone.schedule.prediction_type=v_prediction)
UNET=${UNET:-'{"block_out_channels": [32, 64, 64, 64], "attention_levels": [true, true, true, false], "transformer_layers_per_block": [1, 1, 1, 1], "num_attention_heads": [1, 2, 2, 2]}'}
PARTS=${PARTS:-AB}

# B: long I2V-Adapter training on the shipped base (killed at the budget; checkpoints every 1,000 steps survive)
[[ $PARTS == *B* ]] && ( timeout $(( BUDGET_S - 40 - $(elapsed) )) \
    python3 train.py experiment=toy trainer=$TRAINER trainer.precision=32-true \
    trainer.max_steps=40000 data.batch_size=16 data.num_workers=5 data.dataset.n_items=640000 \
    train.save_every_n_steps=1000 trainer.val_check_interval=5000 trainer.log_every_n_steps=200 \
    after_train.n_videos=8 out_dir=$W/B hydra.run.dir=$W/B > $W/B.log 2>&1; echo "B exit $?" >> $W/B.log ) &
PID_B=$!
if [[ $PARTS != *A* ]]; then
  wait $PID_B; tail -c 3000 $W/B.log
  cd $W && tar czf $OUT/rest.tar.gz B.log B/checkpoints B/train.log; exit 0
fi

# A: calibration (100 steps), then the run sized to what is left
python3 scripts/make_toy_checkpoint.py --out $W/cal $BASE --base-steps $CAL --ip-steps 2 --unet-overrides "$UNET" \
  --ema-decay 0.999 --device $DEV --workers 8 --no-progress --overwrite --state-dir $W/cal_state >> $W/A.log 2>&1
RATE=$(python3 -c "import json; m=json.load(open('$W/cal/MANIFEST.json')); print(m['wall_time_s']['base'] / $CAL)")
[ -n "$RATE" ] || { echo "calibration run failed (log above); waiting for B"; RATE=1000000; }
LEFT=$(( BUDGET_S - $(elapsed) - 75 ))
STEPS=$(python3 -c "print(max($MIN, int($LEFT / $RATE) // $MIN * $MIN))")
echo "calibration: $RATE s/step; $LEFT s left -> $STEPS base steps" | tee -a $W/A.log
timeout $(( BUDGET_S - 25 - $(elapsed) )) \
  python3 scripts/make_toy_checkpoint.py --out $OUT/A $BASE --base-steps $STEPS \
  --ip-steps 150 --unet-overrides "$UNET" --ema-decay 0.999 --device $DEV --workers 8 --no-progress --overwrite \
  --state-dir $W/A_state >> $W/A.log 2>&1
echo "A exit $? at $(elapsed) s" | tee -a $W/A.log
if [ ! -f $OUT/A/MANIFEST.json ]; then   # cut short: the EMA weights of its last saved state
  python3 scripts/make_toy_checkpoint.py --out $OUT/A $BASE --base-steps $STEPS --ip-steps 150 \
    --unet-overrides "$UNET" --ema-decay 0.999 --device $DEV --workers 8 --state-dir $W/A_state --peek $OUT/A \
    --overwrite >> $W/A.log 2>&1
fi
wait $PID_B
tail -c 3000 $W/B.log
tail -n 30 $W/A.log
cd $W && tar czf $OUT/rest.tar.gz A.log B.log cal/MANIFEST.json B/checkpoints B/metrics.json B/adapter.safetensors \
  B/train.log 2>/dev/null
ls -la $OUT $OUT/A; echo "total $(elapsed) s"
