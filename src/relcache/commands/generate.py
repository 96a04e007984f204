r"""``relcache generate``: one diffusers pipeline call with a caching method, images + stats out.

    relcache generate --model black-forest-labs/FLUX.1-dev --prompt "a cat" --method rfc \
        --threshold 0.5 --steps 50
    relcache generate --model facebook/DiT-XL-2-256 --class-label 207 360 \
        --method taylorseer --nfc 14

The model is a hub id already in the local Hugging Face cache or a folder written by
``save_pretrained``. Methods and their flags come from the method registry (``relcache.METHODS``).
``--nfc`` picks the fixed-schedule interval with the closest NFC (fora, taylorseer, rfe); for rfc
it is an exact budget of full steps per sample, spent where the RCS error says (budget mode);
``--threshold`` gives the paper's RCS instead.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path
from typing import Any

import torch

import relcache
from relcache.caching.methods import CacheMethod, load_profile
from relcache.commands.common import (
    CLI_KNOBS,
    add_method_args,
    check_at_least,
    check_device,
    check_out_dir,
    method_from_args,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def register(subparsers: Any) -> None:
    """Add the ``generate`` subcommand."""
    p = subparsers.add_parser(
        "generate",
        help="run a diffusers pipeline with FORA / TaylorSeer / RFC caching",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="hub id (from the local cache) or local folder")
    p.add_argument("--prompt", help="text prompt (text-to-image/video pipelines)")
    p.add_argument("--negative-prompt", help="negative prompt, where the pipeline takes one")
    p.add_argument(
        "--class-label", nargs="+", help="ImageNet class ids or names (class-conditional DiT)"
    )
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="relcache_out", help="folder for images and stats.json")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto")
    add_method_args(p, default="taylorseer")
    p.add_argument(
        "--profile",
        type=Path,
        help="a fitted profile (relcache calibrate, or a shipped one): its predictor on its "
        "fitted full steps, instead of --method and its flags",
    )
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> CacheMethod | None:
    """Every check that needs no pipeline, before anything is loaded; returns the method."""
    check_at_least("--steps", args.steps, 1, "the default is 50")
    check_at_least("--height", args.height, 1, "or drop it for the pipeline's default")
    check_at_least("--width", args.width, 1, "or drop it for the pipeline's default")
    check_at_least("--seed", args.seed, 0, "the default is 0")
    check_at_least("--guidance-scale", args.guidance_scale, 0, "or drop it for the default")
    if args.prompt is not None and args.class_label:
        raise ValueError("pass --prompt (text-to-image) or --class-label (DiT), not both")
    if args.prompt is None and not args.class_label:
        raise ValueError("pass --prompt (or --class-label for a class-conditional DiT)")
    check_device(args.device)
    check_out_dir(args.out)
    return build_method(args)


def build_method(args: argparse.Namespace) -> CacheMethod | None:
    """The caching config the arguments ask for (None for ``--method none``)."""
    check_at_least("--steps", args.steps, 1, "the default is 50")
    if getattr(args, "profile", None) is not None:
        return method_from_profile(args)
    if args.threshold is not None and args.nfc is not None:
        raise ValueError(
            "--threshold and --nfc both decide the full steps: pass --threshold (the paper's "
            "RCS) or --nfc (an exact budget), not both"
        )
    return method_from_args(args, args.steps)


def method_from_profile(args: argparse.Namespace) -> CacheMethod:
    """The method of ``--profile``: alone (no method flags) and at its own step count."""
    given = [k.name for k in CLI_KNOBS if getattr(args, k.name) is not None]
    given += ["nfc"] if args.nfc is not None else []
    given += ["method"] if args.method != "taylorseer" else []
    if given:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        raise ValueError(f"--profile sets the method and its full steps; drop {flags}")
    profile = load_profile(args.profile)
    if args.steps != profile.steps:
        raise ValueError(
            f"--profile {args.profile} was fitted for {profile.steps} steps, not --steps "
            f"{args.steps}; pass --steps {profile.steps} or fit one for {args.steps} steps"
        )
    return profile.method()


def pipeline_kwargs(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the pipeline call; errors name options this pipeline lacks."""
    accepted = inspect.signature(pipe.__call__).parameters
    kw: dict[str, Any] = {"num_inference_steps": args.steps}
    if args.class_label:
        if "class_labels" not in accepted:
            raise ValueError(f"{type(pipe).__name__} takes --prompt, not --class-label")
        kw["class_labels"] = class_ids(pipe, args.class_label)
    elif args.prompt is not None:
        if "prompt" not in accepted:
            raise ValueError(
                f"{type(pipe).__name__} is class-conditional: pass --class-label (ImageNet ids "
                "such as 207 360, or names), not --prompt"
            )
        kw["prompt"] = args.prompt
    else:
        raise ValueError("pass --prompt (or --class-label for a class-conditional DiT)")
    optional = {
        "negative_prompt": args.negative_prompt,
        "height": args.height,
        "width": args.width,
        "guidance_scale": args.guidance_scale,
    }
    for key, value in optional.items():
        if value is None:
            continue
        if key not in accepted:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{type(pipe).__name__} does not take {flag}; drop it")
        kw[key] = value
    kw["generator"] = torch.Generator(args.device).manual_seed(args.seed)
    return kw


