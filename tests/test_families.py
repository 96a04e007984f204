"""Per-family defaults as the paper ran them (RFC_SPEC §2 "Per family"): warm-up, order, FORA's
schedule, and the official code's rule that differences form only at full steps i > W - 2."""

import math

import pytest
import torch
from torch import nn

import relcache
from tests.toys import Chain, run_trajectory

STEPS = 50


def _model(class_name: str) -> nn.Module:
    """An empty module of a family's class name (adapters match by class name)."""
    return type(class_name, (nn.Module,), {})()


# (family class, method, the paper's interval N, the paper's NFC at 50 steps)
PAPER_ROWS = [
    *[("DiT", "taylorseer2", n, nfc) for n, nfc in ((4, 14), (5, 11), (6, 10), (7, 8), (9, 7))],
    ("FluxTransformer2DModel", "taylorseer2", 4, 14),
    ("FluxTransformer2DModel", "taylorseer2", 9, 8),
    ("FluxTransformer2DModel", "fora", 3, 17),
    ("FluxTransformer2DModel", "fora", 7, 8),
    *[
        ("HunyuanVideoTransformer3DModel", "taylorseer", n, nfc)
        for n, nfc in ((5, 10), (6, 9), (8, 7))
    ],
]


@pytest.mark.parametrize(("family", "spec", "interval", "nfc"), PAPER_ROWS)
def test_the_papers_nfc_comes_out_of_the_family_defaults(family, spec, interval, nfc) -> None:
    config = relcache.method_for(_model(family), spec, interval=interval)
    assert len(config.schedule(STEPS)) == nfc


def test_family_defaults_yield_to_the_users_knobs() -> None:
    flux, hunyuan = _model("FluxTransformer2DModel"), _model("HunyuanVideoTransformer3DModel")
    assert relcache.method_for(flux, "taylorseer", interval=4).warmup == 3
    assert relcache.method_for(flux, "taylorseer", interval=4, warmup=2).warmup == 2
    assert relcache.method_for(hunyuan, "taylorseer", interval=5).order == 1
    assert relcache.method_for(hunyuan, "taylorseer2", interval=5).order == 2  # the name's 2
    assert relcache.method_for(flux, "taylorseer", full_steps=[0, 1, 5]).warmup is None
    assert relcache.method_for(flux, "fora", nfc=17).schedule(STEPS) == list(range(0, 50, 3))
    pixart = _model("PixArtTransformer2DModel")  # no reference run: relcache's defaults
    assert relcache.method_for(pixart, "taylorseer", nfc=14) == relcache.TaylorSeer(interval=4)


def _official(values: list[float], full: list[int], warmup: int, order: int) -> list[float]:
    """TaylorSeer's official recursion and formula, scalar: at a full step the differences
    are formed only if step > W - 2 and the previous order exists (its derivative_approximation)."""
    out, cache, last = [], {}, None
    for i, v in enumerate(values):
        if i in full:
            new = {0: v}
            for r in range(order):
                if r not in cache or i <= warmup - 2:
                    break
                new[r + 1] = (new[r] - cache[r]) / (i - last)
            cache, last = new, i
            out.append(v)
        else:
            k = i - last
            out.append(sum(f * k**r / math.factorial(r) for r, f in cache.items()))
    return out


@pytest.mark.parametrize("warmup", [1, 2, 3, 4])
def test_differences_form_after_the_warmup_as_in_the_official_code(warmup: int) -> None:
    values = [math.sin(0.3 * i) + 0.02 * i * i for i in range(24)]
    config = relcache.TaylorSeer(interval=4, warmup=warmup, order=2)
    model = Chain(nn.Identity())
    relcache.apply(model, config, patterns=[r"mods\.0"])
    with torch.no_grad():
        outs = run_trajectory(
            model, [torch.full((1, 2, 3), v, dtype=torch.float64) for v in values]
        )
    expected = _official(values, config.schedule(len(values)), warmup, 2)
    got = [o[0, 0, 0].item() for o in outs]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_generate_builds_the_method_with_the_pipelines_family_defaults() -> None:
    import argparse

    from relcache.commands import generate
    from relcache.commands.common import method_from_args

    parser = argparse.ArgumentParser()
    generate.register(parser.add_subparsers())
    argv = ["generate", "--model", "x", "--prompt", "a", "--method", "fora", "--nfc", "17"]
    args = parser.parse_args(argv)
    family = relcache.api.family_defaults(_model("FluxTransformer2DModel"))
    config = method_from_args(args, STEPS, family)
    assert config.warmup == 1 and config.schedule(STEPS) == list(range(0, 50, 3))
    args = parser.parse_args([*argv[:-3], "taylorseer", "--warmup", "2", "--interval", "4"])
    assert method_from_args(args, STEPS, family).warmup == 2  # a flag beats the family
