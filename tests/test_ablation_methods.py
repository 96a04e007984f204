"""The paper's ablation methods beside RFC (issue 21 item 5, RFC_SPEC §3-§4): a fixed magnitude
weight w on Taylor's increment instead of RFE's (``weighted``), and RCS monitoring every cached
module's input instead of the first's (``rcsall``). Exact checks on toy stacks of Linear modules,
and one run of each on the shipped model."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import relcache
from relcache.caching.history import History
from relcache.caching.methods import METHODS, FixedWeight, RCSAll, build_method
from relcache.caching.predictors import TaylorPredictor, WeightedPredictor
from relcache.caching.schedulers import RCSAllSchedule
from relcache.caching.steps import FIRST
from tests.toys import Chain, linear_module, run_trajectory

PATTERNS = [r"mods\.\d+"]
STEPS = 14


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    """Tiny tensors (conftest's one_thread)."""


def _stack(n: int = 3) -> nn.Module:
    """A stack of random affine maps, every one cached (float64)."""
    return Chain(*(linear_module(seed=s) for s in range(n)))


def _inputs(steps: int = STEPS, batch: int = 3) -> list[Tensor]:
    """Smooth per-step inputs (B, 4, 6) whose curvature differs per row (rows diverge)."""
    g = torch.Generator().manual_seed(0)
    base, drift, curve = torch.randn(3, batch, 4, 6, generator=g, dtype=torch.float64).unbind(0)
    speed = torch.linspace(0.5, 3.0, batch, dtype=torch.float64)[:, None, None]  # (B, 1, 1)
    return [base + 0.1 * i * drift + 0.02 * speed * i * i * curve for i in range(steps)]


def _run(model: nn.Module, config, xs: list[Tensor], patterns=PATTERNS):
    """Outputs and stats of one trajectory with ``config``."""
    relcache.apply(model, config, patterns=patterns)
    with torch.no_grad():
        outs = run_trajectory(model, xs)
    return outs, relcache.stats(model)


def _scheduler(model: nn.Module):
    return relcache.api._engine(model).now.branches[FIRST].scheduler


# ----- fixed magnitude weight ---------------------------------------------------------------
def test_weight_one_is_taylorseer_bit_for_bit() -> None:
    xs = _inputs()
    ts, ts_stats = _run(_stack(), relcache.TaylorSeer(interval=3, order=2), xs)
    w1, w1_stats = _run(_stack(), FixedWeight(interval=3, order=2, weight=1.0), xs)
    assert w1_stats.full_steps == ts_stats.full_steps
    assert all(torch.equal(a, b) for a, b in zip(w1, ts, strict=True))


@pytest.mark.parametrize("weight", [0.8, 1.2])
@pytest.mark.parametrize("order", [1, 2])
def test_weighted_prediction_is_f0_plus_w_times_taylors_increment(weight, order) -> None:
    xs = _inputs()  # one cached module: its input does not depend on the predictions
    ts, stats = _run(Chain(linear_module()), relcache.TaylorSeer(interval=4, order=order), xs)
    config = FixedWeight(interval=4, order=order, weight=weight)
    weighted, _ = _run(Chain(linear_module()), config, xs)
    full = stats.full_steps["call0"]
    assert full == [0, 1, 5, 9, 13]
    for t in range(STEPS):
        f0 = ts[max(s for s in full if s <= t)]  # O(i), the last full step's output
        expected = ts[t] if t in full else f0 + weight * (ts[t] - f0)
        torch.testing.assert_close(weighted[t], expected, rtol=1e-12, atol=1e-12)


def test_weighted_coefficients_are_prepared_once_per_step() -> None:
    """One multiply of the (B, m+1) row per step, shared by every module; predict reads it."""
    g = torch.Generator().manual_seed(1)
    weighted, plain = WeightedPredictor(2, 0.5), TaylorPredictor(2)
    history = History()
    history.start_rows(2, torch.device("cpu"))
    for step in (0, 1, 3):
        history.step = step
        for name in ("a", "b"):
            out = [torch.randn(2, 5, generator=g, dtype=torch.float64)]
            for p in (weighted, plain):
                p.record(name, history, None, out, [out[0]])
        history.advance(None, True)
    history.step = 5
    weighted.prepare(history)
    ca, cb = weighted.coefficients("a", history, []), weighted.coefficients("b", history, [])
    assert ca[0] is cb[0]  # computed once for the step
    scale = torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64)
    torch.testing.assert_close(ca[0], history.coefficients(2) * scale, rtol=0, atol=0)
    f0 = plain.anchor("a")[0]
    expected = f0 + 0.5 * (plain.predict("a", history, [])[0] - f0)
    torch.testing.assert_close(weighted.predict("a", history, [])[0], expected)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"weight": 0}, "weight must be a finite number > 0"),
        ({"weight": -0.8}, "weight must be a finite number > 0"),
        ({"weight": float("nan")}, "weight must be a finite number > 0"),
        ({"weight": float("inf")}, "weight must be a finite number > 0"),
        ({"weight": True}, "weight must be a finite number > 0"),
        ({"weight": "0.8"}, "weight must be a finite number > 0"),
        ({"order": 0}, "order must be an integer >= 1"),
        ({"interval": 0}, "interval must be a positive integer"),
    ],
)
def test_bad_weighted_configs_raise_with_fix(kwargs, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        FixedWeight(**kwargs)


def test_weighted_in_the_registry_cli_and_bench() -> None:
    from relcache.cli import build_parser
    from relcache.commands.common import method_from_args
    from relcache.evaluation.budgets import bench_method

    cfg = build_method("weighted2:weight=0.8")
    assert cfg == FixedWeight(order=2, weight=0.8, interval=4, warmup=2)
    assert cfg.describe() == "+w=0.8 m=2" and not cfg.adaptive
    assert cfg.schedule(50) == relcache.TaylorSeer(interval=4).schedule(50)
    at8, info = METHODS["weighted"].for_nfc(8, 50, weight=1.2)
    assert at8.interval == 7 and info == {"interval": 7} and at8.weight == 1.2
    for argv in (["--method", "weighted:weight=0.8"], ["--method", "weighted", "--weight", "0.8"]):
        args = build_parser().parse_args(["generate", "--model", "m", *argv])
        assert method_from_args(args, 50) == FixedWeight(weight=0.8)
    args = build_parser().parse_args(["generate", "--model", "m", "--method", "weighted1"])
    assert method_from_args(args, 50).order == 1
    with pytest.raises(ValueError, match="does not use --weight"):
        args = build_parser().parse_args(["generate", "--model", "m", "--weight", "0.8"])
        method_from_args(args, 50)
    assert bench_method("weighted2:weight=0.8").entry is METHODS["weighted"]


# ----- RCS over every module ----------------------------------------------------------------
@pytest.mark.parametrize("scope", ["row", "sample", "batch"])
def test_rcsall_with_one_cached_module_is_rcs(scope: str) -> None:
    xs, one = _inputs(), [r"mods\.0"]
    spec = f"1:threshold=0.05:scope={scope}"
    rcs, rcs_stats = _run(_stack(), build_method("rcs" + spec), xs, one)
    every, every_stats = _run(model := _stack(), build_method("rcsall" + spec), xs, one)
    assert every_stats.schedules == rcs_stats.schedules
    assert all(torch.equal(a, b) for a, b in zip(every, rcs, strict=True))
    sched = _scheduler(model)
    assert isinstance(sched, RCSAllSchedule) and sched.others == {} and sched.driver == "mods.0"


def _relative_l1(x: Tensor, predicted: Tensor) -> Tensor:
    """||x - x_hat||_1 / ||x||_1 of one row (by hand)."""
    return (x - predicted).abs().sum() / x.abs().sum()


def _order1_error(inputs: list[Tensor], t: int, full: list[int]) -> Tensor:
    """A module's input error at cached step t under order-1 Taylor from its last two full
    steps i > j: I_hat = I(i) + (t - i) (I(i) - I(j)) / (i - j) (by hand)."""
    j, i = [s for s in full if s < t][-2:]
    return _relative_l1(inputs[t], inputs[i] + (t - i) * (inputs[i] - inputs[j]) / (i - j))


def test_rcsall_rule_by_hand_per_row() -> None:
    """e(k) = (e_0(k) + e_1(k-1) + e_2(k-1)) / 3, e_m = 0 after a full step; A > tau -> full."""
    tau, xs, model = 0.004, _inputs(), _stack()
    seen: dict[int, list[Tensor]] = {m: [] for m in range(3)}
    for m, mod in enumerate(model.mods):
        mod.register_forward_pre_hook(lambda _, args, m=m: seen[m].append(args[0].clone()))
    _, stats = _run(model, build_method("rcsall1:scope=row", threshold=tau), xs)
    schedules = stats.schedules["call0"]
    accs = []
    for b in range(3):
        rows = {m: [x[b] for x in seen[m]] for m in range(3)}  # (4, 6) per step
        full, acc = [0, 1], torch.zeros((), dtype=torch.float64)
        for t in range(2, STEPS):
            error = _order1_error(rows[0], t, full)
            for m in (1, 2):
                if t - 1 not in full:  # e_m(t - 1); 0 where step t - 1 was full
                    error = error + _order1_error(rows[m], t - 1, full)
            acc = acc + error / 3
            if acc > tau:
                full.append(t)
                acc = torch.zeros((), dtype=torch.float64)
        assert schedules[b] == full, (b, schedules[b], full)
        accs.append(acc)
    assert len({tuple(s) for s in schedules}) > 1  # the rows took different schedules
    assert any(len(s) > 2 for s in schedules)
    torch.testing.assert_close(_scheduler(model).acc, torch.stack(accs), rtol=1e-12, atol=1e-15)


def test_rcsall_differs_from_rcs_on_a_stack() -> None:
    xs = _inputs()
    _, rcs = _run(_stack(), build_method("rcs1:threshold=0.004:scope=row"), xs)
    _, every = _run(_stack(), build_method("rcsall1:threshold=0.004:scope=row"), xs)
    assert every.schedules != rcs.schedules


def _cfg_trajectory(model: nn.Module, samples: list[int]) -> list[Tensor]:
    """Batched CFG: rows (cond of each sample, then uncond of each); equal latent halves."""
    g = torch.Generator().manual_seed(2)
    base, drift = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64).unbind(0)
    y = torch.randn(2, 3, 1, 6, generator=g, dtype=torch.float64)  # (branch, sample, 1, 6)
    idx = torch.tensor(samples)
    y = torch.cat([y[0, idx], y[1, idx]])  # (2n, 1, 6)
    outs = []
    with torch.no_grad():
        for i in range(STEPS):
            x = (base + 0.1 * i * drift + 0.03 * i * i * base.flip(-1))[idx]  # (n, 4, 6)
            t = torch.full((2 * len(samples),), float(STEPS - i))  # decreasing, like a sampler
            outs.append(model(torch.cat([x, x]), t, y))
    return outs


