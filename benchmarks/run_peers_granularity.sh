#!/usr/bin/env bash
# Granularity against the peers (issue 20; benchmarks/results/peers_granularity/report.md): the
# shipped DiT-FM converted exactly to diffusers' DiTTransformer2DModel, 1000 images (seeds 0-999),
# NFC 14, 10, 7. relcache's stack-granularity rows (TaylorSeer, RFE, RFC in budget mode) and
# module-granularity TaylorSeer beside the peers that were fastest (cache-dit DBCache, diffusers'
# FirstBlockCache and MagCache) or best on quality (diffusers' TaylorSeer) in the committed peers
# run (benchmarks/results/peers/report.md; the others were behind on speed and quality there),
# each peer's knob tuned on the calibration seeds (100000+) to the counted GFLOPs of
# rfe2:granularity=stack at that budget. One process, about 40 minutes on a 2-core CPU.
# Usage: benchmarks/run_peers_granularity.sh [extra relcache bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-33554432}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-17179869184}"
exec flock /tmp/relcache-heavy.lock relcache bench \
  --steps 50 --cfg-scale 3.0 --samples "${SAMPLES:-1000}" --seed 0 \
  --methods taylorseer2,taylorseer2:granularity=stack,rfe2:granularity=stack,budget2:granularity=stack \
  --budgets 14,10,7 \
  --peers cachedit-dbcache,diffusers-fbc,diffusers-magcache,diffusers-taylorseer \
  --peer-match rfe2:granularity=stack \
  --calibration-samples 32 --calibration-seed 100000 --batch-size 64 --no-analysis \
  --out "${OUT:-benchmarks/results/peers_granularity}" "$@"
