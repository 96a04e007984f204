#!/usr/bin/env bash
# One-shot GPU training of the shipped generator (used on the lent H100/H200; see the model card).
# Usage: MINUTES=3 bash scripts/device_train.sh OUTDIR  (data in .data/fashion-mnist)
set -u
out=${1:-runs/dit_fm}
export RELCACHE_FASHION_MNIST=$PWD/.data/fashion-mnist PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
python3 scripts/train_generator.py --out "$out" --minutes "${MINUTES:-3}" --compile \
  --no-progress --log-every 1000 --checkpoint-every 1000000 2>&1 | tail -25
rm -f "$out/checkpoint.pt"
# files coming back from the device must be < 16 MB each: split the fp32 weights in two halves
python3 - "$out" <<'PY'
import sys
from safetensors.torch import load_file, save_file
from safetensors import safe_open
path = sys.argv[1] + "/ema.safetensors"
meta = safe_open(path, "pt").metadata()
sd = load_file(path)
keys = sorted(sd)
for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
    save_file({k: sd[k] for k in part}, f"{sys.argv[1]}/ema_part{i}.safetensors", metadata=meta)
PY
rm -f "$out/ema.safetensors"; ls -la "$out"
