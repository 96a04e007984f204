"""``relcache demo``: the main job, on the shipped Fashion-MNIST DiT."""

from __future__ import annotations

import argparse
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
        "table.json and grid.png into --out. In table.json a non-finite number is null (the PSNR "
        "of full compute against itself: identical). Wall-clock columns are noisy on a shared "
        "machine; NFC and TFLOPs are exact.",
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


WALL_CLOCK_NOTE = (
    "note: the seconds and wall-speedup columns are wall-clock times of one run per method, "
    "noisy on a shared or loaded machine (other processes slow whichever method runs then); "
    "NFC and TFLOPs are exact. PSNR of full compute is inf (null in table.json): identical to "
    "the reference."
)


def run(args: argparse.Namespace) -> int:
    """Validate every argument, load the shipped models, run the demo, print the table."""
    import torch

    from relcache.commands.common import check_out_dir
    from relcache.evaluation.demo import DemoSettings, run_demo
    from relcache.evaluation.rows import to_json
    from relcache.evaluation.tables import format_table
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
    check_out_dir(args.out)
    torch.manual_seed(settings.seed)
    rows = run_demo(load_generator(), load_classifier(), settings)
    if args.json:
        print(to_json(rows))
    else:
        print(format_table(rows))
        print(f"\n{WALL_CLOCK_NOTE}")
        print(f"\nwrote {args.out / 'table.json'} and {args.out / 'grid.png'}", file=sys.stderr)
    return 0
