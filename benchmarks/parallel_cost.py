"""What relcache's reductions cost under context parallelism (README "Several GPUs"): two gloo
CPU ranks run a tiny FLUX (2 prompts, true CFG, 8 steps) under diffusers' Ulysses 2, per method:
relcache's collectives per root call, the seconds spent in them, the model's own collectives,
and the generation's wall-clock; then one all_reduce of a step's payload timed alone.

    python benchmarks/parallel_cost.py [--size 16] [--repeats 5]

CPU-only (the accelerator lookup and gloo shims of tests/test_parallel.py); on GPUs the
all_reduces are NCCL's and asynchronous, so these are an upper bound of their latency only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from relcache.caching import parallel
from tests import test_parallel as tp


def _timed_all_reduce(spent: list[float]) -> Any:
    """parallel._all_reduce that also adds its seconds to ``spent`` (gloo: synchronous)."""
    original = parallel._all_reduce

    def timed(flat: torch.Tensor, op: Any, group: Any, kind: str) -> None:
        start = time.perf_counter()
        original(flat, op, group, kind)
        spent.append(time.perf_counter() - start)

    return timed


def _count_model_collectives(counts: Counter) -> None:
    """Count the functional collectives diffusers' attention issues (all-to-all, all-gather)."""
    import torch.distributed._functional_collectives as funcol

    for name in ("all_to_all_single", "all_gather_tensor"):
        original = getattr(funcol, name)

        def counted(*args: Any, _name: str = name, _f: Any = original, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _f(*args, **kwargs)

        setattr(funcol, name, counted)


def _measure(pipe: Any, method: Any, size: int, repeats: int, model_calls: Counter) -> dict:
    """Median seconds of a generation, relcache's collectives and their seconds per call."""
    spent: list[float] = []
    parallel._all_reduce, original = _timed_all_reduce(spent), parallel._all_reduce
    seconds, runs = [], []
    try:
        for _ in range(repeats):
            spent.clear()
            model_calls.clear()
            start = time.perf_counter()
            run = tp._cached_run(partial(tp._generate, "flux", pipe, (size, 1)), pipe, method, None)
            seconds.append(time.perf_counter() - start)
            runs.append((sum(spent), dict(model_calls), run))
    finally:
        parallel._all_reduce = original
    calls = len(runs[0][2]["outs"])  # root calls: 8 steps x 2 CFG branches
    return {
        "seconds": statistics.median(seconds),
        "relcache_per_call": sum(runs[0][2]["collectives"].values()) / calls,
        "relcache_seconds": statistics.median(r[0] for r in runs),
        "model_per_call": sum(runs[0][1].values()) / calls,
        "nfc": runs[0][2]["nfc"],
    }


def _latency(numel: int, repeats: int = 500) -> float:
    """Median seconds of one all_reduce of ``numel`` float32 over the world."""
    flat = torch.zeros(numel)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dist.all_reduce(flat)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rank(rank: int, port: int, size: int, repeats: int) -> None:
    """One rank: every method timed; rank 0 prints."""
    import diffusers

    from tests import test_diffusers as td

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tp._shims()
    pipe = td._pipe("flux")
    pipe.transformer.enable_parallelism(config=diffusers.ContextParallelConfig(ulysses_degree=2))
    model_calls: Counter = Counter()
    _count_model_collectives(model_calls)
    methods = tp.methods(0.1).items()
    rows = {name: _measure(pipe, m, size, repeats, model_calls) for name, m in methods}
    latency = {n: _latency(n) for n in (2, 4, 128)}
    if rank == 0:
        print(f"tiny FLUX, {size}x{size} ({(size // 2) ** 2} image + 6 text tokens), batch 2, "
              f"true CFG, 8 steps, Ulysses 2 on 2 gloo CPU ranks, median of {repeats}")  # fmt: skip
        print("| method | NFC | s / generation | relcache collectives / call | in them, s | "
              "model collectives / call |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {r['nfc']:g} | {r['seconds']:.3f} | {r['relcache_per_call']:.2f} "
                  f"| {r['relcache_seconds']:.4f} | {r['model_per_call']:.1f} |")  # fmt: skip
        for n, s in latency.items():
            print(f"all_reduce of {n} float32 over 2 gloo ranks: {s * 1e6:.0f} us (median)")
    dist.destroy_process_group()


def main() -> None:
    """Spawn the two ranks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16, help="image side (tokens: (size/2)^2)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    port = tp._free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, args.size, args.repeats)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
