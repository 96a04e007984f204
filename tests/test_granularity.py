"""Granularity (caching/units.py): block and stack units predict residuals; factor dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import relcache
from relcache.caching import taylor
from relcache.caching.units import STACK, BlockUnits, StackUnit, pairing
from relcache.sampling.ddim import generate
from relcache.shipped.loading import random_dit
from tests.test_diffusers import CASES, _pipe, _run


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return random_dit("DiT-FM", depth=3, hidden_size=64, num_heads=4)


def _sample(model: nn.Module, config=None, labels=(1, 2), steps: int = 12, **kw) -> torch.Tensor:
    with relcache.cached(model, config) if config is not None else _nothing():
        out = generate(model, list(labels), steps=steps, cfg_scale=3.0, seed=1, progress=False)
        stats = relcache.stats(model) if config is not None else None
    return out, stats


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _engine(model):
    return model._relcache_engine


# ----- the residual rule, exactly ---------------------------------------------------------------
class _Block(nn.Module):
    """x -> x + tanh(W x): a residual block with a known contribution."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.lin(x))


class _Stack(nn.Module):
    def __init__(self, depth: int = 3, dim: int = 6) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(dim, s) for s in range(depth))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x * 2  # the "final layer"


def _toy_run(granularity: str, xs: list[torch.Tensor], order: int = 1) -> list[torch.Tensor]:
    model = _Stack()
    cfg = relcache.TaylorSeer(full_steps=(0, 1, 2), order=order, granularity=granularity)
    outs = []
    with torch.no_grad(), relcache.cached(model, cfg, patterns=r"blocks\.\d+"):
        for i, x in enumerate(xs):
            with relcache.at_step(model, i):
                outs.append(model(x))
    return outs


def test_block_and_stack_units_predict_residuals_exactly() -> None:
    torch.manual_seed(0)
    xs = [torch.randn(2, 5, 6) + 0.1 * i for i in range(5)]
    model = _Stack()
    with torch.no_grad():
        # residuals of each block, and of the stack, at the full steps 0, 1, 2
        per_block, stack_in, stack_res = [], [], []
        for x in xs[:3]:
            h, rs = x, []
            for b in model.blocks:
                y = b(h)
                rs.append(y - h)
                h = y
            per_block.append(rs)
            stack_in.append(x)
            stack_res.append(h - x)
    # order 1, full steps 0, 1, 2, step 4: k = 2, O_hat = f0 + 2 f1, f1 = R(2) - R(1)
    blocks = _toy_run("block", xs)
    stack = _toy_run("stack", xs)
    with torch.no_grad():
        h = xs[4]
        for j in range(3):
            h = h + per_block[2][j] + 2 * (per_block[2][j] - per_block[1][j])
        torch.testing.assert_close(blocks[4], 2 * h, rtol=1e-6, atol=1e-6)
        want = xs[4] + stack_res[2] + 2 * (stack_res[2] - stack_res[1])
        torch.testing.assert_close(stack[4], 2 * want, rtol=1e-6, atol=1e-6)
    # full steps are the model's own outputs, bit for bit
    with torch.no_grad():
        for i in range(3):
            assert torch.equal(blocks[i], model(xs[i])) and torch.equal(stack[i], model(xs[i]))


def test_cached_stack_step_runs_no_block(model) -> None:
    calls = []
    handles = [b.register_forward_hook(lambda *a: calls.append(1)) for b in model.blocks]
    try:
        cfg = relcache.TaylorSeer(interval=4, granularity="stack")
        _, stats = _sample(model, cfg, steps=12)
    finally:
        for h in handles:
            h.remove()
    full = len(cfg.schedule(12))
    assert len(calls) == 3 * 12  # every block's hook fires (its forward is the wrapper) ...
    assert stats.nfc == full
    # ... but only the first block's call at a cached step computes anything: one unit
    engine_names = [n for n, _ in model.named_modules() if n.startswith("blocks.")]
    assert [n for n in engine_names if n.count(".") == 1] == ["blocks.0", "blocks.1", "blocks.2"]


def test_taylor_block_and_stack_agree_and_full_schedule_is_exact(model) -> None:
    ref, _ = _sample(model)
    for g in ("block", "stack"):
        out, _ = _sample(model, relcache.TaylorSeer(interval=1, granularity=g))
        assert torch.equal(out, ref), g
    block, _ = _sample(model, relcache.TaylorSeer(interval=3, granularity="block"))
    stack, _ = _sample(model, relcache.TaylorSeer(interval=3, granularity="stack"))
    module, _ = _sample(model, relcache.TaylorSeer(interval=3))
    # Taylor is linear: the stack's residual prediction is the sum of the blocks'
    torch.testing.assert_close(block, stack, rtol=1e-4, atol=1e-4)
    assert not torch.equal(block, module)


