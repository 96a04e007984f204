#!/usr/bin/env bash
# The hot-path and granularity issues' GPU check in one run (H100/H200 class, ~10 minutes): kernel
# counts at DiT-XL/2 and FLUX.1-dev size, then timed 50-step generations, eager / compiled / CUDA graphs.
# Run from the repo root; results land in ${OUT:-gpu_results}/.
set -uo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
pip install -q -e . 2>/dev/null || pip install -q --no-deps -e .
python benchmarks/hot_path.py --preset DiT-XL/2 --device cuda --dtype bfloat16 --batch 4 \
  --compile --repeats 10 | tee "$OUT/hot_path_dit_xl2.jsonl"
# every compiled run starts from a clean dynamo cache and compiles its two graphs (~30 s each)
python benchmarks/gpu_generation.py --device cuda --dtype bfloat16 --preset DiT-XL/2 \
  --batch 2 --nfc 14,8 --modes eager --out "$OUT/gen_dit_xl2.jsonl"
python benchmarks/gpu_generation.py --device cuda --dtype bfloat16 --preset DiT-XL/2 \
  --batch 2,16 --nfc 14 --methods full,taylorseer,rfc,rfc:scope=batch \
  --modes compiled,reduce-overhead \
  --out "$OUT/gen_dit_xl2_compiled.jsonl"
python benchmarks/gpu_generation.py --device cuda --dtype bfloat16 --preset flux-dev \
  --size 512 --batch 2 --nfc 14 --modes eager --out "$OUT/gen_flux.jsonl"
# granularity (issue 20): module / block / stack units, bf16 factors (the default for bf16),
# batch 2 and 16, eager and CUDA graphs; the stack row is the launch-bound case it targets
python benchmarks/gpu_generation.py --device cuda --dtype bfloat16 --preset DiT-XL/2 \
  --batch 2,16 --nfc 14 \
  --methods full,taylorseer,taylorseer:granularity=block,taylorseer:granularity=stack,rfe:granularity=block,rfe:granularity=stack,rfc:granularity=stack \
  --modes eager,reduce-overhead --out "$OUT/gen_dit_xl2_granularity.jsonl"
python benchmarks/gpu_generation.py --device cuda --dtype bfloat16 --preset flux-dev \
  --size 512 --batch 2 --nfc 14 \
  --methods full,taylorseer,taylorseer:granularity=stack,rfe:granularity=stack \
  --modes eager --out "$OUT/gen_flux_granularity.jsonl"
