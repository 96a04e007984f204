#!/usr/bin/env bash
# The committed benchmark: shipped DiT-FM, DDIM 50 steps, CFG 3.0, the paper's DiT budgets.
# Every method x budget runs on the same SAMPLES seeds (image i: seed i, class i % 10).
# Usage: benchmarks/run_bench.sh [extra relcache bench flags, e.g. --resume]
#   NPROC=2 benchmarks/run_bench.sh   # shard the seeds over 2 processes (torchrun, gloo/NCCL)
set -euo pipefail
cd "$(dirname "$0")/.."

SAMPLES="${SAMPLES:-1000}"
NPROC="${NPROC:-1}"
OUT="${OUT:-benchmarks/results}"

ARGS=(
  bench
  --steps 50 --cfg-scale 3.0
  --samples "$SAMPLES" --seed 0
  --methods fora,taylorseer1,taylorseer2,rfc1,rfc2,rfe1,rcs1
  --budgets 14,11,10,8,7
  --calibration-samples 32 --batch-size 64
  --analysis-samples 4 --analysis-budget 10
  --out "$OUT"
)

if [ "$NPROC" -gt 1 ]; then
  exec torchrun --standalone --nproc-per-node "$NPROC" -m relcache "${ARGS[@]}" "$@"
else
  exec relcache "${ARGS[@]}" "$@"
fi
