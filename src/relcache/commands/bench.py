"""``relcache bench``: matched-budget comparison of every method, with the paper's analyses."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING

from relcache.commands.common import add_model_source_args

if TYPE_CHECKING:
    from relcache.evaluation.settings import BenchSettings

DESCRIPTION = """\
Runs full compute and each caching method at each NFC budget on the same seeds (image i: seed+i,
class i % num_classes), then writes report.md, results.json, plots and image grids into --out.
Methods are names of the method registry (relcache.METHODS) with an optional trailing order
(taylorseer1 = TaylorSeer m=1). Fixed-schedule methods (fora, taylorseer, rfe) take the interval
whose NFC is closest to the budget; RCS methods (rfc, rcs) take the threshold calibrated on the
first --calibration-samples samples; NAME:fitted (taylorseer2:fitted) runs a fixed-schedule method
on the shipped profile fitted on the model for each budget (relcache calibrate). The
full-compute reference is cached in --cache-dir.
A --out that already holds a bench is refused: --resume continues it (same model and settings),
--overwrite replaces it.

  relcache bench --samples 1000 --out bench_out
  torchrun --nproc-per-node 2 -m relcache bench --samples 1000 --out bench_out
  relcache bench --preset DiT-FM --preset-overrides depth=2,hidden_size=64,num_heads=4 \\
      --steps 10 --samples 16 --budgets 6,4 --out /tmp/smoke
"""


def _registered_peers() -> list[str]:
    from relcache.peers import PEERS

    return list(PEERS)


def _peer_names(text: str) -> tuple[str, ...]:
    """``all`` or comma-separated peer names (BenchSettings checks they are registered)."""
    from relcache.commands.common import name_list

    names = name_list(text)
    return tuple(_registered_peers()) if list(names) == ["all"] else tuple(names)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    p = sub.add_parser(
        "bench",
        help="matched-budget benchmark of FORA / TaylorSeer / RFC and ablations, with analyses",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = add_model_source_args(p)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")

    add_settings_options(p)
    p.set_defaults(func=run)


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option of ``BenchSettings`` (the one definition), in its help groups."""
    from relcache.commands.common import methods_help
    from relcache.evaluation.settings import OUTPUTS, BenchSettings, flag, option_fields

    hints, defaults = typing.get_type_hints(BenchSettings), BenchSettings()
    names = {"methods": methods_help(), "peers": ", ".join(_registered_peers())}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in option_fields():
        title, text = f.metadata["group"], f.metadata["help"].format(**names)
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        g = groups[title]
        default = getattr(defaults, f.name)
        if hints[f.name] is bool:
            action = "store_false" if default else "store_true"
            g.add_argument(flag(f.name), dest=f.name, action=action, help=text)
        else:
            kind = PARSERS.get(f.name) or _arg_type(hints[f.name])
            text += _default_text(default)
            g.add_argument(flag(f.name), dest=f.name, type=kind, default=default, help=text)
    groups[OUTPUTS].add_argument(
        "--no-cache", action="store_true", help="do not read or write the cache"
    )


def _arg_type(hint: object) -> Callable[[str], object]:
    """The argparse ``type`` of a settings field: tuples comma-separated, ``X | None`` as X."""
    from relcache.commands.common import int_list, name_list

    if typing.get_origin(hint) is tuple:
        return int_list if typing.get_args(hint)[0] is int else name_list
    given = [a for a in typing.get_args(hint) if a is not type(None)]
    return given[0] if given else hint


def _default_text(default: object) -> str:
    """`` (default X)`` for the help text; nothing when the field has no default value."""
    if default is None or default == ():
        return ""
    text = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
    return f" (default {text})"


PARSERS = {"peers": _peer_names}  # settings fields whose flag takes more than its type


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The settings the flags describe (model and device flags are not settings)."""
    from relcache.evaluation.settings import BenchSettings, option_fields

    values = {f.name: getattr(args, f.name) for f in option_fields()}
    if args.no_cache:
        values["cache_dir"] = None
    return BenchSettings(**values, model_args=_model_args(args))


def _model_args(args: argparse.Namespace) -> str:
    """The model-selecting flags, for the command line written into report.md."""
    parts: list[str] = []
    if args.checkpoint:
        parts += ["--checkpoint", str(args.checkpoint)]
    if args.preset:
        parts += ["--preset", args.preset, "--init-seed", str(args.init_seed)]
        if args.preset_overrides:
            kv = ",".join(f"{k}={v}" for k, v in args.preset_overrides.items())
            parts += ["--preset-overrides", kv]
    return shlex.join(parts)


def _check_paths_and_device(args: argparse.Namespace, settings: BenchSettings) -> None:
    """Everything the settings do not check, before any model is loaded."""
    from relcache.commands.common import check_at_least, check_device, check_out_dir
    from relcache.evaluation.resume import check_out

    check_at_least("--threads", args.threads, 1, "e.g. the number of physical cores")
    check_at_least("--init-seed", args.init_seed, 0, "the default is 0")
    if args.device is not None:
        check_device(args.device)
    if args.preset_overrides and args.preset is None:
        raise ValueError("--preset-overrides needs --preset NAME (e.g. --preset DiT-FM)")
    check_out_dir(args.out)
    check_out(settings)  # a filled --out needs --resume (same settings) or --overwrite
    if not args.no_cache:
        check_out_dir(args.cache_dir, "--cache-dir")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint}: no such file; pass DiT weights (.safetensors or "
            ".pt), or drop --checkpoint to bench the shipped model"
        )


def run(args: argparse.Namespace) -> int:
    """Validate, load, (join the process group,) bench, print where the outputs are."""
    import torch

    from relcache.evaluation import distributed as dist
    from relcache.evaluation.bench import run_bench
    from relcache.shipped import load_classifier, load_model

    settings = settings_from_args(args)
    _check_paths_and_device(args, settings)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    distributed = dist.init_from_env(device)
    main = dist.is_main()
    try:
        device = dist.local_device(device)
        model, name = load_model(
            args.checkpoint, args.preset, args.preset_overrides, args.init_seed, device
        )
        settings = dataclasses.replace(settings, model_name=name)
        run_bench(model, load_classifier(device=device), settings)
    finally:
        if distributed:
            dist.shutdown()
    if main:
        print(f"wrote {args.out / 'report.md'} and {args.out / 'results.json'}", file=sys.stderr)
    return 0
