"""``relcache demo``: the main job, on the shipped Fashion-MNIST DiT."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    from relcache.commands.common import int_list

    p = sub.add_parser(
        "demo",
        help="compare full compute, FORA, TaylorSeer and RFC on the shipped model",
        description="Runs full compute, FORA, TaylorSeer and RFC (threshold calibrated to each "
        "budget) on the shipped Fashion-MNIST DiT with the same seeds; prints a table and writes "
        "table.json and grid.png into --out.",
    )
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--samples", type=int, default=64, help="images per method (default 64)")
    p.add_argument(
        "--budgets",
        type=int_list,
        default=(14, 8),
        help="target NFCs, comma-separated (default 14,8)",
    )
    p.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i")
    p.add_argument("--cfg-scale", type=float, default=3.0, help="guidance scale (default 3.0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward batch")
    p.add_argument("--out", type=Path, default=Path("relcache_demo"), help="output folder")
    p.add_argument("--json", action="store_true", help="print the table as JSON rows")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the shipped models, run the demo, print the table."""
    import torch

    from relcache.evaluation.demo import DemoSettings, run_demo
    from relcache.evaluation.report import format_table
    from relcache.shipped import load_classifier, load_generator

    settings = DemoSettings(
        steps=args.steps,
        samples=args.samples,
        budgets=args.budgets,
        seed=args.seed,
        cfg_scale=args.cfg_scale,
        batch_size=args.batch_size,
        out=args.out,
        progress=not args.no_progress,
    )
    torch.manual_seed(settings.seed)
    rows = run_demo(load_generator(), load_classifier(), settings)
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_table(rows))
        print(f"\nwrote {args.out / 'table.json'} and {args.out / 'grid.png'}", file=sys.stderr)
    return 0
