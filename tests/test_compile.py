"""relcache.compile: the cached model's forward under torch.compile, fullgraph for fixed
schedules and RCS (two graphs, no recompiles over trajectories; RCS decides from an eager run up
to its driver), the same samples and stats as eager. Dynamo's "eager" backend keeps the test
fast: it traces exactly as inductor would, without generating kernels (benchmarks/hot_path.py
times inductor)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch._dynamo.utils import counters

import relcache
from relcache.api import _engine
from relcache.sampling import generate
from relcache.shipped.loading import random_dit

FIXED = {
    "fora": relcache.FORA(interval=3),
    "taylorseer2": relcache.TaylorSeer(interval=3, order=2),
    "rfe2": relcache.RFC(order=2, rcs=False, interval=3),
    "rfe2-clamp": relcache.build_method("rfe2", clamp=1.05, interval=3),
}
RCS = {
    "rfc2": relcache.RFC(order=2, threshold=0.3),
    "rfc2-batch": relcache.RFC(order=2, threshold=0.3, scope="batch"),
    "rfc2-budget": relcache.RFC(order=2, nfc=6, steps=12),
}


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return random_dit("DiT-FM", depth=2, hidden_size=64, num_heads=4)


def _sample(model, seed: int = 1, labels=(1, 2, 3)) -> torch.Tensor:
    return generate(model, list(labels), steps=12, cfg_scale=3.0, seed=seed, progress=False)


def _eager(model, config):
    with relcache.cached(model, config):
        return _sample(model), relcache.stats(model)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("name", list(FIXED))
def test_fixed_schedules_compile_to_two_graphs_with_the_eager_samples(model, name) -> None:
    config = FIXED[name]
    ref, ref_stats = _eager(model, config)
    with relcache.cached(model, config):
        relcache.compile(model, backend="eager")  # fullgraph=True: a graph break would raise
        out = _sample(model)
        first = _graphs()
        again = _sample(model, seed=2)  # a second generation, other noise: no recompile
        stats = relcache.stats(model)
    assert first == 2  # the full step and the cached step
    assert _graphs() == first and not counters["graph_break"]
    assert torch.equal(out, ref)
    assert stats.full_steps == ref_stats.full_steps
    assert stats.module_calls == ref_stats.module_calls
    assert not torch.equal(again, out)


@pytest.mark.parametrize("name", list(RCS))
def test_rcs_compiles_to_two_graphs_with_the_eager_samples_and_schedules(model, name) -> None:
    """RCS decides in the root hook (from an eager run up to its driver): fullgraph, no break,
    the same samples and schedules as eager (with a threshold or a budget)."""
    config = RCS[name]
    ref, ref_stats = _eager(model, config)
    with relcache.cached(model, config):
        relcache.compile(model, backend="eager")  # fullgraph=True: a graph break would raise
        out = _sample(model)
        first = _graphs()
        assert torch.equal(_sample(model), out)  # the same generation again: no new graph
        stats = relcache.stats(model)
    assert first == 2 and _graphs() == first and not counters["graph_break"]
    if len({tuple(r) for rows in ref_stats.schedules.values() for r in rows}) == 1:
        assert torch.equal(out, ref)
    else:  # rows took different schedules: partial steps run their full rows as a sub-batch
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    assert stats.schedules == ref_stats.schedules and stats.nfc == ref_stats.nfc
    assert stats.module_calls == ref_stats.module_calls


def _drifting_rows(model, steps: int = 12) -> list[torch.Tensor]:
    """A trajectory whose 4 rows change at 4 different paces (per-row RCS splits them)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 1, 28, 28, generator=g)  # (B, C, H, W)
    pace = torch.tensor([0.01, 0.05, 0.2, 0.5])[:, None, None, None]  # (B, 1, 1, 1)
    drift = torch.randn(4, 1, 28, 28, generator=g) * pace
    y = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        return [model(base + drift * i, torch.full((4,), 999 - 80 * i), y) for i in range(steps)]


def test_per_row_rcs_splits_its_partial_steps(model) -> None:
    """Rows that take different schedules make partial steps: the cached graph runs for every
    row and the full rows alone run eagerly (a sub-batch); same schedules and, up to the
    sub-batch's rounding, the same outputs as eager; still two graphs."""
    config = relcache.RFC(order=2, threshold=0.1)
    with relcache.cached(model, config):
        ref = _drifting_rows(model)
        ref_stats = relcache.stats(model)
    rows = ref_stats.schedules["call0"]
    assert len({tuple(r) for r in rows}) == 4  # four schedules: partial steps exist
    with relcache.cached(model, config):
        relcache.compile(model, backend="eager")
        out = _drifting_rows(model)
        stats = relcache.stats(model)
        again = _drifting_rows(model)  # a second generation: no new graph
    assert stats.schedules["call0"] == rows and stats.module_calls == ref_stats.module_calls
    assert max((a - b).abs().max().item() for a, b in zip(out, ref, strict=True)) < 1e-5
    assert all(torch.equal(a, b) for a, b in zip(again, out, strict=True))
    assert _graphs() == 2 and not counters["graph_break"]


