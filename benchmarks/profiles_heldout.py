"""The shipped profiles on held-out seeds: PSNR vs full compute, fitted against official schedules.

    python benchmarks/profiles_heldout.py --samples 64   # seeds 0-63, the demo's images

For each shipped profile (the shipped DiT-FM, 50 steps, CFG 3.0): TaylorSeer m=2 and the
recommended RFE (clamp 1.05) on TaylorSeer's official schedule with the same NFC, and both on the
profile's fitted full steps. Prints one Markdown row per NFC.
"""

from __future__ import annotations

import argparse

import relcache
from relcache.caching.methods import interval_for_nfc, load_profile, shipped_profiles
from relcache.evaluation.fitting import REPORT_SEEDS, evaluate_schedules
from relcache.shipped import load_generator


def main() -> None:
    """Score every shipped profile's schedule and the official one on the held-out seeds."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=64, help="held-out images, seeds 0..")
    args = p.parse_args()
    if not 1 <= args.samples <= len(REPORT_SEEDS):
        raise SystemExit(f"--samples must lie in 1..{len(REPORT_SEEDS)} (the held-out seeds)")
    model = load_generator()
    print("| NFC | TaylorSeer m=2 official | fitted | RFE clamp 1.05 official | fitted | steps |")
    print("|---|---|---|---|---|---|")
    for path in shipped_profiles():
        prof = load_profile(path)
        n = interval_for_nfc(prof.nfc, prof.steps)
        configs = [
            relcache.TaylorSeer(order=2, interval=n),
            relcache.TaylorSeer(order=2, full_steps=prof.full_steps),
            relcache.RFE(order=2, interval=n, clamp=1.05),
            relcache.RFE(order=2, full_steps=prof.full_steps, clamp=1.05),
        ]
        scores = evaluate_schedules(model, configs, 0, args.samples, prof.steps, prof.cfg_scale)
        cells = " | ".join(f"{s:.2f}" for s in scores)
        print(f"| {prof.nfc} | {cells} | {', '.join(map(str, prof.full_steps))} |", flush=True)


if __name__ == "__main__":
    main()
