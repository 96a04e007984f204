r"""``relcache generate``: one diffusers pipeline call with a caching method, images + stats out.

    relcache generate --model black-forest-labs/FLUX.1-dev --prompt "a cat" --method rfc \
        --threshold 0.5 --steps 50
    relcache generate --model facebook/DiT-XL-2-256 --class-label 207 360 \
        --method taylorseer --nfc 14

The model is a hub id already in the local Hugging Face cache or a folder written by
``save_pretrained``. Methods and their flags come from the method registry (``relcache.METHODS``).
``--nfc`` picks the fixed-schedule interval with the closest NFC (fora, taylorseer, rfe); RCS
methods (rfc, rcs) decide from the data and need ``--threshold``.
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
from relcache.caching.methods import CacheMethod
from relcache.commands.common import add_method_args, method_from_args

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
    p.set_defaults(func=run)


def build_method(args: argparse.Namespace) -> CacheMethod | None:
    """The caching config the arguments ask for (None for ``--method none``)."""
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    config = method_from_args(args, args.steps)
    if config is not None and config.adaptive and args.nfc is not None:
        raise ValueError(
            f"--method {args.method} decides its full steps from the data and takes --threshold, "
            "not --nfc; for a fixed full-step budget use --method taylorseer --nfc N"
        )
    return config


def pipeline_kwargs(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the pipeline call; errors name options this pipeline lacks."""
    accepted = inspect.signature(pipe.__call__).parameters
    kw: dict[str, Any] = {"num_inference_steps": args.steps}
    if args.class_label:
        labels = args.class_label
        if "class_labels" not in accepted:
            raise ValueError(f"{type(pipe).__name__} takes --prompt, not --class-label")
        digits = all(lab.isdigit() for lab in labels)
        kw["class_labels"] = [int(lab) for lab in labels] if digits else pipe.get_label_ids(labels)
    elif args.prompt is not None:
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
    from diffusers import DiffusionPipeline

    method = build_method(args)
    dtype = DTYPES.get(args.dtype) or (torch.bfloat16 if args.device != "cpu" else torch.float32)
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    kwargs = pipeline_kwargs(pipe, args)
    if "output_type" in inspect.signature(pipe.__call__).parameters:
        kwargs["output_type"] = "pil"
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
