#!/usr/bin/env bash
# The paper's ablation at NFC 14 (RFC_SPEC §4; issue 21 item 5; report in
# benchmarks/results/ablation/report.md): the shipped DiT-FM, DDIM 50 steps, CFG 3, 1000 images
# (seeds 0-999). TaylorSeer, +RFE, +RCS and RFC at m = 1 (and TaylorSeer and RFC at m = 2), the
# fixed magnitude weights w = 0.8 / 1.2 on Taylor's increment (w = 1 is TaylorSeer), RCS
# monitoring every cached module's input, and RFC in budget mode (exactly 14 full steps per
# sample). RCS thresholds are bisected on seeds 100000+ (their NFC on the 1000 images is in the
# report); the TaylorSeer m=2, RFC m=2 and full-compute rows are the main bench's
# (benchmarks/run_bench.sh, same settings).
# Usage: benchmarks/run_ablation.sh [extra relcache bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-33554432}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-17179869184}"
OUT="${OUT:-benchmarks/results/ablation}"
METHODS="taylorseer1,rfe1,rcs1,rfc1,taylorseer2,rfc2,weighted1:weight=0.8,weighted1:weight=1.2"
METHODS="$METHODS,rcsall1,budget1,budget2"
resume=()
[ -f "$OUT/results.json" ] && resume=(--resume)
exec relcache bench \
  --steps 50 --cfg-scale 3.0 --samples "${SAMPLES:-1000}" --seed 0 \
  --methods "$METHODS" --budgets 14 \
  --calibration-samples 32 --calibration-seed 100000 --batch-size 64 --no-analysis \
  --out "$OUT" "${resume[@]}" "$@"