@pytest.mark.parametrize("granularity", ["block", "stack"])
def test_fixed_weight_works_at_every_granularity(model, granularity: str) -> None:
    """The paper's fixed-w ablation wraps like any predictor: w = 1 is TaylorSeer's unit."""
    from relcache.caching.methods import FixedWeight

    ts, _ = _sample(model, relcache.TaylorSeer(interval=3, granularity=granularity))
    w1, _ = _sample(model, FixedWeight(interval=3, weight=1.0, granularity=granularity))
    w08, stats = _sample(model, FixedWeight(interval=3, weight=0.8, granularity=granularity))
    assert torch.equal(w1, ts) and not torch.equal(w08, ts) and torch.isfinite(w08).all()
    assert stats.nfc == 5 and FixedWeight(weight=0.8, granularity=granularity).describe().endswith(
        granularity
    )


def test_rfe_ratio_is_the_units_own(model) -> None:
    """RFE at block granularity: s = ||R(i) - R(j)|| / ||I(i) - I(j)|| of the block's residual
    R and its input I (RFC_SPEC §3 at the unit's level)."""
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"in": [], "res": []}

    def hook(mod, args, out):
        seen["in"].append(args[0].detach().clone())
        seen["res"].append((out - args[0]).detach().clone())

    h = model.blocks[1].register_forward_hook(hook)
    try:
        cfg = relcache.RFE(interval=4, granularity="block")
        with relcache.cached(model, cfg):
            generate(model, [1], steps=3, cfg_scale=3.0, seed=1, progress=False)
            units = _engine(model).now.branches
            pred = next(iter(units.values())).predictor
    finally:
        h.remove()
    assert isinstance(pred, BlockUnits)
    slot = pred.inner.relational["blocks.1"].slots[0]
    d_out = (seen["res"][1] - seen["res"][0]).flatten(1).norm(dim=1)
    d_in = (seen["in"][1] - seen["in"][0]).flatten(1).norm(dim=1)
    torch.testing.assert_close(pred.inner.ratios[slot].float(), d_out / d_in, rtol=1e-4, atol=0)


def test_stack_cache_is_small_and_rcs_decides_per_sample(model) -> None:
    mod = _sample(model, relcache.TaylorSeer(interval=4))[1].peak_cache_bytes
    stack = _sample(model, relcache.TaylorSeer(interval=4, granularity="stack"))[1]
    assert stack.peak_cache_bytes * 2 <= mod  # depth 3 x (attn, mlp) -> 1 stack (x 3 here)
    # a batch equals its samples run alone, under RCS on the stack (the default sample scope)
    cfg = relcache.RFC(threshold=0.3, granularity="stack")
    both, stats = _sample(model, cfg, labels=(1, 2))
    one, _ = _sample(model, cfg, labels=(1,))
    torch.testing.assert_close(both[:1], one, rtol=1e-5, atol=1e-5)
    assert 4 <= stats.nfc < 12


