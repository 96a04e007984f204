"""Whole generations timed: wall speedup against FLOPs speedup, RFC's overhead over TaylorSeer,
cache and peak memory, eager / compiled / CUDA graphs (the GPU check of the hot-path issue).

    # on a GPU (about 8 minutes on an H100-class card):
    python benchmarks/gpu_generation.py --device cuda --dtype bfloat16 --preset DiT-XL/2 \\
        --batch 2,16 --nfc 14,8 --modes eager,compiled,reduce-overhead --out gpu_dit.jsonl
    python benchmarks/gpu_generation.py --device cuda --dtype bfloat16 --preset flux-dev \\
        --size 512 --batch 2 --nfc 14 --modes eager,compiled --out gpu_flux.jsonl
    # the same script at toy size on a CPU (what the tests of this script run):
    python benchmarks/gpu_generation.py --preset DiT-FM --steps 10 --nfc 6 --batch 2

Random weights (timing does not depend on them). Every step is a model call wrapped in
``relcache.at_step``, with the batch doubled for classifier-free guidance; fixed schedules take
the interval with the closest NFC, RFC a threshold bisected to the NFC on this same input.
Times come from CUDA events on a GPU (perf_counter on a CPU), after one warm-up generation.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import relcache
from relcache.caching.methods.registry import parse_method

DIT_METHODS = ("full", "fora", "taylorseer", "rfc")


def build(preset: str, batch: int, size: int, device: str, dtype: torch.dtype):
    """The model and ``step(i, fn)``, one denoising step (CFG-doubled rows)."""
    if preset.lower().startswith("flux"):
        import importlib.util
        import sys
        from pathlib import Path

        path = Path(__file__).with_name("hot_path.py")
        spec = importlib.util.spec_from_file_location("hot_path", path)
        hot_path = importlib.util.module_from_spec(spec)
        sys.modules["hot_path"] = hot_path
        spec.loader.exec_module(hot_path)
        return hot_path.flux_setup(2 * batch, device, dtype, tokens=(size // 16) ** 2)
    from relcache.shipped.loading import random_dit

    with torch.device(device):
        model = random_dit(preset).to(dtype)
    c = model.config
    x = torch.randn(
        2 * batch, c.in_channels, c.input_size, c.input_size, device=device, dtype=dtype
    )
    y = torch.arange(2 * batch, device=device) % c.num_classes
    ts = torch.linspace(999, 0, 1000, device=device).round()

    def step(i: int, fn=model):
        with relcache.at_step(model, i):
            return fn(x, ts[min(i * 20, 999)].expand(2 * batch), y)

    return model, step


def generation_ms(step, fn, steps: int, device: torch.device) -> float:
    """Milliseconds of one ``steps``-step generation."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
        start.record()
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(steps):
            step(i, fn)
    if device.type == "cuda":
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    return (time.perf_counter() - t0) * 1e3


def config_for(name: str, nfc: int, steps: int, model, step):
    """The method at ``nfc``; RFC's threshold bisected on this input (one generation each)."""
    if name == "full":
        return None

    def calibrate(make, target):
        lo, hi = math.log(1e-4), math.log(10.0)
        for _ in range(12):
            tau = math.exp((lo + hi) / 2)
            with relcache.cached(model, make(tau)):
                with torch.no_grad():
                    for i in range(steps):
                        step(i)
                got = relcache.stats(model).nfc
            if abs(got - target) <= 0.5:
                break
            lo, hi = (math.log(tau), hi) if got > target else (lo, math.log(tau))
        return tau, {"calibration_nfc": got}

    entry, knobs = parse_method(name)  # e.g. rfc:scope=batch
    return entry.for_nfc(nfc, steps, calibrate=calibrate, **knobs)[0]


def run(args) -> list[dict]:
    """Every (batch, NFC, mode, method); one JSON row each."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = []
    for batch in args.batch:
        model, step = build(args.preset, batch, args.size, args.device, dtype)
        for mode in args.modes:
            for nfc in args.nfc:
                base = None
                for name in args.methods:
                    config = config_for(name, nfc, args.steps, model, step)
                    rows.append(one(model, step, config, name, batch, nfc, mode, args, device))
                    base = base or rows[-1]
                    rows[-1]["wall_speedup"] = base["ms"] / rows[-1]["ms"]
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def _mode(mode: str) -> str | None:
    return None if mode == "compiled" else mode


def compiled(model, config, mode: str):
    """The callable of one run: the model (eager), or compiled with ``relcache.compile`` (full
    compute: ``torch.compile(model, fullgraph=True)``), from a clean dynamo cache."""
    if mode == "eager":
        return model
    torch._dynamo.reset()
    if config is None:
        return torch.compile(model, fullgraph=True, mode=_mode(mode))
    relcache.compile(model, mode=_mode(mode))  # fullgraph: two graphs (RCS too)
    return model


def one(model, step, config, name, batch, nfc, mode, args, device) -> dict:
    """Warm up once, then time one generation of ``config``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with relcache.cached(model, config):
        try:
            fn = compiled(model, config, mode)
            generation_ms(step, fn, args.steps, device)  # warm-up (and compilation)
            ms = generation_ms(step, fn, args.steps, device)
            error = None
        except Exception as err:  # noqa: BLE001 - reported, e.g. CUDA graphs with Python state
            ms, error = math.nan, f"{type(err).__name__}: {err}"[:300]
        stats = relcache.stats(model) if config is not None else None
    return {
        "preset": args.preset,
        "batch": batch,
        "target_nfc": nfc,
        "mode": mode,
        "method": name if config is None else config.describe(),
        "nfc": args.steps if stats is None else stats.nfc,
        "ms": ms,
        "cache_mib": 0.0 if stats is None else stats.peak_cache_bytes / 2**20,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
        "flops_speedup": flops_speedup(args, config, batch, stats),
        "error": error,
    }


def flops_speedup(args, config, batch: int, stats) -> float:
    """Full-compute TFLOPs over the method's (reference DiT presets; NFC ratio for FLUX)."""
    if stats is None:
        return 1.0
    if args.preset.lower().startswith("flux"):
        return args.steps / stats.nfc
    from relcache.evaluation.flops import dit_flops

    nfc = stats.nfc if config.adaptive else None
    full = dit_flops(args.preset, None, steps=args.steps, batch=2 * batch)
    ours = dit_flops(args.preset, config, steps=args.steps, nfc=nfc, batch=2 * batch)
    return full.tflops / ours.tflops


def main() -> None:
    """Parse, run, write JSON lines."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="DiT-FM")
    p.add_argument("--size", type=int, default=512, help="FLUX image size in pixels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=_ints, default=(2,), help="images per call (rows x2 for CFG)")
    p.add_argument("--nfc", type=_ints, default=(14, 8))
    p.add_argument("--methods", type=lambda v: tuple(v.split(",")), default=DIT_METHODS)
    p.add_argument("--modes", type=lambda v: tuple(v.split(",")), default=("eager",))
    p.add_argument("--out", default=None, help="also write the rows as JSON lines here")
    args = p.parse_args()
    rows = run(args)
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


if __name__ == "__main__":
    main()
