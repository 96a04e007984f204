"""``relcache bench``: matched-budget comparison of every method, with the paper's analyses."""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relcache.evaluation.settings import BenchSettings

DESCRIPTION = """\
Runs full compute and each caching method at each NFC budget on the same seeds (image i: seed+i,
class i % num_classes), then writes report.md, results.json, plots and image grids into --out.
Methods are names of the method registry (relcache.METHODS) with an optional trailing order
(taylorseer1 = TaylorSeer m=1). Fixed-schedule methods (fora, taylorseer, rfe) take the interval
whose NFC is closest to the budget; RCS methods (rfc, rcs) take the threshold calibrated on the
first --calibration-samples samples. The full-compute reference is cached in --cache-dir.
A --out that already holds a bench is refused: --resume continues it (same model and settings),
--overwrite replaces it.

  relcache bench --samples 1000 --out bench_out
  torchrun --nproc-per-node 2 -m relcache bench --samples 1000 --out bench_out
  relcache bench --preset DiT-FM --preset-overrides depth=2,hidden_size=64,num_heads=4 \\
      --steps 10 --samples 16 --budgets 6,4 --out /tmp/smoke
"""


def _overrides(text: str) -> dict[str, int | float | str]:
    """``depth=2,hidden_size=64`` -> {"depth": 2, "hidden_size": 64}: numbers where they parse."""
    out: dict[str, int | float | str] = {}
    for item in filter(None, (v.strip() for v in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE pairs, got {item!r}")
        if key.strip() in out:
            raise argparse.ArgumentTypeError(f"{key.strip()} is given twice; keep one")
        out[key.strip()] = _override_value(key.strip(), value.strip())
    return out


def _override_value(key: str, value: str) -> int | float | str:
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
    from relcache.commands.common import int_list, methods_help, name_list
    from relcache.evaluation.settings import BenchSettings

    d = BenchSettings()
    p = sub.add_parser(
        "bench",
        help="matched-budget benchmark of FORA / TaylorSeer / RFC and ablations, with analyses",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("model (default: the shipped Fashion-MNIST DiT-FM)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="DiT weights (.safetensors or .pt) to bench")
    src.add_argument(
        "--preset",
        help="a DiT preset with random weights (seeded by --init-seed; zero-initialised layers "
        "redrawn from N(0, 0.02)), for smoke tests",
    )
    g.add_argument(
        "--preset-overrides",
        type=_overrides,
        default={},
        help="DiTConfig fields for --preset, e.g. depth=2,hidden_size=64,num_heads=4",
    )
    g.add_argument("--init-seed", type=int, default=0, help="weight seed for --preset (default 0)")
    g.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)"
    )
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")

    g = p.add_argument_group("sampling and sweep")
    g.add_argument("--steps", type=int, default=d.steps, help=f"DDIM steps (default {d.steps})")
    g.add_argument(
        "--cfg-scale", type=float, default=d.cfg_scale, help=f"CFG scale (default {d.cfg_scale})"
    )
    g.add_argument(
        "--samples", type=int, default=d.samples, help=f"images per method (default {d.samples})"
    )
    g.add_argument("--seed", type=int, default=d.seed, help="first seed; image i uses seed + i")
    g.add_argument(
        "--methods",
        type=name_list,
        default=d.methods,
        help=f"comma-separated (default {','.join(d.methods)}); a trailing number sets the "
        f"order. Registered: {methods_help()}",
    )
    g.add_argument(
        "--budgets",
        type=int_list,
        default=d.budgets,
        help=f"target NFCs (default {','.join(map(str, d.budgets))}, the paper's at 50 steps)",
    )
    g.add_argument(
        "--calibration-samples",
        type=int,
        default=d.calibration_samples,
        help=f"images used to calibrate RCS thresholds (default {d.calibration_samples})",
    )
    g.add_argument(
        "--calibration-seed",
        type=int,
        default=d.calibration_seed,
        help="first seed of the calibration images, disjoint from the reported seeds "
        f"(default {d.calibration_seed})",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"images per forward batch, x2 rows with CFG (default {d.batch_size})",
    )

    g = p.add_argument_group(
        "peers: other libraries' caches in the same run (pip install 'relcache[peers]')"
    )
    g.add_argument(
        "--peers",
        type=_peer_names,
        default=(),
        help="comma-separated peer names, or 'all' (registered: "
        f"{', '.join(_registered_peers())}); each runs with its defaults and tuned to the "
        "--peer-match method's measured FLOPs at every budget; every row then runs on the "
        "shipped model converted to diffusers",
    )
    g.add_argument(
        "--peer-match",
        default=None,
        help="the method (in --methods) whose FLOPs per budget the peers are tuned to "
        "(default: the recommended configuration when benched, else the last method)",
    )

    g = p.add_argument_group("analyses and outputs")
    g.add_argument(
        "--analysis-samples",
        type=int,
        default=d.analysis_samples,
        help=f"samples for the Fig. 1 analyses (default {d.analysis_samples})",
    )
    g.add_argument(
        "--analysis-budget",
        type=int,
        default=None,
        help="budget of the prediction-error analysis (default: the middle of --budgets)",
    )
    g.add_argument(
        "--window-samples",
        type=int,
        default=d.window_samples,
        help="samples for the step-window analysis (FD2FC, PSNR when caching only inside a "
        f"window of steps; at most --samples are used; default {d.window_samples})",
    )
    g.add_argument("--no-analysis", action="store_true", help="skip the Fig. 1 analyses")
    g.add_argument(
        "--grid-columns", type=int, default=d.grid_columns, help="images per grid row (default 16)"
    )
    g.add_argument("--out", type=Path, default=d.out, help=f"output folder (default {d.out})")
    g.add_argument(
        "--cache-dir",
        type=Path,
        default=d.cache_dir,
        help=f"where full-compute references are cached (default {d.cache_dir})",
    )
    g.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted bench in --out: runs already in results.json are skipped "
        "(it must come from the same model and settings)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the bench already in --out (without it, a filled --out is refused)",
    )
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


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
    from relcache.evaluation.settings import BenchSettings
    from relcache.shipped import load_classifier, load_model

    settings = BenchSettings(
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        samples=args.samples,
        seed=args.seed,
        methods=args.methods,
        budgets=args.budgets,
        calibration_samples=args.calibration_samples,
        calibration_seed=args.calibration_seed,
        batch_size=args.batch_size,
        peers=args.peers,
        peer_match=args.peer_match,
        analysis=not args.no_analysis,
        analysis_samples=args.analysis_samples,
        analysis_budget=args.analysis_budget,
        window_samples=args.window_samples,
        grid_columns=args.grid_columns,
        out=args.out,
        cache_dir=None if args.no_cache else args.cache_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        model_args=_model_args(args),
    )
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
