#!/usr/bin/env bash
# The committed peers comparison (benchmarks/results/peers/report.md): the shipped DiT-FM
# converted exactly to diffusers' DiTTransformer2DModel; TaylorSeer m=2 and relcache's recommended
# configuration at NFC 14, 10, 7; then every peer (diffusers' caching hooks, cache-dit DBCache
# with and without TaylorSeer) at its defaults and tuned on the calibration seeds (100000+) to the
# recommended configuration's counted FLOPs at each budget, each peer searching a grid of its
# documented knobs (benchmarks/README.md). One process (FLOPs are counted over whole runs); needs
# pip install -e ".[peers]". The committed search ran PEERS=diffusers-taylorseer,diffusers-magcache,
# diffusers-fbc,cachedit-dbcache at --budgets 14 (about 35 minutes on a 2-core CPU; all peers at
# three budgets: several hours).
# Usage: benchmarks/run_peers.sh [extra relcache bench flags: --resume to add missing rows, --overwrite to rerun into the filled results folder]
set -euo pipefail
cd "$(dirname "$0")/.."

exec relcache bench \
  --steps 50 --cfg-scale 3.0 --samples "${SAMPLES:-1000}" --seed 0 \
  --methods taylorseer2,rfe2:clamp=1.05,rfe2:clamp=1.05:first=4,rfe2:clamp=1.05:first=6,taylorseer2:fitted \
  --budgets 14,10,7 \
  --peers "${PEERS:-all}" --peer-match rfe2:clamp=1.05 \
  --calibration-samples 32 --calibration-seed 100000 --batch-size 64 --no-analysis \
  --out "${OUT:-benchmarks/results/peers}" "$@"
