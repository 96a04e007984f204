"""The least RFE can add to a compiled cached step on this machine, against TaylorSeer's step.

RFE needs ||I - I(i)|| of every cached module at every cached step: the module's input I (which a
TaylorSeer cached step never computes: inductor drops it) and the stored I(i) must both be read.
This times that read alone, fused by inductor into one reduction per module (tensors already in
memory: no norm or modulation recomputed), next to TaylorSeer's compiled full and cached steps
from the same run, and prints the generation overhead that floor alone implies at each NFC.

    python benchmarks/rfe_floor.py                 # DiT-FM, 128 rows (64 images + CFG), ~3 min
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from hot_path import dit_setup, time_steps  # benchmarks/: the script's own directory

import relcache
from relcache.api import _engine


def input_shapes(model: torch.nn.Module, call: Callable[[int], object]) -> list[tuple[int, ...]]:
    """The first input's shape of every cached module of a step."""
    shapes: dict[str, tuple[int, ...]] = {}

    def seen(name: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    with relcache.cached(model, relcache.TaylorSeer(order=2)):
        mods = dict(model.named_modules())
        hooks = [mods[n].register_forward_pre_hook(seen(n)) for n in _engine(model).names]
        with torch.no_grad():
            call(0)
        for h in hooks:
            h.remove()
    return list(shapes.values())


def floor_ms(shapes: list[tuple[int, ...]], repeats: int) -> float:
    """Median ms of ||x - y|| per row for every module's (input, stored input), compiled."""
    pairs = [(torch.randn(s), torch.randn(s)) for s in shapes]

    @torch.compile
    def norms(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.linalg.vector_norm((x - y).flatten(1), dim=1) for x, y in pairs]

    times = []
    for _ in range(3 + repeats):
        start = time.perf_counter()
        norms(pairs)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[3:])


def main() -> None:
    """The floor, TaylorSeer's steps, and the implied overhead per NFC."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--nfc", default="14,10,7")
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    model, call = dit_setup("DiT-FM", args.batch, "cpu", torch.float32)
    shapes = input_shapes(model, call)
    floor = floor_ms(shapes, args.repeats)
    ns = argparse.Namespace(compile=False, mode=None, repeats=args.repeats)
    with relcache.cached(model, relcache.TaylorSeer(order=2, full_steps=(0, 1, 2))):
        relcache.compile(model)
        steps = time_steps(model, call, ns)
    full, cached = steps["eager_full_ms"], steps["eager_cached_ms"]  # "eager": our compiled call
    print(f"{len(shapes)} cached modules, inputs {shapes[0]}: RFE floor {floor:.2f} ms per cached")
    print(f"step; TaylorSeer compiled: full step {full:.1f} ms, cached step {cached:.2f} ms")
    for nfc in (int(n) for n in args.nfc.split(",")):
        base = nfc * full + (args.steps - nfc) * cached
        extra = (args.steps - nfc) * floor
        print(f"NFC {nfc}: cached steps alone add at least {extra / base * 100:.1f}%")


if __name__ == "__main__":
    main()
