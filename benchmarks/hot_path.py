"""The cached step, counted and timed: kernel ops and host syncs per step, recompiles, ms/step.

    python benchmarks/hot_path.py                                  # DiT-FM, CPU: counts + timing
    python benchmarks/hot_path.py --preset dit-xl-2 --batch 2 --repeats 2
    python benchmarks/hot_path.py --preset flux-dev --meta         # FLUX.1-dev size, counts only
    python benchmarks/hot_path.py --device cuda --dtype bfloat16 --preset dit-xl-2 --compile
    python benchmarks/hot_path.py --device cuda --dtype bfloat16 --preset dit-xl-2 --compile \
        --mode reduce-overhead                                     # CUDA graphs

Random weights. Steps 0-2 are full, later calls cached (fixed schedules) or decided by RCS with
a threshold that keeps them cached; every call is wrapped in ``relcache.at_step`` as relcache's
samplers do. Ops are aten ops that launch a kernel (views and allocations excluded), counted with
a TorchDispatchMode; "inside" = in the cached modules, "outside" = the rest of the call, minus
what the same call costs without caching (the engine's own work). ``--meta`` counts on the meta
device (no weights, no timing; RCS is skipped there: its decision reads a value).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

import relcache
from relcache.api import _engine
from relcache.evaluation.hot_path import count_calls, time_calls

FULL = (0, 1, 2)
METHODS = {
    "full": None,
    "fora": relcache.FORA(full_steps=FULL),
    "taylorseer": relcache.TaylorSeer(order=2, full_steps=FULL),
    "rfe": relcache.RFC(order=2, rcs=False, full_steps=FULL),
    "rfc": relcache.RFC(order=2, threshold=1e6),
    "rfc-batch": relcache.RFC(order=2, threshold=1e6, scope="batch"),
}


def dit_setup(preset: str, batch: int, device: str, dtype: torch.dtype):
    """A random-weight reference DiT and its call(i)."""
    from relcache.shipped.loading import random_dit

    with torch.device(device):
        model = random_dit(preset) if device != "meta" else _meta_dit(preset)
    model = model.to(dtype)
    c = model.config
    x = torch.randn(batch, c.in_channels, c.input_size, c.input_size, device=device, dtype=dtype)
    y = torch.arange(batch, device=device) % c.num_classes
    t = torch.linspace(999, 0, 64, device=device)

    def call(i: int, fn=model):
        with relcache.at_step(model, i):
            return fn(x, t[i].expand(batch), y)

    return model, call


def _meta_dit(preset: str):
    from relcache.models import create_dit

    return create_dit(preset).eval()


def flux_setup(batch: int, device: str, dtype: torch.dtype, tokens: int = 64 * 64):
    """FLUX.1-dev's transformer (19 double + 38 single blocks, 3072 wide), 1024 px by default."""
    import diffusers

    with torch.device(device):
        model = diffusers.FluxTransformer2DModel(guidance_embeds=True).to(dtype).eval()
    n, text = tokens, 512  # image tokens (1024 px: 64 x 64 packed latents); T5 tokens
    kw = {
        "encoder_hidden_states": torch.randn(batch, text, 4096, device=device, dtype=dtype),
        "pooled_projections": torch.randn(batch, 768, device=device, dtype=dtype),
        "img_ids": torch.zeros(n, 3, device=device),
        "txt_ids": torch.zeros(text, 3, device=device),
        "guidance": torch.full((batch,), 3.5, device=device),
        "return_dict": False,
    }
    x = torch.randn(batch, n, 64, device=device, dtype=dtype)

    def call(i: int, fn=model):
        with relcache.at_step(model, i):
            return fn(x, timestep=torch.full((batch,), 1.0 - i / 64, device=device), **kw)

    return model, call


def measure(model, call, config, args) -> dict:
    """Counts of a full and a cached step, and (off the meta device) ms per step."""
    if config is None:
        bare = count_calls(model, [], call, 1)[0]
        row = {"full_step_ops": bare.total, "syncs_per_step": bare.syncs}
    else:
        with relcache.cached(model, config):
            names = _engine(model).names
            counts = count_calls(model, names, call, 5)
        full, cached = counts[1], counts[4]  # a full step with the warm-up's history; cached
        row = {
            "modules": len(names),
            "full_step_ops": full.total,
            "cached_step_ops": cached.total,
            "cached_ops_per_module": round(cached.inside / len(names), 2),
            "engine_ops_per_cached_step": cached.engine,
            "syncs_per_cached_step": cached.syncs,
        }
    if not args.meta:
        with relcache.cached(model, config):
            row.update(time_steps(model, call, args))
    return row


def time_steps(model, call, args) -> dict:
    """Median ms of a full and a cached step, eager and (``--compile``) compiled, two
    generations each; compiled: graphs made in the first generation, recompiles in the second.
    "compiled" is ``torch.compile(model)`` (graph breaks around the cached modules), "fullgraph"
    is ``relcache.compile(model, mode=--mode)`` (two graphs; RCS decides before the graph runs)."""
    device = next(model.parameters()).device
    variants = {"eager": call}
    if args.compile:
        compiled = torch.compile(model)
        variants["compiled"] = lambda i: call(i, compiled)
        variants["fullgraph"] = None  # compiled in place when its turn comes
    out = {}
    for label, fn in variants.items():
        if label == "fullgraph":
            torch._dynamo.reset()
            if relcache.is_applied(model):
                relcache.compile(model, mode=args.mode)
                fn = call
            else:
                whole = torch.compile(model, fullgraph=True, mode=args.mode)
                fn = lambda i, whole=whole: call(i, whole)  # noqa: E731
        graphs = [_graphs()]
        for _ in range(2):  # a second generation must reuse everything
            if relcache.is_applied(model):
                relcache.reset(model)
            times = time_calls(fn, 3 + args.repeats, device)
            graphs.append(_graphs())
        out[f"{label}_full_ms"] = round(statistics.median(times[:3]), 3)
        out[f"{label}_cached_ms"] = round(statistics.median(times[3:]), 3)
        if label != "eager":
            out[f"{label}_graphs"] = graphs[1] - graphs[0]
            out[f"{label}_recompiles_second_generation"] = graphs[2] - graphs[1]
    return out


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def main() -> None:
    """One JSON line per method."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="DiT-FM", help="a DiT preset (DiT-FM, DiT-XL/2) or flux-dev")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=4, help="rows per call (4 = 2 images with CFG)")
    p.add_argument("--repeats", type=int, default=5, help="cached steps timed per generation")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--meta", action="store_true", help="count on the meta device (no timing)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile(model) and relcache.compile(model) (fullgraph)",
    )
    p.add_argument("--mode", default=None, help="torch.compile mode of relcache.compile")
    args = p.parse_args()
    device = "meta" if args.meta else args.device
    dtype = getattr(torch, args.dtype)
    if args.preset.lower().startswith("flux"):
        model, call = flux_setup(args.batch, device, dtype)
    else:
        model, call = dit_setup(args.preset, args.batch, device, dtype)
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; pick from {','.join(METHODS)}")
    for name in names:
        if args.meta and name.startswith("rfc"):
            print(f"{name}: skipped on the meta device (RCS reads its decision from the "
                  "device); run it on cpu or cuda", file=sys.stderr)  # fmt: skip
            continue
        row = {"method": name, "preset": args.preset, "batch": args.batch, "device": device}
        row.update(measure(model, call, METHODS[name], args))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
