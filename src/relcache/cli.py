"""The ``relcache`` command line: parsing only; each subcommand lives in relcache/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module in relcache.commands exposing register(subparsers) and run(args)
COMMANDS = ("demo", "flops", "generate", "bench", "calibrate", "plan")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="relcache",
        description="Relational feature caching (RFC) for diffusion transformers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"relcache.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``relcache`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"relcache {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