def class_ids(pipe: Any, labels: list[str]) -> list[int]:
    """Class ids from ``--class-label`` values (ids or the pipeline's label names), in range."""
    if all(lab.lstrip("-").isdigit() for lab in labels):
        ids = [int(lab) for lab in labels]
    else:
        names = getattr(pipe, "labels", None) or {}
        unknown = [lab for lab in labels if lab not in names]
        if unknown:
            sample = ", ".join(list(names)[:4]) or "none: this pipeline has no id2label"
            raise ValueError(
                f"unknown class name(s) {unknown}; pass class ids, or names such as {sample}"
            )
        ids = [names[lab] for lab in labels]
    count = getattr(getattr(pipe, "transformer", None), "config", None)
    count = getattr(count, "num_embeds_ada_norm", None)
    bad = [i for i in ids if i < 0 or (count is not None and i >= count)]
    if bad:
        top = f"0 to {count - 1}" if count is not None else ">= 0"
        raise ValueError(f"--class-label {bad} out of range: this model has class ids {top}")
    return ids


def load_pipeline(args: argparse.Namespace) -> Any:
    """The pipeline of ``--model`` on ``--device``; a load failure says what to pass instead."""
    from diffusers import DiffusionPipeline

    dtype = DTYPES.get(args.dtype) or (torch.bfloat16 if args.device != "cpu" else torch.float32)
    try:
        pipe = DiffusionPipeline.from_pretrained(args.model, **{dtype_keyword(): dtype})
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load --model {args.model!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); pass a folder written by "
            "save_pretrained or a hub id already in the local Hugging Face cache"
        ) from err
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=None)  # no bar when stderr is not a terminal
    return pipe.to(args.device)


def dtype_keyword() -> str:
    """``dtype`` where diffusers takes it (``torch_dtype`` is deprecated there), else the old
    ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def save_outputs(result: Any, out: Path) -> list[Path]:
    """Write every image (or video frame) of a pipeline result as PNG."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    images = getattr(result, "images", None)
    if images is not None:
        for i, image in enumerate(images):
            paths.append(out / f"{i:03d}.png")
            image.save(paths[-1])
        return paths
    for i, frames in enumerate(result.frames):
        for j, frame in enumerate(frames):
            paths.append(out / f"{i:03d}_{j:04d}.png")
            frame.save(paths[-1])
    return paths


def run(args: argparse.Namespace) -> int:
    """Load, cache, generate once, save images and stats.json; print NFC and seconds."""
    method = check_args(args)
    pipe = load_pipeline(args)
    kwargs = pipeline_kwargs(pipe, args)
    if "output_type" in inspect.signature(pipe.__call__).parameters:
        kwargs["output_type"] = "pil"
    if method is not None and getattr(args, "profile", None) is None:
        method = method_from_args(args, args.steps, relcache.api.family_defaults(pipe))
    if method is not None:
        relcache.apply(pipe, method)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = pipe(**kwargs)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    paths = save_outputs(result, Path(args.out))
    stats = relcache.stats(pipe) if method is not None else None
    record = {
        "model": args.model,
        "method": method.describe() if method is not None else "full compute",
        "steps": args.steps,
        "nfc": stats.nfc if stats is not None else args.steps,
        "full_steps": stats.full_steps if stats is not None else None,
        "seconds": round(seconds, 3),
        "images": [p.name for p in paths],
    }
    (Path(args.out) / "stats.json").write_text(json.dumps(record, indent=2))
    print(
        f"{record['method']}: NFC {record['nfc']:g} / {args.steps} steps, "
        f"{seconds:.2f} s, {len(paths)} image(s) in {args.out}"
    )
    return 0
