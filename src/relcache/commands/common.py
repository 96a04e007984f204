"""Argument helpers shared by the subcommands: building a method config from flags."""

from __future__ import annotations

import argparse

from relcache.caching.methods import FORA, RFC, CacheMethod, TaylorSeer

METHOD_CHOICES = ("none", "fora", "taylorseer", "rfc", "rfe", "rcs")


def add_method_args(parser: argparse.ArgumentParser) -> None:
    """Flags that define one caching method."""
    g = parser.add_argument_group("caching method")
    g.add_argument(
        "--method",
        choices=METHOD_CHOICES,
        default="rfc",
        help="none = full compute; rfe / rcs = RFC's ablations (+RFE, +RCS)",
    )
    g.add_argument(
        "--interval",
        type=int,
        default=None,
        help="fixed schedule: a full step every N steps (FORA, TaylorSeer, +RFE)",
    )
    g.add_argument("--order", type=int, default=2, help="Taylor order m (default 2)")
    g.add_argument("--warmup", type=int, default=2, help="first W steps are full (default 2)")
    g.add_argument("--threshold", type=float, default=None, help="RCS threshold tau")
    g.add_argument(
        "--full-steps",
        type=_int_list,
        default=None,
        help="explicit schedule, e.g. 0,1,5,9 (replaces --interval / RCS)",
    )


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from err


def method_from_args(
    args: argparse.Namespace, *, threshold_default: float | None = None
) -> CacheMethod | None:
    """The config the flags describe (None for --method none)."""
    m = args.method
    if m == "none":
        return None
    fixed = {"full_steps": args.full_steps} if args.full_steps else {}
    interval = args.interval if args.interval is not None else 4
    if m == "fora":
        return FORA(interval=interval, warmup=args.warmup, **fixed)
    if m == "taylorseer":
        return TaylorSeer(interval=interval, order=args.order, warmup=args.warmup, **fixed)
    rcs = m in ("rfc", "rcs") and not args.full_steps and args.interval is None
    threshold = args.threshold if args.threshold is not None else threshold_default
    schedule = {} if rcs else (fixed or {"interval": interval})
    return RFC(
        order=args.order,
        warmup=args.warmup,
        rfe=m != "rcs",
        rcs=rcs,
        threshold=threshold if rcs else None,
        **schedule,
    )
