"""Quality of the shipped generator at full compute: class accuracy and FD to the test set.

python scripts/evaluate_generator.py --samples 1000 --cfg-scale 3.0 --grid grid.png
"""

from __future__ import annotations

import argparse
import json

import torch

from relcache.evaluation import metrics
from relcache.evaluation.plots import save_grid
from relcache.evaluation.runner import run_method
from relcache.shipped import load_classifier, load_generator


def main(argv: list[str] | None = None) -> int:
    """Sample seeds 0..N-1 (class i % 10), print accuracy and FD as JSON, save a grid."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--grid", default=None, help="write a 10x10 grid PNG here")
    args = p.parse_args(argv)
    model, classifier = load_generator(), load_classifier()
    labels = torch.arange(args.samples) % model.config.num_classes
    gen = run_method(
        model,
        None,
        list(range(args.samples)),
        labels,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        batch_size=args.batch_size,
    )
    result = {
        "samples": args.samples,
        "steps": args.steps,
        "cfg_scale": args.cfg_scale,
        "class_accuracy": metrics.class_accuracy(gen.images, labels, classifier),
        "fd_to_test_set": metrics.fd_to_test_set(gen.images, classifier),
        "sampling_seconds": gen.seconds,
    }
    print(json.dumps(result))
    if args.grid:
        rows = [gen.images[i * 10 : (i + 1) * 10] for i in range(min(10, args.samples // 10))]
        save_grid(
            rows, [f"seeds {10 * i}-{10 * i + 9}" for i in range(len(rows))], args.grid, columns=10
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
