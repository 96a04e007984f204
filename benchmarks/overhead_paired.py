"""RFC's wall-clock overhead over TaylorSeer, timed in interleaved rounds.

The bench (``run_overhead.sh``) times each method once, minutes apart, so a drift of the shared
machine lands on one method. Here every round generates the same batch with every method, in a
rotated order, and the overhead is the ratio of medians over rounds (paired, robust to drift).
The methods and the RCS thresholds are those of a bench run (its results.json), so the NFCs
match the bench's.

    python benchmarks/overhead_paired.py                       # 64 images x 5 rounds, ~8 min
    python benchmarks/overhead_paired.py --budgets 14 --rounds 3
    python benchmarks/overhead_paired.py --compile             # relcache.compile, ~15 min

``--compile``: every method gets its own copy of the model, cached and compiled with
``relcache.compile`` (inductor), and one untimed generation of the same batch compiles it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import relcache
from relcache.caching.methods import CacheMethod
from relcache.evaluation.budgets import bench_method
from relcache.evaluation.runner import per_sample_noise, run_method, sample_batch, warm_up
from relcache.shipped import load_generator


def configs(results: dict, budget: int, steps: int) -> dict:
    """Method name -> its config at ``budget``, RCS at the bench's calibrated threshold."""
    out = {}
    for run_id, row in results["runs"].items():
        if not run_id.endswith(f"@{budget}"):
            continue
        spec = bench_method(row["method"])
        tau = row.get("threshold")

        def calibrate(make, target, tau=tau):
            return tau, {}

        config, _ = spec.entry.for_nfc(budget, steps, calibrate=calibrate, **spec.knobs)
        out[row["method"]] = (row["label"], config)
    return out


Runner = Callable[[list[int], torch.Tensor], tuple[float, float]]  # -> (seconds, NFC)


class Compiled:
    """One method on its own compiled copy of the model: ``(seeds, labels) -> (s, NFC)``."""

    def __init__(self, config: CacheMethod, steps: int, cfg_scale: float) -> None:
        self.model, self.steps, self.cfg_scale = load_generator(), steps, cfg_scale
        relcache.apply(self.model, config)
        relcache.compile(self.model)

    def __call__(self, seeds: list[int], labels: torch.Tensor) -> tuple[float, float]:
        c = self.model.config
        noise = per_sample_noise(seeds, (c.in_channels, c.input_size, c.input_size))
        relcache.reset(self.model)
        start = time.perf_counter()
        with torch.no_grad():
            sample_batch(self.model, noise, labels, steps=self.steps, cfg_scale=self.cfg_scale)
        return time.perf_counter() - start, relcache.stats(self.model).nfc


def main() -> None:
    """Per budget: median seconds per method over rounds and the ratio to TaylorSeer's."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="benchmarks/results/overhead/results.json")
    p.add_argument("--budgets", default="14,10,7")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=64, help="one batch of this many images")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--compile", action="store_true", help="relcache.compile every method")
    args = p.parse_args()
    results = json.loads(Path(args.results).read_text())
    model = None if args.compile else load_generator()  # compiled: one copy per method
    if args.compile:
        torch._dynamo.config.recompile_limit = 64  # one compiled forward per method's model
    else:
        warm_up(model, 3.0)
    seeds, labels = list(range(args.images)), torch.arange(args.images) % 10
    kw = dict(steps=args.steps, cfg_scale=3.0, batch_size=args.images, progress=False)
    print("| budget | method | NFC | median s | min s | vs TaylorSeer (medians) |")
    print("|---|---|---|---|---|---|")
    for budget in [int(b) for b in args.budgets.split(",")]:
        methods = configs(results, budget, args.steps)
        times: dict[str, list[float]] = {m: [] for m in methods}
        nfc = {}
        runs = {name: _runner(model, config, args, kw) for name, (_, config) in methods.items()}
        for r in range(args.rounds):
            order = list(methods)[r % len(methods) :] + list(methods)[: r % len(methods)]
            for name in order:
                seconds, nfc[name] = runs[name](seeds, labels)
                times[name].append(seconds)
        base = next((statistics.median(t) for m, t in times.items() if "taylorseer" in m), None)
        for name, t in times.items():
            med = statistics.median(t)
            vs = "-" if base is None or "taylorseer" in name else f"{(med / base - 1) * 100:+.1f}%"
            label = methods[name][0]
            print(f"| {budget} | {label} | {nfc[name]:.2f} | {med:.2f} | {min(t):.2f} | {vs} |")


def _runner(
    model: torch.nn.Module | None, config: CacheMethod, args: argparse.Namespace, kw: dict
) -> Runner:
    """One method's runner, eager or compiled (then warmed up: the first generation
    compiles)."""
    if args.compile:
        run = Compiled(config, args.steps, kw["cfg_scale"])
        run(list(range(args.images)), torch.arange(args.images) % 10)
        return run

    def eager(seeds: list[int], labels: torch.Tensor) -> tuple[float, float]:
        gen = run_method(model, config, seeds, labels, **kw)
        return gen.seconds, gen.mean_nfc

    return eager


if __name__ == "__main__":
    main()