def test_rcsall_sample_scope_shares_a_schedule_per_sample_and_batches_are_independent() -> None:
    config = build_method("rcsall1:threshold=0.01")
    relcache.apply(batched := _stack(), config, patterns=PATTERNS)
    together = _cfg_trajectory(batched, [0, 1, 2])
    schedules = relcache.stats(batched).schedules["call0"]
    assert [schedules[j] for j in range(3)] == [schedules[j + 3] for j in range(3)]
    assert len({tuple(s) for s in schedules}) > 1
    for s in range(3):
        relcache.apply(alone := _stack(), config, patterns=PATTERNS)
        outs = _cfg_trajectory(alone, [s])
        assert relcache.stats(alone).schedules["call0"] == [schedules[s], schedules[s + 3]]
        for a, b in zip(outs, together, strict=True):
            torch.testing.assert_close(a, b[[s, s + 3]], rtol=1e-12, atol=1e-12)


def test_rcsall_refuses_relcache_compile() -> None:
    model = _stack()
    relcache.apply(model, build_method("rcsall1:threshold=0.01"), patterns=PATTERNS)
    torch._dynamo.reset()
    relcache.compile(model, backend="eager")
    try:
        with pytest.raises(RuntimeError, match="without relcache.compile"):
            run_trajectory(model, _inputs(4))
    finally:
        torch._dynamo.reset()


