"""Engine v3's promises: each formula once (the function that runs is the one tested and
counted), branches are keys with a kind, engine v2's RFC switches name the split methods."""

import math

import pytest
import torch
from torch import nn

import relcache
from relcache.caching import relational, taylor
from relcache.caching.flops import CACHE_OPS
from relcache.caching.schedulers import RCSSchedule
from tests.toys import Chain, linear_module, run_trajectory

PATTERNS = [r"mods\.[02]"]


def _model() -> nn.Module:
    return Chain(linear_module(), nn.GELU().double(), linear_module(seed=3))


def _inputs(steps: int, batch: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(2, batch, 4, 6, generator=gen, dtype=torch.float64).unbind(0)
    return [a * math.cos(0.2 * i) + b * 0.1 * i for i in range(steps)]


def test_l1_error_terms_are_the_papers_sums() -> None:
    gen = torch.Generator().manual_seed(0)
    x, pred = torch.randn(3, 5, 7, generator=gen), torch.randn(3, 35, generator=gen)
    num, den = relational.l1_error_terms(x, pred)
    flat = x.reshape(3, -1)
    torch.testing.assert_close(num, (flat - pred).abs().sum(1))
    torch.testing.assert_close(den, flat.abs().sum(1))
    torch.testing.assert_close(relational.relative_l1_error(x, pred), num / den)


def test_rcs_decides_with_relationals_error_terms(monkeypatch) -> None:
    seen = []
    original = relational.l1_error_terms

    def spy(actual, predicted):
        seen.append(actual.shape[0])
        return original(actual, predicted)

    monkeypatch.setattr(relational, "l1_error_terms", spy)
    model, xs = _model(), _inputs(8)
    relcache.apply(model, relcache.RFC(order=1, threshold=0.2), patterns=PATTERNS)
    with torch.no_grad():
        run_trajectory(model, xs)
    assert seen == [2] * 6  # every step after the 2-step warm-up decides through it


def test_history_coefficients_are_taylor_coefficients(monkeypatch) -> None:
    calls = []
    original = taylor.taylor_coefficients

    def spy(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(taylor, "taylor_coefficients", spy)
    model, xs = _model(), _inputs(8)
    relcache.apply(model, relcache.TaylorSeer(interval=3, order=2), patterns=PATTERNS)
    with torch.no_grad():
        run_trajectory(model, xs)
    assert calls and set(calls) == {2}


def test_rcs_flops_are_counted_from_the_error_that_runs() -> None:
    b, n, m = 4, 256 * 64, 2
    counted = RCSSchedule(0.1, m, 2).cached_step_flops((b, 256, 64))
    taylor_sum = 2 * b * (m + 1) * n  # the bmm
    error = 3 * b * n + 2 * b * n  # cdist p=1 (subtract, |.|, sum) and ||I0||_1
    assert counted == taylor_sum + error
    assert torch.ops.aten._cdist_forward in CACHE_OPS


def test_a_context_named_like_an_automatic_branch_is_a_named_branch() -> None:
    model, xs = _model(), _inputs(6)
    relcache.apply(model, relcache.TaylorSeer(interval=2), patterns=PATTERNS)
    with torch.no_grad():
        for i, x in enumerate(xs):
            with relcache.at_step(model, i):
                t = torch.full((2,), 6.0 - i)
                model(x, t)
                with relcache.cache_context(model, "call_uncond"):
                    model(x, t)
    st = relcache.stats(model)
    assert st.steps == {"call0": 6, "call_uncond": 6}
    assert st.full_steps["call0"] == st.full_steps["call_uncond"] == [0, 1, 3, 5]
    assert st.row_nfc == [4.0, 4.0]  # the first automatic branch's rows
    with torch.no_grad(), pytest.raises(RuntimeError), relcache.at_step(model, 6):
        model(torch.zeros(2, 4, 5, dtype=torch.float64), torch.full((2,), 0.0))  # wrong width
    st = relcache.stats(model)  # the failed step drops the automatic branches only
    assert st.steps == {"call_uncond": 6}


@pytest.mark.parametrize(
    ("legacy", "split"),
    [
        (dict(rcs=False, interval=4, clamp=1.05), relcache.RFE(interval=4, clamp=1.05)),
        (
            dict(rfe=False, threshold=0.3, scope="sample"),
            relcache.RCS(threshold=0.3, scope="sample"),
        ),
        (dict(nfc=14, steps=50), relcache.Budget(nfc=14, steps=50)),
        (
            dict(rfe=False, rcs=False, full_steps=[0, 1, 5]),
            relcache.TaylorSeer(full_steps=[0, 1, 5]),
        ),
    ],
)
def test_engine_v2_switches_build_the_split_methods(legacy: dict, split) -> None:
    assert relcache.RFC(**legacy) == split


def test_rfc_refuses_switches_that_change_nothing() -> None:
    with pytest.raises(ValueError, match="RFC is RFE \\+ RCS"):
        relcache.RFC(rfe=True, threshold=0.3)
    with pytest.raises(ValueError, match="drop interval/full_steps/first"):
        relcache.RFC(threshold=0.3, interval=4)


def test_registry_entries_build_their_own_classes() -> None:
    assert type(relcache.build_method("rfe2", interval=4)) is relcache.RFE
    assert type(relcache.build_method("rcs2", threshold=0.1)) is relcache.RCS
    assert type(relcache.build_method("budget2", nfc=10)) is relcache.Budget
    assert relcache.METHODS["budget"].adaptive and not relcache.METHODS["rfe"].adaptive


def test_engine_names_no_method() -> None:
    from pathlib import Path

    text = (Path(relcache.__file__).parent / "caching" / "engine.py").read_text()
    for word in ("RCS", "RFE", "RFC", "Taylor", "FORA", "driver", "threshold"):
        assert word not in text.replace("RFC_SPEC", ""), word
    assert len(text.splitlines()) <= 265