def _drifting_rows(model, rows: list[int], steps: int = 12) -> list[torch.Tensor]:
    """Rows changing at 4 different paces (per-row RCS gives them different schedules)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 1, 28, 28, generator=g)  # (B, C, H, W)
    pace = torch.tensor([0.01, 0.05, 0.2, 0.5])[:, None, None, None]  # (B, 1, 1, 1)
    drift = (torch.randn(4, 1, 28, 28, generator=g) * pace)[rows]
    y = torch.tensor([1, 2, 3, 4])[rows]
    t = lambda i: torch.full((len(rows),), 999 - 80 * i)  # noqa: E731
    with torch.no_grad():
        return [model(base[rows] + drift * i**3 / 10, t(i), y) for i in range(steps)]


@pytest.mark.parametrize("granularity", ["block", "stack"])
def test_partial_rows_equal_each_row_alone(model, granularity: str) -> None:
    """scope="row": at a partial step the full rows run the blocks alone and the others are
    predicted (stack: passed through); each row equals that row run alone."""
    cfg = relcache.RFC(threshold=0.1, scope="row", granularity=granularity)
    with relcache.cached(model, cfg):
        batch = _drifting_rows(model, [0, 1, 2, 3])
        rows = relcache.stats(model).schedules["call0"]
        alone = [_drifting_rows(model, [r]) for r in range(4)]
    assert len({tuple(r) for r in rows}) >= 3  # partial steps exist
    for r in range(4):
        for a, b in zip(batch, alone[r], strict=True):
            torch.testing.assert_close(a[r : r + 1], b, rtol=1e-4, atol=1e-5)


def test_compiled_stack_matches_eager(model) -> None:
    cfg = relcache.TaylorSeer(interval=3, granularity="stack")
    eager, _ = _sample(model, cfg)
    torch._dynamo.reset()
    with relcache.cached(model, cfg):
        relcache.compile(model, backend="eager")
        out = generate(model, [1, 2], steps=12, cfg_scale=3.0, seed=1, progress=False)
    torch._dynamo.reset()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


# ----- factor dtypes ----------------------------------------------------------------------------
def test_factors_follow_the_model_dtype_by_default_and_update_in_float32(model) -> None:
    bf = random_dit("DiT-FM", depth=2, hidden_size=64, num_heads=4).to(torch.bfloat16)
    for wanted, expect in ((None, torch.bfloat16), ("float32", torch.float32)):
        cfg = relcache.TaylorSeer(interval=3, factors_dtype=wanted)
        with relcache.cached(bf, cfg):
            generate(bf, [1], steps=6, cfg_scale=3.0, seed=1, progress=False)
            pred = next(iter(_engine(bf).now.branches.values())).predictor
            assert {f.dtype for st in pred.modules.values() for f in st.factors} == {expect}
    cfg = relcache.TaylorSeer(interval=3)
    with relcache.cached(model, cfg):
        generate(model, [1], steps=6, cfg_scale=3.0, seed=1, progress=False)
        pred = next(iter(_engine(model).now.branches.values())).predictor
        assert {f.dtype for st in pred.modules.values() for f in st.factors} == {torch.float32}


def test_stored_factor_update_is_float32_arithmetic_rounded_once() -> None:
    torch.manual_seed(0)
    v0, v1 = torch.randn(2, 3, 4, dtype=torch.bfloat16), torch.randn(2, 3, 4, dtype=torch.bfloat16)
    gap, n0, n1 = torch.tensor([1, 2]), torch.tensor([0, 0]), torch.tensor([1, 1])
    scratch = taylor.Scratch()
    f, _ = taylor.record_rows(None, v0, gap, n0, None, 2, scratch, torch.bfloat16)
    assert f.dtype == torch.bfloat16
    with torch.no_grad():
        f2, new = taylor.record_rows(f.clone(), v1, gap, n1, None, 2, scratch, torch.bfloat16)
    want = taylor.update_factors(f.float(), v1, gap, n1)  # float32 arithmetic on the stored
    assert new.dtype == torch.float32 and torch.equal(new, want)
    assert torch.equal(f2, want.to(torch.bfloat16))


def test_bad_granularity_and_dtype_say_what_to_pass(model) -> None:
    with pytest.raises(ValueError, match="module, block, stack"):
        relcache.TaylorSeer(granularity="layer")
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        relcache.RFC(threshold=0.1, factors_dtype="fp8")
    with pytest.raises(ValueError, match="granularity must be one of"):
        relcache.build_method("rfe2:interval=4:granularity=blocks")
    assert relcache.build_method("taylorseer2:granularity=stack").describe().endswith(" stack")


def test_pairing_by_shape_when_a_block_drops_a_stream() -> None:
    a, b = torch.zeros(1, 3, 4), torch.zeros(1, 5, 4)
    assert pairing([b], [a, b], "x") == [1]
    with pytest.raises(ValueError, match="granularity='module'"):
        pairing([a], [a, a], "x")


def test_units_are_registered_once_per_name(model) -> None:
    cfg = relcache.TaylorSeer(interval=4, granularity="stack")
    with relcache.cached(model, cfg):
        generate(model, [1], steps=6, cfg_scale=3.0, seed=1, progress=False)
        pred = next(iter(_engine(model).now.branches.values())).predictor
        assert isinstance(pred, StackUnit) and list(pred.inner.modules) == [STACK]


# ----- the diffusers families -------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("granularity", ["block", "stack"])
def test_families_cache_blocks_and_stacks(name: str, granularity: str) -> None:
    pipe = _pipe(name)
    ref = _run(name, pipe)
    with relcache.cached(pipe, relcache.TaylorSeer(interval=1, granularity=granularity)):
        same = _run(name, pipe)
    assert all(torch.equal(a, b) for a, b in zip(ref, same, strict=True))
    cfg = relcache.TaylorSeer(interval=3, warmup=2, granularity=granularity)
    with relcache.cached(pipe, cfg):
        outs = _run(name, pipe)
        stats = relcache.stats(pipe)
    assert all(torch.isfinite(o).all() for o in outs)
    steps = next(iter(stats.steps.values()))
    assert stats.nfc == len(cfg.schedule(steps))
    calls = stats.module_calls
    assert sum(c["cached"] for c in calls.values()) > 0  # cached steps skipped the blocks


# ----- the hot path: a cached stack step runs no block -----------------------------------------
def test_cached_stack_step_costs_one_unit_and_no_sync() -> None:
    from relcache.evaluation.hot_path import count_calls

    model = random_dit("DiT-FM", hidden_size=48, num_heads=4)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 10, 10])

    def call(i: int):
        with relcache.at_step(model, i):
            return model(x, torch.full((4,), 999.0 - i), y)

    cfg = relcache.TaylorSeer(full_steps=(0, 1, 2), granularity="stack")
    with relcache.cached(model, cfg):
        names = _engine(model).names
        counts = count_calls(model, names, call, 6)
    bare = count_calls(model, names, call, 1)[0]
    for step in counts[3:]:
        ops = [step.per_module[n] for n in names]
        assert ops[0] <= 4  # the stack's bmm and the add to its input (+ views)
        assert ops[1:] == [0] * (len(names) - 1)  # the other blocks pass their input through
        assert step.syncs == 0
        assert step.total < bare.total / 5
