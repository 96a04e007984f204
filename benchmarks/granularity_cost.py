"""What a cached step costs end to end, per granularity (issue 20), on the shipped DiT-FM.

    python benchmarks/granularity_cost.py --samples 64 --nfc 14 --repeats 3

Times whole generations (batch of ``--samples`` images, DDIM 50 steps, CFG 3) of full compute and
of each method in one process, the fastest of ``--repeats`` runs each, interleaved so drift in the
machine's speed hits every method alike. With T the full-compute time, t = T / steps the cost of a
full step, and T_m a method's time at n full steps, a cached step costs
(T_m - n t) / (steps - n), reported as a share of t; "wall / FLOPs" is (T / T_m) over the counted
FLOPs speedup, taken as steps / NFC (a cached step adds a negligible share of FLOPs). Prints a
markdown table (and JSON lines with --json).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import relcache
from relcache.caching.methods.registry import parse_method
from relcache.evaluation.runner import per_sample_noise, sample_batch, sample_set
from relcache.shipped.loading import load_generator

METHODS = (
    "taylorseer2",
    "taylorseer2:granularity=block",
    "taylorseer2:granularity=stack",
    "rfe2",
    "rfe2:granularity=block",
    "rfe2:granularity=stack",
    "rfe2:clamp=1.05",
)


def _timed(model, noise, labels, steps: int) -> float:
    """Seconds of one generation."""
    start = time.perf_counter()
    sample_batch(model, noise, labels, steps=steps, cfg_scale=3.0)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--nfc", type=int, default=14)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    model = load_generator()
    c = model.config
    seeds, labels = sample_set(0, a.samples, c.num_classes)
    noise = per_sample_noise(seeds, (c.in_channels, c.input_size, c.input_size))
    configs = {}
    for spec in a.methods.split(","):
        entry, knobs = parse_method(spec)
        configs[spec] = entry.for_nfc(a.nfc, a.steps, **knobs)[0]
    times: dict[str, list[float]] = {"full": [], **{s: [] for s in configs}}
    nfc, cache = {"full": float(a.steps)}, {"full": 0.0}
    _timed(model, noise[:2], labels[:2], 3)  # allocator and first-call warm-up
    for _ in range(a.repeats):
        times["full"].append(_timed(model, noise, labels, a.steps))
        for spec, cfg in configs.items():
            with relcache.cached(model, cfg):
                times[spec].append(_timed(model, noise, labels, a.steps))
                st = relcache.stats(model)
                nfc[spec], cache[spec] = st.nfc, st.peak_cache_bytes / 2**20
    full = min(times["full"])
    step = full / a.steps
    print("| method | NFC | s / generation | cached step / full step | wall / FLOPs | cache MiB |")
    print("|---|---|---|---|---|---|")
    for spec, ts in times.items():
        t, n = min(ts), nfc[spec]
        share = (t - n * step) / (a.steps - n) / step if n < a.steps else float("nan")
        ratio = (full / t) / (a.steps / n)
        label = spec if spec == "full" else configs[spec].describe()
        cost = "-" if n >= a.steps else f"{share:.1%}"
        print(f"| {label} | {n:.0f} | {t:.2f} | {cost} | {ratio:.2f} | {cache[spec]:.1f} |")
        if a.json:
            row = {"method": label, "nfc": n, "seconds": t, "cached_step_share": share,
                   "wall_over_flops": ratio, "cache_mib": cache[spec], "runs": ts}  # fmt: skip
            print(json.dumps(row))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.samples}")


if __name__ == "__main__":
    main()
