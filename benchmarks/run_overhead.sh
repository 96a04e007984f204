#!/usr/bin/env bash
# RFC's wall-clock overhead over TaylorSeer at equal NFC (the hot-path issue's CPU target), on the
# committed bench's setting: shipped DiT-FM, DDIM 50 steps, CFG 3.0, batch 64 images (128 rows),
# the same 1000 seeds. TaylorSeer m=2, the recommended RFE (fixed schedule), and the paper's RFC
# with per-row decisions (the paper), per-sample (CFG pairs) and per-batch decisions; RCS
# thresholds calibrated on seeds 100000+. Column wall_vs_taylorseer of the report.
# The committed run: benchmarks/results/overhead/report.md.
#
# glibc's allocator returns freed multi-MB blocks to the OS and page-faults them back on the
# next allocation; on a CPU that costs every method time (more for methods with more
# temporaries) and makes timings drift. Keep freed memory in the process (the thresholds' max):
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-33554432}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-17179869184}"
set -euo pipefail
cd "$(dirname "$0")/.."

exec relcache bench \
  --steps 50 --cfg-scale 3.0 \
  --samples "${SAMPLES:-1000}" --seed 0 \
  --methods taylorseer2,rfe2:clamp=1.05,rfc2:scope=row,rfc2,rfc2:scope=batch \
  --budgets 14,10,7 \
  --calibration-samples 32 --calibration-seed 100000 --batch-size 64 \
  --no-analysis --out "${OUT:-benchmarks/results/overhead}" "$@"
