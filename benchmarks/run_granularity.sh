#!/usr/bin/env bash
# The granularity trade-off (issue 20; benchmarks/results/granularity/report.md): the shipped
# DiT-FM, DDIM 50 steps, CFG 3, 1000 images (seeds 0-999), NFC 14, 11, 10, 8. Module-level
# TaylorSeer m=2 and the recommended rfe2:clamp=1.05 against block- and stack-granularity caches
# (TaylorSeer, RFE, RFC with RCS watching its driver module; thresholds calibrated on seeds
# 100000+; RFC in budget mode). One process; each budget runs under the shared lock so other jobs can interleave.
# Usage: benchmarks/run_granularity.sh [extra relcache bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-33554432}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-17179869184}"
OUT="${OUT:-benchmarks/results/granularity}"
METHODS="taylorseer2,taylorseer2:granularity=stack,rfe2:granularity=block,rfe2:granularity=stack"
METHODS="$METHODS,rfe2:clamp=1.05,rfc2:granularity=stack,budget2:granularity=stack"
done_budgets=""
for b in ${BUDGETS:-14 11 10 8}; do  # NFC 7 (and 14, 10 again): run_peers_granularity.sh
  done_budgets="${done_budgets:+$done_budgets,}$b"
  resume=()
  [ -f "$OUT/results.json" ] && resume=(--resume)
  flock /tmp/relcache-heavy.lock relcache bench \
    --steps 50 --cfg-scale 3.0 --samples "${SAMPLES:-1000}" --seed 0 \
    --methods "$METHODS" --budgets "$done_budgets" \
    --calibration-samples 32 --calibration-seed 100000 --batch-size 64 --no-analysis \
    --out "$OUT" "${resume[@]}" "$@"
done