def test_without_slice_batch_a_partial_step_runs_eagerly(model) -> None:
    """Adapters that forbid sub-batches (FLUX): the whole partial step runs the eager forward,
    bit for bit the eager path."""
    config = relcache.RFC(order=2, threshold=0.1)
    runs = []
    for compiled in (False, True):
        with relcache.cached(model, config):
            engine = _engine(model)
            engine.targets = dataclasses.replace(engine.targets, slice_batch=False)
            if compiled:
                relcache.compile(model, backend="eager")
            runs.append(_drifting_rows(model))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    assert _graphs() == 2 and not counters["graph_break"]


def test_a_driver_the_model_never_calls_is_named() -> None:
    """The probe runs the whole forward without meeting the driver: a clear error."""

    class TwoPaths(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    toy = TwoPaths()
    with relcache.cached(toy, relcache.RFC(order=2, threshold=0.1), patterns=["unused"]):
        relcache.compile(toy, backend="eager")
        with torch.no_grad():
            for i in range(2):  # warm-up steps: full, the probe records the driver's input
                with relcache.at_step(toy, i), pytest.raises(RuntimeError, match="not called"):
                    toy(torch.randn(2, 4), torch.tensor([999.0, 999.0]))


def test_rcs_driver_that_never_runs_is_named(model) -> None:
    with relcache.cached(model, RCS["rfc2"], driver=r"blocks\.1\.attn"):
        relcache.compile(model, backend="eager")
        with pytest.raises(RuntimeError, match="driver"):
            _sample(model)


def test_remove_restores_the_uncompiled_forward(model) -> None:
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([999, 10]), torch.tensor([1, 2])
    with torch.no_grad():
        before = model(x, t, y)
    assert "forward" not in model.__dict__
    relcache.apply(model, FIXED["taylorseer2"])
    relcache.compile(model, backend="eager")
    relcache.compile(model, backend="eager")  # again: still compiles the eager forward
    assert "forward" in model.__dict__
    relcache.remove(model)
    assert "forward" not in model.__dict__
    assert all("forward" not in m.__dict__ for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x, t, y), before)


def test_compile_needs_relcache_applied(model) -> None:
    with pytest.raises(ValueError, match="relcache.apply first"):
        relcache.compile(model)


@pytest.mark.parametrize("config", [FIXED["rfe2"], RCS["rfc2-batch"]], ids=["rfe2", "rfc2"])
def test_a_diffusers_transformer_compiles_in_one_graph_per_decision(config) -> None:
    """The diffusers DiT reads its step from the timestep (in the eager root hook): fullgraph."""
    pytest.importorskip("diffusers")
    from relcache.models.diffusers_dit import DiffusersDiT

    wrapped = DiffusersDiT.from_dit(random_dit("DiT-FM", depth=2, hidden_size=64, num_heads=4))
    with relcache.cached(wrapped.transformer, config):
        ref = _sample(wrapped)
        ref_stats = relcache.stats(wrapped.transformer)
    with relcache.cached(wrapped.transformer, config):
        relcache.compile(wrapped.transformer, backend="eager")
        out = _sample(wrapped)
        assert torch.equal(_sample(wrapped), out)
        assert relcache.stats(wrapped.transformer).full_steps == ref_stats.full_steps
    assert torch.equal(out, ref)
    assert _graphs() == 2 and not counters["graph_break"]


def test_rcs_with_sequential_cfg_branches_matches_eager(model) -> None:
    """Two calls per step (cond, then uncond, same timestep): the second branch follows the
    first's decision (scope="sample"); compiled, it probes only to record its full rows."""
    config = relcache.RFC(order=2, threshold=0.1, scope="sample")
    g = torch.Generator().manual_seed(0)
    x, drift = torch.randn(2, 2, 1, 28, 28, generator=g)  # (B, C, H, W) each

    def trajectory() -> list[torch.Tensor]:
        outs = []
        with torch.no_grad():
            for i in range(12):
                t = torch.full((2,), 999 - 80 * i)
                for y in (torch.tensor([1, 2]), torch.tensor([10, 10])):  # cond, uncond
                    outs.append(model(x + 0.1 * i * drift, t, y))
        return outs

    with relcache.cached(model, config):
        ref, ref_stats = trajectory(), relcache.stats(model)
    with relcache.cached(model, config):
        relcache.compile(model, backend="eager")
        out, stats = trajectory(), relcache.stats(model)
    assert len(ref_stats.full_steps) == 2 and ref_stats.full_steps["call0"] == [0, 1, 5, 9]
    assert stats.full_steps == ref_stats.full_steps
    assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True))
    assert _graphs() == 2 and not counters["graph_break"]
