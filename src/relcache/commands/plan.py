"""``relcache plan``: a memory plan before any work (weights, cache, activations, fits),
counted on the meta device."""

from __future__ import annotations

import argparse
import json

from relcache.caching.methods import KNOBS
from relcache.commands.common import check_at_least


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plan`` subcommand."""
    from relcache.evaluation.memory_plan import DEFAULT_METHOD
    from relcache.evaluation.presets import PRESETS

    p = sub.add_parser(
        "plan",
        help="memory plan: weights, cache per granularity and factor dtype, activations, fits",
        description="Counts, on the meta device (no download, no GPU), the GPU memory a cached "
        "generation needs: the transformer's weights, the cache of each granularity and factor "
        "dtype, the activations' peak (attention as a fused kernel), and whether each fits. "
        "Example: relcache plan --model wan2.1-14b --height 720 --width 1280 --frames 81 "
        "--method rfc2 --gpu-memory 80",
    )
    p.add_argument("--model", default="dit-fm", help=f"preset: {', '.join(PRESETS)}")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the preset's)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the preset's)")
    p.add_argument("--frames", type=int, default=None, help="video frames (default: preset's)")
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        help=f"a method spec of the registry, e.g. rfc2, taylorseer2:interval=4 (default "
        f"{DEFAULT_METHOD})",
    )
    for knob in ("granularity", "factors_dtype"):
        p.add_argument(
            "--" + knob.replace("_", "-"),
            choices=KNOBS[knob].choices,
            default=None,
            help=f"{KNOBS[knob].help} (default: every one)",
        )
    p.add_argument("--batch", type=int, default=1, help="samples per generation (default 1)")
    p.add_argument(
        "--gpu-memory",
        type=float,
        default=80.0,
        help="GPU memory in GiB (default 80: an 80 GB H100 / A100)",
    )
    p.add_argument("--json", action="store_true", help='print {"rows": [...], ...} as JSON')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Plan and print."""
    from relcache.evaluation.memory_plan import plan, table

    check_at_least("--batch", args.batch, 1, "the number of samples generated together")
    check_at_least("--height", args.height, 1, "pixels, e.g. 1024")
    check_at_least("--width", args.width, 1, "pixels, e.g. 1024")
    check_at_least("--frames", args.frames, 1, "e.g. 81 for Wan2.1")
    if not args.gpu_memory > 0:
        raise ValueError(f"--gpu-memory must be a positive number of GiB, got {args.gpu_memory}")
    result = plan(
        args.model,
        method=args.method,
        height=args.height,
        width=args.width,
        frames=args.frames,
        batch=args.batch,
        granularity=args.granularity,
        factors_dtype=args.factors_dtype,
        gpu_memory=args.gpu_memory,
    )
    print(json.dumps(result.as_dict(), indent=1) if args.json else table(result))
    return 0