def test_rcsall_config_registry_and_calibration() -> None:
    from relcache.evaluation.budgets import bench_method

    cfg = build_method("rcsall1:threshold=0.2:scope=batch")
    assert cfg == RCSAll(order=1, threshold=0.2, scope="batch") and cfg.adaptive
    assert cfg.describe() == "+RCS all m=1 batch"
    assert RCSAll(threshold=0.2).describe() == "+RCS all m=2"
    with pytest.raises(ValueError, match="RCS needs a threshold > 0"):
        RCSAll()
    with pytest.raises(ValueError, match="scope must be one of"):
        RCSAll(threshold=0.2, scope="pair")
    with pytest.raises(ValueError, match="needs granularity='module'.*use rcs"):
        RCSAll(threshold=0.2, granularity="stack")
    entry = METHODS["rcsall"]
    with pytest.raises(ValueError, match="calibrated threshold"):
        entry.for_nfc(8, 20)
    made = []

    def calibrate(make, target):
        made.append(make(0.3))
        return 0.25, {"nfc": target}

    config, info = entry.for_nfc(8, 20, calibrate=calibrate, order=1)
    assert config == RCSAll(order=1, threshold=0.25) and info == {"threshold": 0.25, "nfc": 8}
    assert made == [RCSAll(order=1, threshold=0.3)]
    assert bench_method("rcsall1").adaptive


