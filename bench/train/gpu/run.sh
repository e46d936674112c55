#!/usr/bin/env bash
# On a lent GPU machine (the device tool), after bench/train/gpu/prepare.sh here:
#   run(command="bash bench/train/gpu/run.sh", carry=[".gpu"], timeout_s=540)
# bench_train.py --device cuda for neo-250m at MAP-Neo's 64,000-piece vocabulary (paper; NeoConfig vocab_size),
# bf16, seq 4096 (configs/neo-250m.yaml), one GPU: Neo's trainer (eager and model.compile) against HF Trainer,
# MFU against bf16 GEMMs at the step's shapes and against the datasheet. The table and JSON land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DEST=${DEST:-.gpu}
OUT=${OUT:-$DEST/out}
mkdir -p "$OUT"
PY=${PY:-python3}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/neo-site "$DEST"/whl/*.whl
export PYTHONPATH=/tmp/neo-site:$PWD/libs:$PWD/services/trainer PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
$PY -c "import torch, deepspeed, pydantic_settings; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'deepspeed', deepspeed.__version__)"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
# shellcheck disable=SC2086
$PY bench/train/bench_train.py --device "$DEVICE" --preset "${PRESET:-neo-250m}" --vocab-size "${VOCAB:-64000}" \
  --seq-len "${SEQ:-4096}" --batch "${BATCH:-8}" --steps "${STEPS:-30}" --warmup 5 --tokenizer "$DEST/tokenizer" \
  --work /tmp/neo-bench-train --json-summary "$OUT/bench_train_gpu.json" ${EXTRA:-} 2>&1 | tee "$OUT/bench_train_gpu.log"
