"""``relcache flops``: NFC and TFLOPs of one generation, counted on the meta device."""

from __future__ import annotations

import argparse
import dataclasses
import json

from relcache.commands.common import add_method_args, check_at_least, method_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``flops`` subcommand."""
    from relcache.models import DIT_PRESETS

    p = sub.add_parser(
        "flops",
        help="count NFC and TFLOPs of one generation (reference DiT presets)",
        description="Counts FLOPs of a whole generation of one image (CFG-doubled batch) from "
        "shapes on the meta device. Example: relcache flops --model dit-xl-2 --method "
        "taylorseer --interval 4 --order 2 --json",
    )
    p.add_argument(
        "--model",
        default="DiT-XL/2",
        help=f"DiT preset ({', '.join(DIT_PRESETS)}; lowercase aliases like dit-xl-2)",
    )
    p.add_argument("--input-size", type=int, default=None, help="latent size (64 for 512px)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--batch", type=int, default=2, help="rows per forward (2 = one CFG image)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_method_args(p, default="taylorseer")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Count and print."""
    from relcache.caching.methods import parse_method
    from relcache.evaluation.flops import dit_flops

    check_at_least("--steps", args.steps, 1, "the default is 50")
    check_at_least("--batch", args.batch, 1, "2 is one image with CFG")
    check_at_least("--input-size", args.input_size, 1, "the latent size, e.g. 32 for 256px")
    entry, implied = (None, {}) if args.method == "none" else parse_method(args.method)
    threshold = args.threshold if args.threshold is not None else implied.get("threshold")
    if entry is not None and entry.adaptive and args.nfc is None and threshold is None:
        raise ValueError(
            f"--method {args.method} decides its full steps from the data: pass the budget with "
            "--nfc N"
        )
    config = method_from_args(args, args.steps)
    nfc = args.nfc if config is not None and config.adaptive else None
    report = dit_flops(
        args.model,
        config,
        steps=args.steps,
        nfc=nfc,
        batch=args.batch,
        input_size=args.input_size,
    )
    if args.json:
        print(json.dumps(dataclasses.asdict(report)))
    else:
        print(
            f"{report.method}: NFC {report.nfc:g} / {report.steps}, {report.tflops:.2f} TFLOPs "
            f"(full step {report.full_step_gflops:.1f} GFLOPs, cached step "
            f"{report.cached_step_gflops:.2f} GFLOPs)"
        )
    return 0
