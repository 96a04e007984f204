"""The conditions users run, as a matrix: every registered method x {float32, bfloat16, float16}
x every supported family's tiny transformer (reference DiT and the six diffusers pipelines) x
{batched CFG, sequential CFG where the family uses it} x {eager, relcache.compile}.

Each cell checks that the outputs are finite and in the model's dtype, that the NFC is the
configured one, and that the method's never-caching configuration equals no caching bit for bit.
The default suite runs every method, dtype and family eagerly plus a compiled cross-section; the
whole compiled matrix is marked ``slow`` (CI runs it)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor

import relcache
from relcache.caching.methods import CacheMethod, fixed_schedule
from relcache.models.dit import DiT
from relcache.sampling.ddim import denoise

diffusers = pytest.importorskip("diffusers")
from tests import test_diffusers as td  # noqa: E402
from tests.test_conditions import _dit as _tiny_dit  # noqa: E402

STEPS = td.STEPS  # 8
FLOAT_EMBEDS = td._embeds
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FIXED_NFC = len(fixed_schedule(STEPS, 3, 2))  # interval 3, warmup 2: steps 0, 1, 4, 7
BUDGET = 5

# method -> (a caching config, a never-caching config of the same method)
METHODS: dict[str, tuple[CacheMethod, CacheMethod]] = {
    "fora": (relcache.FORA(interval=3), relcache.FORA(interval=1)),
    "taylorseer": (relcache.TaylorSeer(interval=3, order=2), relcache.TaylorSeer(interval=1)),
    "rfe": (relcache.RFC(order=2, rcs=False, interval=3), relcache.RFC(rcs=False, interval=1)),
    "rfc": (relcache.RFC(order=2, threshold=0.3), relcache.RFC(order=2, threshold=1e-12)),
    "rcs": (
        relcache.build_method("rcs2", threshold=0.3),
        relcache.build_method("rcs2", threshold=1e-12),
    ),
    "budget": (
        relcache.RFC(order=2, nfc=BUDGET, steps=STEPS),
        relcache.RFC(order=2, nfc=STEPS, steps=STEPS),
    ),
    "weighted": (
        relcache.build_method("weighted2", weight=1.2, interval=3),
        relcache.build_method("weighted2", weight=1.2, interval=1),
    ),
    "rcsall": (
        relcache.build_method("rcsall2", threshold=0.3),
        relcache.build_method("rcsall2", threshold=1e-12),
    ),
}
# family -> CFG modes it runs: "batched" (one call per step) and "sequential" (two)
FAMILIES = {
    "reference": ("batched", "sequential"),
    "dit": ("batched",),
    "pixart": ("batched",),
    "sd3": ("batched",),
    "flux": ("batched", "sequential"),  # batched: guidance-distilled, one call; true CFG: two
    "hunyuan": ("batched", "sequential"),
    "wan": ("sequential",),  # Wan's pipeline always runs its branches as two calls
}
CELLS = [(f, c) for f, modes in FAMILIES.items() for c in modes]


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    """Tiny tensors (conftest's one_thread)."""


def test_every_registered_method_is_in_the_matrix() -> None:
    assert set(METHODS) == set(relcache.METHODS)


# ----- running one cell -----------------------------------------------------------------------
@functools.cache
def _reference_dit(dtype: torch.dtype) -> DiT:
    return _tiny_dit(dtype)


@functools.cache
def _pipeline(family: str, dtype: torch.dtype):
    return td._pipe(family).to(dtype)


def _target(family: str, dtype: torch.dtype):
    return _reference_dit(dtype) if family == "reference" else _pipeline(family, dtype)


def _transformer(family: str, dtype: torch.dtype) -> torch.nn.Module:
    target = _target(family, dtype)
    return target if family == "reference" else target.transformer


def _generate(family: str, dtype: torch.dtype, cfg_mode: str, monkeypatch) -> list[Tensor]:
    """Every transformer output of one 8-step generation with classifier-free guidance."""
    model = _transformer(family, dtype)
    outs: list[Tensor] = []

    def hook(module, args, out) -> None:
        out = out if isinstance(out, Tensor) else out[0] if isinstance(out, tuple) else out.sample
        outs.append(out.detach().clone())

    handle = model.register_forward_hook(hook)
    try:
        with torch.no_grad():
            if family == "reference":
                noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
                denoise(
                    model, noise, torch.tensor([1, 2]), steps=STEPS, cfg_scale=3.0,
                    guided=True, sequential_cfg=cfg_mode == "sequential",
                )  # fmt: skip
            else:
                _in_dtype(monkeypatch, dtype)
                td.CASES[family].call(
                    _target(family, dtype), STEPS, 1, td.CASES[family].size,
                    cfg_mode == "sequential",
                )  # fmt: skip
    finally:
        handle.remove()
    return outs


def _in_dtype(monkeypatch, dtype: torch.dtype) -> None:
    """The pipelines' prompt embeddings in the model's dtype, as a text encoder returns them."""
    monkeypatch.setattr(td, "_embeds", lambda *a, **k: FLOAT_EMBEDS(*a, **k).to(dtype))


def _run(
    family: str, dtype: torch.dtype, cfg_mode: str, config: CacheMethod | None, monkeypatch,
    compiled: bool = False,
):  # fmt: skip
    """The outputs and stats of one generation with ``config`` (None: no caching)."""
    target = _target(family, dtype)
    if config is None:
        return _generate(family, dtype, cfg_mode, monkeypatch), None
    with relcache.cached(target, config):
        if compiled:
            torch._dynamo.reset()
            relcache.compile(target, backend="eager")
        try:
            outs = _generate(family, dtype, cfg_mode, monkeypatch)
        finally:
            if compiled:
                torch._dynamo.reset()
        return outs, relcache.stats(target)


def _check_cell(
    family: str, dtype_name: str, cfg_mode: str, method: str, monkeypatch, compiled: bool
) -> None:
    dtype = DTYPES[dtype_name]
    caching, never = METHODS[method]
    ref, _ = _run(family, dtype, cfg_mode, None, monkeypatch)
    outs, stats = _run(family, dtype, cfg_mode, caching, monkeypatch, compiled)
    assert len(outs) == len(ref)
    assert all(o.dtype == dtype for o in outs), {o.dtype for o in outs}
    assert all(torch.isfinite(o).all() for o in outs)
    _check_nfc(method, stats)
    same, _ = _run(family, dtype, cfg_mode, never, monkeypatch, compiled)
    if compiled:  # the compiled graph may fuse differently from eager: rounding only
        for a, b in zip(same, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
    else:
        assert all(torch.equal(a, b) for a, b in zip(same, ref, strict=True))


def _check_nfc(method: str, stats) -> None:
    if method in ("fora", "taylorseer", "rfe"):
        assert stats.nfc == FIXED_NFC + stats.nonfinite_predictions / max(1, len(stats.steps))
    elif method == "budget":
        assert stats.nfc == BUDGET
    else:
        assert 2 <= stats.nfc <= STEPS


# ----- the matrix -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize(("family", "cfg_mode"), CELLS)
def test_eager(family: str, cfg_mode: str, dtype_name: str, method: str, monkeypatch) -> None:
    _check_cell(family, dtype_name, cfg_mode, method, monkeypatch, compiled=False)


FAST_COMPILED = {("reference", "batched"), ("flux", "sequential"), ("wan", "sequential")}
EAGER_ONLY = {"rcsall"}  # refuses relcache.compile with a message (test_ablation_methods.py)


def _compiled_params() -> list:
    params = []
    for family, cfg_mode in CELLS:  # tracing depends on family and method, not on dtype
        for dtype_name in ("bf16",):
            for method in METHODS:
                if method in EAGER_ONLY:
                    continue
                fast = (family, cfg_mode) in FAST_COMPILED and dtype_name == "bf16"
                fast = fast and method in ("taylorseer", "rfc")
                marks = () if fast else (pytest.mark.slow,)
                params.append(pytest.param(family, cfg_mode, dtype_name, method, marks=marks))
    return params


@pytest.mark.parametrize(("family", "cfg_mode", "dtype_name", "method"), _compiled_params())
def test_compiled(family: str, cfg_mode: str, dtype_name: str, method: str, monkeypatch) -> None:
    _check_cell(family, dtype_name, cfg_mode, method, monkeypatch, compiled=True)
