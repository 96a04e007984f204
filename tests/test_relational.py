"""RFE and RCS (RFC_SPEC §3): exact behaviour on toy trajectories."""

import itertools

import pytest
import torch

import relcache
from relcache.caching import relational as rel
from tests.toys import Chain, linear_module, run_trajectory


def _moving_inputs(steps: int, seed: int = 1) -> list[torch.Tensor]:
    """I(i) = I0 + g(i) u with g increasing at an irregular speed, u fixed; (B=2, T=3, D=6)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    u = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    speeds = torch.rand(steps, generator=gen, dtype=torch.float64) * 2 + 0.1
    g = torch.cumsum(speeds**2, 0)
    return [base + g[i] * u for i in range(steps)]


def test_rfe_exact_for_linear_module_where_taylor_is_not() -> None:
    inputs = _moving_inputs(20)
    lin = linear_module()
    exact = [lin(x) for x in inputs]
    errors = {}
    for name, cfg in [
        ("rfe", relcache.RFC(order=1, rcs=False, interval=4)),
        ("taylor", relcache.TaylorSeer(interval=4, order=1)),
    ]:
        model = Chain(lin)
        relcache.apply(model, cfg, patterns=[r"mods\.0"])
        with torch.no_grad():
            outs = run_trajectory(model, inputs)
        errors[name] = max((o - e).abs().max().item() for o, e in zip(outs, exact, strict=False))
        relcache.remove(model)
    assert errors["rfe"] < 1e-9
    assert errors["taylor"] > 1e-3


def _rfe_coefficients(taylor, gram, ratio, change):
    """The coefficients RFE's plan gives one slot: base + ||dI|| * unit * inc. (B, m+1)"""
    base, unit, inc = rel.rfe_plan(taylor.double(), gram[None], ratio[None].double())
    return base[0] + change.double()[:, None] * unit[0][:, None] * inc[0]


def test_rfe_coefficients_fall_back_to_taylor() -> None:
    taylor = torch.tensor([[1.0, 2.0, 2.0], [1.0, 2.0, 2.0]])
    gram = torch.zeros(2, 2, 2, dtype=torch.float64)  # ||D|| = 0 in row 0
    gram[1] = torch.eye(2, dtype=torch.float64)
    ratio = torch.tensor([1.0, float("nan")])  # s unusable in row 1
    out = _rfe_coefficients(taylor, gram, ratio, torch.tensor([3.0, 3.0]))
    assert torch.equal(out, taylor.double())


def test_rfe_magnitude_matches_relation() -> None:
    # ||D|| = sqrt(c^T G c): D = 2 f1 + 2 f2 with orthonormal f -> ||D|| = sqrt(8)
    taylor = torch.tensor([[1.0, 2.0, 2.0]])
    gram = torch.eye(2, dtype=torch.float64)[None]
    out = _rfe_coefficients(taylor, gram, torch.tensor([0.5]), torch.tensor([4.0]))
    alpha = 0.5 * 4.0 / 8**0.5
    assert torch.allclose(out, torch.tensor([[1.0, 2 * alpha, 2 * alpha]], dtype=out.dtype))


def _rcs_reference(values: list[float], tau: float, warmup: int = 2) -> list[int]:
    """Independent scalar re-implementation of RCS with order-1 Taylor on the driver input."""
    full, acc, f0, f1, last = [], 0.0, None, None, None
    for i, v in enumerate(values):
        if i >= warmup:
            k = i - last
            pred = f0 + (f1 if f1 is not None else 0.0) * k
            acc += abs(v - pred) / abs(v)
            if acc <= tau:
                continue
            acc = 0.0
        if f0 is not None:
            f1 = (v - f0) / (i - last)
        f0, last = v, i
        full.append(i)
    return full


@pytest.mark.parametrize("tau", [0.01, 0.05, 0.2])
def test_rcs_triggers_exactly_when_accumulated_error_crosses(tau: float) -> None:
    values = [1.0 + 0.3 * i + 0.02 * i * i + 0.1 * (i % 3) for i in range(40)]
    inputs = [torch.full((1, 2, 3), v, dtype=torch.float64) for v in values]
    model = Chain(torch.nn.Identity(), torch.nn.Identity())
    relcache.apply(model, relcache.RFC(order=1, threshold=tau, rfe=False), patterns=[r"mods\.\d"])
    run_trajectory(model, inputs)
    assert relcache.stats(model).full_steps["call0"] == _rcs_reference(values, tau)


def test_raising_threshold_never_adds_full_steps() -> None:
    steps = 50
    t = torch.linspace(0, 1, steps, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64).unbind(0)
    inputs = [(a * torch.cos(3 * s) + b * torch.sin(2 * s) + 2)[None] for s in t]
    model = Chain(linear_module(), torch.nn.GELU().double(), linear_module(seed=3))
    nfcs = []
    for tau in [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]:
        relcache.apply(model, relcache.RFC(order=2, threshold=tau), patterns=[r"mods\.[02]"])
        with torch.no_grad():
            run_trajectory(model, inputs)
        nfcs.append(relcache.stats(model).nfc)
        relcache.remove(model)
    assert all(b <= a for a, b in itertools.pairwise(nfcs)), nfcs
    assert nfcs[0] > nfcs[-1]
