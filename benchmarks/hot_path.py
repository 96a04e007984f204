"""Per-step cost of the cached step: full vs FORA vs TaylorSeer vs RFE (fixed schedule).

    python benchmarks/hot_path.py --preset DiT-XL/2 --device cuda --dtype bfloat16 --batch 2
    python benchmarks/hot_path.py --preset DiT-FM --batch 128          # the shipped model, CPU

Steps 0-2 are full, every later call is a cached step; the median over --repeats calls is
reported (CUDA events on a GPU). RCS is left out: its decision adds one host read per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import relcache
from relcache.models import create_dit

METHODS = {
    "full": None,
    "fora": relcache.FORA(full_steps=(0, 1, 2)),
    "taylorseer": relcache.TaylorSeer(order=2, full_steps=(0, 1, 2)),
    "rfe": relcache.RFC(order=2, rcs=False, full_steps=(0, 1, 2)),
}


def time_steps(model, x, y, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls after 3 full ones (timesteps keep decreasing)."""
    cuda = x.is_cuda
    times = []
    with torch.no_grad():
        for i in range(3 + repeats):
            t = torch.full((x.shape[0],), 999.0 - i, device=x.device)
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
            t0 = time.perf_counter()
            model(x, t, y)
            if cuda:
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                times.append((time.perf_counter() - t0) * 1e3)
    return times[3:]


def main() -> None:
    """Print one JSON line per method: median step time and its ratio to the full step."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="DiT-FM")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    model = create_dit(args.preset).to(args.device, dtype).eval()
    c = model.config
    x = torch.randn(
        args.batch, c.in_channels, c.input_size, c.input_size, device=args.device, dtype=dtype
    )
    y = torch.randint(0, c.num_classes, (args.batch,), device=args.device)
    full_ms = None
    for name, cfg in METHODS.items():
        if cfg is not None:
            relcache.apply(model, cfg)
        time_steps(model, x, y, 3)  # warm-up
        ms = statistics.median(time_steps(model, x, y, args.repeats))
        if cfg is not None:
            relcache.remove(model)
        full_ms = full_ms or ms
        print(
            json.dumps(
                {
                    "method": name,
                    "preset": args.preset,
                    "batch": args.batch,
                    "device": args.device,
                    "dtype": args.dtype,
                    "step_ms": round(ms, 3),
                    "vs_full": round(ms / full_ms, 3),
                }
            )
        )


if __name__ == "__main__":
    main()
