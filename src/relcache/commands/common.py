"""Argument helpers shared by the subcommands: list parsing and method flags from the registry."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from relcache.caching.methods import KNOBS, METHODS, CacheMethod, parse_method

T = TypeVar("T")


def parse_list(item: Callable[[str], T], what: str) -> Callable[[str], tuple[T, ...]]:
    """An argparse ``type=`` for comma-separated values, e.g. ``parse_list(int, "NFCs")``."""

    def parse(text: str) -> tuple[T, ...]:
        try:
            return tuple(item(v.strip()) for v in text.split(",") if v.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, e.g. 14,8; got {text!r}"
            ) from err

    return parse


int_list = parse_list(int, "integers")
name_list = parse_list(str.lower, "names")


def methods_help() -> str:
    """One line per registered method: name, knobs, what it does."""
    return "; ".join(f"{e.name} ({', '.join(e.knobs)}): {e.help}" for e in METHODS.values())


def add_method_args(parser: argparse.ArgumentParser, default: str = "taylorseer") -> None:
    """--method and one flag per knob of the registry (``relcache.METHODS``)."""
    g = parser.add_argument_group(
        "caching method", "a trailing number in --method sets the order (taylorseer1, rfc2)"
    )
    g.add_argument(
        "--method",
        default=default,
        help=f"none = full compute; {methods_help()} (default {default})",
    )
    for knob in KNOBS.values():
        users = [e.name for e in METHODS.values() if knob.name in e.knobs]
        kind = int_list if knob.type is tuple else knob.type
        g.add_argument(
            "--" + knob.name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{knob.help} ({', '.join(users)})",
        )
    g.add_argument(
        "--nfc",
        type=float,
        default=None,
        help="full-step budget: fixed schedules take the interval with the closest NFC",
    )


def method_from_args(args: argparse.Namespace, steps: int) -> CacheMethod | None:
    """The config the flags describe (None for --method none); unused flags are errors."""
    given = {k: getattr(args, k) for k in KNOBS if getattr(args, k) is not None}
    if args.method == "none":
        if given or args.nfc is not None:
            flags = [f"--{k.replace('_', '-')}" for k in given] + (["--nfc"] if args.nfc else [])
            raise ValueError(f"--method none runs every step; drop {', '.join(flags)}")
        return None
    entry, implied = parse_method(args.method)
    unused = [k for k in given if k not in entry.knobs]
    if unused:
        raise ValueError(
            f"--method {args.method} does not use --{', --'.join(unused)}; its knobs are "
            f"--{', --'.join(k.replace('_', '-') for k in entry.knobs)}"
        )
    values = {**implied, **given}
    if args.nfc is None or entry.adaptive:
        return entry.make(**values)
    if "interval" in given or "full_steps" in given:
        raise ValueError("--nfc picks the interval: drop --interval / --full-steps, or --nfc")
    return entry.for_nfc(args.nfc, steps, **values)[0]
