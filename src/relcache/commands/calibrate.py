"""``relcache calibrate``: fit which steps run fully for a model and budget, into a profile file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Searches which steps run fully at a budget of --nfc full steps (a scan of even spreads of the
refresh steps: TaylorSeer's fixed schedule, each phase within one interval and a few last steps;
then greedy local exchange from the best: each refresh step moved by up to --radius while the
mean PSNR of the final images against full compute rises), on --samples calibration images
(seeds --seed.., never the report's 0-999), one batched generation per candidate. Writes the
profile (JSON) to --out; `relcache.from_profile(path)` and `relcache generate --profile` load it.
The search state is kept beside the profile (NAME.search.json): --resume continues an
interrupted search.

  relcache calibrate --nfc 8 --out nfc8.json
  relcache calibrate --nfc 8 --out nfc8.json --max-seconds 300      # pause, then:
  relcache calibrate --nfc 8 --out nfc8.json --max-seconds 300 --resume

With --pipeline FOLDER (a diffusers pipeline written by save_pretrained; nothing is downloaded)
the search runs through that pipeline and its scheduler, image i conditioned on line i % N of
--prompts-file (--class-labels for a class-conditional one such as DiTPipeline); the profile
records its transformer's weights. --pipeline-kwargs adds call arguments (JSON):

  relcache calibrate --pipeline ./pixart --prompts-file prompts.txt --steps 20 --nfc 8 \
      --cfg-scale 4.5 --pipeline-kwargs '{"height": 512, "width": 512}' --out pixart8.json
"""

EXAMPLE_KWARGS = """'{"height": 512, "width": 512}'"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``calibrate`` subcommand."""
    from relcache.commands.common import add_model_source_args

    p = sub.add_parser(
        "calibrate",
        help="fit a schedule (which steps run fully) for a model and budget: a profile file",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_source_args(p)
    s = p.add_argument_group("budget, sampler and search")
    s.add_argument("--nfc", type=int, required=True, help="full steps per generation (budget)")
    s.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    s.add_argument("--cfg-scale", type=float, default=3.0, help="CFG scale (default 3.0)")
    s.add_argument("--predictor", default="taylorseer2",
                   help="fixed-schedule method spec (default taylorseer2; e.g. rfe2)")  # fmt: skip
    s.add_argument("--samples", type=int, default=16, help="calibration images (default 16)")
    s.add_argument("--seed", type=int, default=1000, help="first calibration seed (>= 1000)")
    s.add_argument("--radius", type=int, default=3, help="largest move of a step (default 3)")
    s.add_argument("--min-gain", type=float, default=0.01, help="dB a move must gain")
    s.add_argument("--max-generations", type=int, help="stop after this many candidates")
    d = p.add_argument_group("a diffusers pipeline instead of the DiT")
    d.add_argument("--pipeline", type=Path, help="a local diffusers pipeline folder")
    d.add_argument("--prompts-file", type=Path, help="calibration prompts, one per line")
    d.add_argument("--class-labels", type=int, nargs="+", help="class ids (DiTPipeline)")
    d.add_argument("--pipeline-kwargs", type=json_dict, help="more call arguments (JSON)")
    o = p.add_argument_group("outputs")
    o.add_argument("--out", type=Path, required=True, help="the profile file to write (.json)")
    o.add_argument("--resume", action="store_true", help="continue the search saved beside --out")
    o.add_argument("--max-seconds", type=float, help="pause after this long (then --resume)")
    o.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def json_dict(text: str) -> dict:
    """A JSON object given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}); e.g. {EXAMPLE_KWARGS}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is needed, e.g. {EXAMPLE_KWARGS}")
    return value


def check_pipeline_args(args: argparse.Namespace) -> None:
    """The pipeline options: together, and not with a DiT source."""
    given = [f for f in ("prompts_file", "class_labels", "pipeline_kwargs") if getattr(args, f)]
    if args.pipeline is None:
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag} is for --pipeline FOLDER; drop it to fit the DiT")
        return
    if args.checkpoint is not None or args.preset is not None:
        raise ValueError("--pipeline replaces the DiT: drop --checkpoint / --preset")
    if not (args.pipeline / "model_index.json").is_file():
        raise FileNotFoundError(
            f"--pipeline {args.pipeline}: no diffusers pipeline there (model_index.json); pass "
            "a folder written by pipe.save_pretrained"
        )
    if args.prompts_file is not None and not args.prompts_file.is_file():
        raise FileNotFoundError(f"--prompts-file {args.prompts_file}: no such file")


def pipeline_inputs(args: argparse.Namespace, pipe: Any):
    """The pipeline's checked calibration inputs from the options."""
    from relcache.evaluation.fitting import pipeline_inputs

    prompts = None
    if args.prompts_file is not None:
        prompts = [line.strip() for line in args.prompts_file.read_text().splitlines()]
        prompts = [line for line in prompts if line]
    return pipeline_inputs(pipe, prompts, args.class_labels, args.pipeline_kwargs)


def check_args(args: argparse.Namespace):
    """Every check that needs no model; returns the fit settings."""
    from relcache.commands.common import check_at_least, check_device, check_out_dir
    from relcache.evaluation.fitting import FitSettings

    settings = FitSettings(args.nfc, args.steps, args.cfg_scale, args.predictor, 2, args.samples,
                           args.seed, args.radius, args.min_gain,
                           args.max_generations)  # fmt: skip
    check_at_least("--max-seconds", args.max_seconds, 1, "or drop it to run to the end")
    check_at_least("--init-seed", args.init_seed, 0, "the default is 0")
    if args.device is not None:
        check_device(args.device)
    if args.preset_overrides and args.preset is None:
        raise ValueError("--preset-overrides needs --preset NAME (e.g. --preset DiT-FM)")
    if args.out.suffix != ".json":
        raise ValueError(f"--out {args.out} must end in .json (the profile file)")
    check_out_dir(args.out.parent)
    check_pipeline_args(args)
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint}: no such file; pass DiT weights or drop it"
        )
    return settings


def run(args: argparse.Namespace) -> int:
    """Validate, load the model, fit (or pause), print the profile's summary."""
    import torch

    from relcache.commands.generate import load_pipeline
    from relcache.evaluation.fitting import SearchPaused, run_fit
    from relcache.shipped import load_model

    settings = check_args(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.pipeline is not None:
        source = argparse.Namespace(model=str(args.pipeline), dtype="auto", device=device.type)
        model, name = load_pipeline(source), None
        inputs = pipeline_inputs(args, model)
    else:
        model, name = load_model(
            args.checkpoint, args.preset, args.preset_overrides, args.init_seed, device
        )
        inputs = None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        profile = run_fit(model, settings, args.out, args.resume, args.max_seconds, name,
                          not args.no_progress, inputs)  # fmt: skip
    except SearchPaused as paused:
        print(f"relcache calibrate: {paused}", file=sys.stderr)
        return 3
    score, search = profile.score, profile.search
    print(
        f"NFC {profile.nfc}: full steps {list(profile.full_steps)}; PSNR {score['before']:.2f} -> "
        f"{score['after']:.2f} dB on {search['images_per_generation']} calibration images; "
        f"{search['generations']} generations, {search['seconds']:.0f} s; wrote {args.out}"
    )
    return 0
