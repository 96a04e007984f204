"""Argument helpers shared by the subcommands: list parsing and method flags from the registry."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from relcache.caching.methods import KNOBS, METHODS, CacheMethod, parse_method
from relcache.caching.methods.registry import merge_knobs

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


def check_at_least(flag: str, value: int | float | None, minimum: int, hint: str) -> None:
    """``value`` (when given) must be finite and >= ``minimum``; the message says what to pass."""
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{flag} must be a finite number >= {minimum}, got {value}; {hint}")
    if value is not None and value < minimum:
        raise ValueError(f"{flag} must be >= {minimum}, got {value:g}; {hint}")


def check_out_dir(path: str | os.PathLike[str], flag: str = "--out") -> None:
    """``path`` must be a folder that exists or can be created, and that can be written to
    (checked before any work, so a long run never ends on a bad output folder)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{flag} {path} is an existing file, not a folder; pass a folder (created if missing)"
        )
    parent = path
    while not parent.exists():
        check_not_dangling(parent, path, flag)
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path} cannot be created: {parent} is a file; pass a folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {parent} is not writable; pass a folder you can write")


def check_not_dangling(link: Path, path: Path, flag: str) -> None:
    """``link`` (``path`` or a folder above it that does not exist) must not be a symlink to
    nothing: creating the folder would fail there, after all the work."""
    if link.is_symlink():
        raise ValueError(
            f"{flag} {path}: {link} is a symlink to {os.readlink(link)}, which does not exist; "
            "create its target folder, remove the link, or pass another folder"
        )


def check_device(text: str) -> str:
    """A device string torch accepts and this machine has (``cpu``, ``cuda``, ``cuda:1``)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(
            f"--device {text!r} is not a torch device ({err}); pass cpu or cuda"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {text} but torch sees no CUDA GPU here; pass --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"--device {text} but there are {count} CUDA device(s); pass cuda:0 to "
                f"cuda:{count - 1}"
            )
    return text


# the budget knobs come from the command's own --nfc and --steps
CLI_KNOBS = [k for k in KNOBS.values() if k.name not in ("nfc", "steps")]


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
    for knob in CLI_KNOBS:
        users = [e.name for e in METHODS.values() if knob.name in e.knobs]
        kind = int_list if knob.type is tuple else knob.type
        g.add_argument(
            "--" + knob.name.replace("_", "-"),
            type=kind,
            default=None,
            choices=knob.choices or None,
            help=f"{knob.help} ({', '.join(users)})",
        )
    g.add_argument(
        "--nfc",
        type=float,
        default=None,
        help="full-step budget: fixed schedules take the interval with the closest NFC; "
        "rfc and budget give exactly this many full steps per sample (budget mode)",
    )


def method_from_args(
    args: argparse.Namespace, steps: int, family: dict | None = None
) -> CacheMethod | None:
    """The config the flags describe (None for --method none); unused flags are errors.
    ``family``: a model family's knob defaults per method name (adapters' ``defaults``), used
    where no flag sets the knob."""
    given = {k.name: getattr(args, k.name) for k in CLI_KNOBS if getattr(args, k.name) is not None}
    for key, value in [*given.items(), ("nfc", args.nfc)]:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{key.replace('_', '-')} must be a finite number, got {value}")
    if args.method == "none":
        if given or args.nfc is not None:
            flags = [f"--{k.replace('_', '-')}" for k in given]
            flags += ["--nfc"] if args.nfc is not None else []
            raise ValueError(f"--method none runs every step; drop {', '.join(flags)}")
        return None
    entry, implied = parse_method(args.method)
    unused = [k for k in given if k not in entry.knobs]
    if unused:
        raise ValueError(
            f"--method {args.method} does not use --{', --'.join(unused)}; its knobs are "
            f"--{', --'.join(k.replace('_', '-') for k in entry.knobs)}"
        )
    values = merge_knobs(args.method, implied, given)
    values = entry.with_defaults(values, (family or {}).get(entry.name, {}))
    if args.nfc is None or (entry.adaptive and "threshold" in given):
        return entry.make(**values)
    if entry.adaptive and "nfc" not in entry.knobs:
        raise ValueError(f"--method {args.method} takes --threshold, not --nfc")
    if "interval" in given or "full_steps" in given:
        raise ValueError("--nfc picks the interval: drop --interval / --full-steps, or --nfc")
    return entry.for_nfc(args.nfc, steps, **values)[0]


def preset_overrides(text: str) -> dict[str, int | float | str]:
    """``depth=2,hidden_size=64`` -> {"depth": 2, "hidden_size": 64}: numbers where they parse."""
    out: dict[str, int | float | str] = {}
    for item in filter(None, (v.strip() for v in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE pairs, got {item!r}")
        if key.strip() in out:
            raise argparse.ArgumentTypeError(f"{key.strip()} is given twice; keep one")
        out[key.strip()] = override_value(key.strip(), value.strip())
    return out


def override_value(key: str, value: str) -> int | float | str:
    """An int, a finite float, or the text itself."""
    for cast in (int, float):
        try:
            number = cast(value)
        except ValueError:
            continue
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{key}={value}: expected a finite number")
        return number
    return value


def add_model_source_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The DiT to run: the shipped DiT-FM, ``--checkpoint`` or a ``--preset`` (bench,
    calibrate); returns the group for command-specific additions."""
    g = p.add_argument_group("model (default: the shipped Fashion-MNIST DiT-FM)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="DiT weights (.safetensors or .pt)")
    src.add_argument(
        "--preset",
        help="a DiT preset with random weights (seeded by --init-seed; zero-initialised layers "
        "redrawn from N(0, 0.02)), for smoke tests",
    )
    g.add_argument(
        "--preset-overrides",
        type=preset_overrides,
        default={},
        help="DiTConfig fields for --preset, e.g. depth=2,hidden_size=64,num_heads=4",
    )
    g.add_argument("--init-seed", type=int, default=0, help="weight seed for --preset (default 0)")
    g.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)"
    )
    return g
