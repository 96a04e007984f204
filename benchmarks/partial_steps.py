"""Where per-row RCS loses time: each step of one generation timed, against TaylorSeer's.

Per-row RCS runs a step where only some rows need a full step as a cached step for every row
plus the full rows as a sub-batch. This prints, per step, how many rows ran fully, the step's
time, and its excess over a proportional model (TaylorSeer's median cached step + the rows'
share of its median full step minus cached step).

    python benchmarks/partial_steps.py                 # 64 images, NFC ~14, ~1 min
    python benchmarks/partial_steps.py --threshold 0.1221
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch

import relcache
from relcache.evaluation.runner import sample_batch, warm_up
from relcache.shipped import load_generator


def timed_generation(model, config, noise, labels) -> tuple[list[float], list[int]]:
    """Seconds per model call (one per step: CFG is batched) and rows full per step."""
    times = []
    forward = model.forward

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        times.append(time.perf_counter() - start)
        return out

    model.forward = timed
    try:
        with relcache.cached(model, config), torch.no_grad():
            sample_batch(model, noise, labels, steps=50, cfg_scale=3.0)
            rows = Counter(s for row in relcache.stats(model).schedules["call0"] for s in row)
    finally:
        del model.forward
    return times, [rows[s] for s in range(len(times))]


def main() -> None:
    """The per-step table, then the totals."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.04217, help="RCS tau (0.04217: NFC 14)")
    p.add_argument("--interval", type=int, default=4, help="TaylorSeer's N (4: NFC 14)")
    args = p.parse_args()
    model = load_generator()
    labels = torch.arange(args.images) % 10
    noise = torch.randn(args.images, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    warm_up(model, 3.0)
    ts_times, ts_rows = timed_generation(
        model, relcache.TaylorSeer(interval=args.interval, order=2), noise, labels
    )
    rcs_times, rcs_rows = timed_generation(
        model, relcache.RFC(order=2, threshold=args.threshold), noise, labels
    )
    batch = 2 * args.images
    full = statistics.median(t for t, n in zip(ts_times[2:], ts_rows[2:], strict=True) if n)
    cached = statistics.median(t for t, n in zip(ts_times, ts_rows, strict=True) if not n)
    print(f"TaylorSeer: full step {full * 1e3:.0f} ms, cached step {cached * 1e3:.1f} ms (medians)")
    print("| step | rows full | ms | proportional ms | excess ms |")
    print("|---|---|---|---|---|")
    model_ms = 0.0
    for step, (t, n) in enumerate(zip(rcs_times, rcs_rows, strict=True)):
        if step < 2:
            continue
        expected = cached + n / batch * (full - cached)
        model_ms += expected
        ms = [t * 1e3, expected * 1e3, (t - expected) * 1e3]
        print(f"| {step} | {n} | " + " | ".join(f"{v:.0f}" for v in ms) + " |")
    some = sum(0 < n for n in rcs_rows[2:])
    print(f"steps 2-49 with some but not all rows full: {sum(0 < n < batch for n in rcs_rows[2:])}"
          f", with any row full: {some}")  # fmt: skip
    steps = zip(rcs_rows[2:], rcs_times[2:], strict=True)
    partial = [(n, t - cached - n / batch * (full - cached)) for n, t in steps if 0 < n < batch]
    if len(partial) > 1:
        rows_full = torch.tensor([float(n) for n, _ in partial])
        excess = torch.tensor([e for _, e in partial])
        design = torch.stack([torch.ones_like(rows_full), rows_full], dim=1)  # (P, 2)
        fixed, per_row = torch.linalg.lstsq(design, excess[:, None]).solution[:, 0].tolist()
        print(f"excess of a partial step (least squares): {fixed * 1e3:.1f} ms + "
              f"{per_row * 1e3:.2f} ms per full row")  # fmt: skip
    print(
        f"total s: TaylorSeer {sum(ts_times):.2f}, per-row RFC {sum(rcs_times):.2f} "
        f"(steps 2-49: {sum(rcs_times[2:]):.2f} vs proportional {model_ms:.2f})"
    )


if __name__ == "__main__":
    main()
