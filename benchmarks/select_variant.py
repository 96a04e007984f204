"""How the recommended configuration was chosen: schedules and predictor variants at a budget,
on calibration seeds only (never the bench's reported seeds 0..999).

    python benchmarks/select_variant.py --seed 10000 --samples 128 --budgets 7,8,11,14 \\
        --variants p=1,p=1/clamp=1.05,p=1/clamp=1.1,p=1/clamp=1.2
    python benchmarks/select_variant.py --windows --samples 64 --seed 10000

A variant is ``p=<power>[/clamp=<c>]``: the full steps after the two warm-up steps are placed at
1 + (S-1) (j / (R+1))^p (p = 1: TaylorSeer's uniform schedule; p > 1 denser early, p < 1 denser
late), with TaylorSeer m=2 prediction, or RFE with its magnitude clamped to [1/c, c] times the
Taylor increment's. ``first=<k>`` instead keeps the uniform interval but makes step k the first
refresh after the warm-up (TaylorSeer's official schedule: k = W - 1 + N; diffusers' TaylorSeer
hook: k = W + 1), at the interval whose NFC is closest to the budget. ``--windows`` caches only
inside 8-step windows (full elsewhere) to show which steps matter. One JSON line per run: PSNR
and FD2FC against full compute on the same seeds.
"""

from __future__ import annotations

import argparse
import json

from relcache.caching.methods import Composed
from relcache.caching.predictors import RelationalPredictor, TaylorPredictor
from relcache.caching.schedulers import ExplicitSchedule, fixed_schedule, interval_for_nfc
from relcache.evaluation.quality import Quality
from relcache.evaluation.runner import run_method, sample_set
from relcache.shipped import load_classifier, load_generator

STEPS, WARMUP = 50, 2


def power_schedule(nfc: int, p: float) -> list[int]:
    """p = 1: TaylorSeer's schedule at the interval meeting ``nfc``; else the warm-up steps,
    then nfc - W full steps at 1 + (S-1) (j/(R+1))^p (strictly increasing)."""
    if p == 1:
        return fixed_schedule(STEPS, interval_for_nfc(nfc, STEPS, WARMUP), WARMUP)
    r, pos = nfc - WARMUP, list(range(WARMUP))
    for j in range(1, r + 1):
        pos.append(max(pos[-1] + 1, 1 + round((STEPS - 1) * (j / (r + 1)) ** p)))
    return pos


def first_schedule(nfc: int, first: int) -> list[int]:
    """The warm-up steps, then every N steps from ``first``, N meeting ``nfc`` most closely."""

    def full(n: int) -> list[int]:
        return list(range(WARMUP)) + list(range(first, STEPS, n))

    best = min(range(1, STEPS), key=lambda n: (abs(len(full(n)) - nfc), n))
    return full(best)


def variant(spec: str, nfc: int) -> Composed:
    """``p=1.3/clamp=1.1`` -> a method on that schedule with that predictor."""
    knobs = dict(part.split("=") for part in spec.split("/"))
    if "first" in knobs:
        schedule = tuple(first_schedule(nfc, int(knobs["first"])))
    else:
        schedule = tuple(power_schedule(nfc, float(knobs.get("p", 1))))
    clamp = knobs.get("clamp")

    def predictor():
        return RelationalPredictor(2, float(clamp)) if clamp else TaylorPredictor(2)

    return Composed(lambda: ExplicitSchedule(schedule), predictor, spec)


def windows() -> list[tuple[str, Composed]]:
    """TaylorSeer m=2 caching (a full step every 8) only inside [a, a+8); full elsewhere."""
    out = []
    for a in range(WARMUP, STEPS, 8):
        full = tuple(i for i in range(STEPS) if i < a or i >= a + 8 or (i - a) % 8 == 0)
        out.append((f"window {a}-{min(a + 8, STEPS)}", _explicit(full)))
    return out


def _explicit(full: tuple[int, ...]) -> Composed:
    return Composed(lambda: ExplicitSchedule(full), lambda: TaylorPredictor(2), "window")


def main() -> None:
    """Run the variants (or the windows) and print one JSON line each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=10_000, help="calibration seeds start here")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--budgets", default="7,8,11,14")
    p.add_argument("--variants", default="p=1,p=1/clamp=1.05")
    p.add_argument("--windows", action="store_true")
    args = p.parse_args()
    model, classifier = load_generator(), load_classifier()
    seeds, labels = sample_set(args.seed, args.samples, model.config.num_classes)
    kw = dict(steps=STEPS, cfg_scale=3.0, batch_size=64, progress=False)
    quality = Quality(run_method(model, None, seeds, labels, **kw), labels, classifier)
    if args.windows:
        runs = [(name, None, cfg) for name, cfg in windows()]
    else:
        budgets = [int(b) for b in args.budgets.split(",")]
        runs = [(v, b, variant(v, b)) for b in budgets for v in args.variants.split(",")]
    for name, nfc, config in runs:
        q = quality(run_method(model, config, seeds, labels, **kw).images)
        row = {
            "variant": name,
            "nfc": nfc,
            "full_steps": None if nfc is None else sorted(config.scheduler().full_steps)[:6],
            "psnr": round(q["psnr"], 2),
            "fd2fc": round(q["fd2fc"], 3),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