# ----- the shipped model --------------------------------------------------------------------
def test_both_run_on_the_shipped_model_with_the_expected_nfc() -> None:
    from relcache.sampling.ddim import generate
    from relcache.shipped import load_generator

    model = load_generator()

    def run(config) -> tuple[Tensor, float]:
        with relcache.cached(model, config):
            x = generate(model, [0, 7], steps=10, cfg_scale=3.0, seed=0, progress=False)
            return x, relcache.stats(model).nfc

    ts, ts_nfc = run(relcache.TaylorSeer(interval=4, order=2))
    w1, w1_nfc = run(build_method("weighted2:weight=1.0:interval=4"))
    w08, w08_nfc = run(build_method("weighted2:weight=0.8:interval=4"))
    assert ts_nfc == w1_nfc == w08_nfc == 4  # steps 0, 1, 5, 9
    assert torch.equal(w1, ts) and torch.isfinite(w08).all() and not torch.equal(w08, ts)
    every, nfc = run(build_method("rcsall2:threshold=0.3"))
    assert torch.isfinite(every).all() and 2 <= nfc <= 10
    _, always = run(build_method("rcsall2:threshold=1e-12"))
    assert always == 10


def test_rcsall_counts_every_cached_modules_input_prediction_in_flops() -> None:
    """Its cached step predicts and scores each cached module's input, not the driver's only."""
    from relcache.evaluation.flops import dit_flops
    from relcache.models import create_dit

    rcs = dit_flops("DiT-FM", build_method("rcs2:threshold=0.1"), nfc=10)
    every = dit_flops("DiT-FM", build_method("rcsall2:threshold=0.1"), nfc=10)
    taylor = dit_flops("DiT-FM", build_method("taylorseer2"))
    per_input = rcs.cached_step_gflops - taylor.cached_step_gflops  # RCS's driver share
    with torch.device("meta"):
        dit = create_dit("DiT-FM")
    relcache.apply(dit, build_method("taylorseer2"))
    modules = len(relcache.api.cached_modules(dit))
    assert modules > 2 and per_input > 0
    expected = taylor.cached_step_gflops + modules * per_input
    assert every.cached_step_gflops == pytest.approx(expected, rel=1e-9)
