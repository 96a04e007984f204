"""TaylorSeer factors follow the official recursion exactly (RFC_SPEC §2)."""

import torch

import relcache
from relcache.api import _engine
from relcache.caching import taylor
from relcache.caching.steps import FIRST
from tests.toys import Chain, run_trajectory


def _signal_inputs(values: list[float]) -> list[torch.Tensor]:
    return [torch.full((2, 3, 4), v, dtype=torch.float64) for v in values]


def test_factor_recursion_hand_computed_quadratic_uneven() -> None:
    # O(i) = i^2 at full steps 0, 1, 5, 9; the latest gap divides every order:
    # step 1: f0=1, f1=1; step 5: f0=25, f1=(25-1)/4=6, f2=(6-1)/4=1.25;
    # step 9: f0=81, f1=(81-25)/4=14, f2=(14-6)/4=2.
    f, n = None, torch.zeros(1, dtype=torch.long)
    last = 0
    for step in (0, 1, 5, 9):
        gap = torch.tensor([max(step - last, 1)])
        new = taylor.update_factors(f, torch.tensor([[float(step**2)]]), gap, n)  # (1, r, 1)
        f = torch.cat([new, new.new_zeros(1, 3 - new.shape[1], 1)], dim=1)  # (1, 3, 1)
        n, last = n + 1, step
    assert f[0, :, 0].tolist() == [81.0, 14.0, 2.0]
    coeff = taylor.taylor_coefficients(torch.tensor([2]), n, order=2)
    pred = taylor.combine(f, coeff)
    assert pred.item() == 81 + 14 * 2 + 2 * 4 / 2  # 113, not 11^2: inexact on uneven gaps


def test_engine_factors_match_hand_values() -> None:
    model = Chain(torch.nn.Identity())
    relcache.apply(model, relcache.TaylorSeer(full_steps=[0, 1, 5, 9]), patterns=[r"mods\.0"])
    outs = run_trajectory(model, _signal_inputs([float(i * i) for i in range(12)]))
    state = _engine(model).now.branches[FIRST].predictor.modules["mods.0"]
    assert state.factors[0][0, :, 0].tolist() == [81.0, 14.0, 2.0]  # (B, m+1, N)
    assert outs[10][0, 0, 0].item() == 81 + 14 + 1  # k = 1
    assert outs[11][0, 0, 0].item() == 113
    assert outs[7][0, 0, 0].item() == 25 + 6 * 2 + 1.25 * 2  # k = 2 after step 5


def test_linear_signal_exact_for_any_order_and_schedule() -> None:
    values = [3.0 - 0.7 * i for i in range(30)]
    for order in (1, 2, 3):
        for sched in ([0, 1, 5, 9, 20], [0, 2, 3, 11, 12, 25]):
            model = Chain(torch.nn.Identity())
            relcache.apply(
                model, relcache.TaylorSeer(order=order, full_steps=sched), patterns=[r"mods\.0"]
            )
            outs = run_trajectory(model, _signal_inputs(values))
            for step in range(sched[1] + 1, 30):
                assert torch.allclose(
                    outs[step], torch.full_like(outs[step], values[step]), atol=1e-9
                ), (order, sched, step)


def test_order_grows_by_one_per_full_step() -> None:
    # cubic signal, m = 3: after 1 full step the prediction is constant, after 2 linear, ...
    values = [float(i**3) for i in range(10)]
    model = Chain(torch.nn.Identity())
    relcache.apply(
        model, relcache.TaylorSeer(order=3, full_steps=[0, 2, 4, 6]), patterns=[r"mods\.0"]
    )
    outs = [o[0, 0, 0].item() for o in run_trajectory(model, _signal_inputs(values))]
    assert outs[1] == 0.0  # only f0 = O(0)
    assert outs[3] == 8 + (8 - 0) / 2 * 1  # f0, f1
    f1, f1_old = (64 - 8) / 2, (8 - 0) / 2
    assert outs[5] == 64 + f1 + (f1 - f1_old) / 2 / 2  # f0, f1, f2
    assert _engine(model).now.branches[FIRST].predictor.modules["mods.0"].factors[0].shape[1] == 4


def test_fora_reuses_last_full_output() -> None:
    values = [float(i) for i in range(10)]
    model = Chain(torch.nn.Identity())
    relcache.apply(model, relcache.FORA(interval=3), patterns=[r"mods\.0"])
    outs = [o[0, 0, 0].item() for o in run_trajectory(model, _signal_inputs(values))]
    assert outs == [0, 1, 1, 1, 4, 4, 4, 7, 7, 7]


def test_in_place_update_equals_the_official_update() -> None:
    # rows with 0, 1, 2 and 3 earlier full steps (order r+1 exists only when n_full > r)
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(4, 3, 10, generator=gen)
    old[0, 1:] = 0
    old[1, 2:] = 0
    value = torch.randn(4, 2, 5, generator=gen, dtype=torch.float64)
    gap, n_full = torch.tensor([1, 3, 2, 5]), torch.tensor([0, 1, 2, 3])
    ref = taylor.update_factors(old.double(), value, gap, n_full)
    scratch = taylor.Scratch()
    with torch.no_grad():
        factors = old.double()
        out = taylor.update_factors_(factors, value, gap, n_full, scratch)
    assert out is factors and torch.equal(factors, ref)  # the same division, -0.0 == 0.0
    rows = torch.tensor([3, 1])
    with torch.no_grad():
        full, new = taylor.record_rows(factors.clone(), value[rows], gap[rows], n_full[rows],
                                       rows, 2, scratch)  # fmt: skip
    assert torch.equal(new, taylor.update_factors(ref[rows], value[rows], gap[rows], n_full[rows]))
    assert torch.equal(full[rows], new) and torch.equal(full[[0, 2]], ref[[0, 2]])


def test_no_grad_generation_updates_in_place_with_the_same_result() -> None:
    torch.manual_seed(1)
    base, drift = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    drift = drift * torch.tensor([0.01, 0.05, 0.2], dtype=torch.float64)[:, None, None]
    xs = [base + drift * i + 0.1 * drift * i * i for i in range(12)]  # rows drift at 3 rates
    runs = []
    for grad in (True, False):
        model = Chain(torch.nn.Linear(6, 6).double())
        torch.manual_seed(0)
        model.mods[0].reset_parameters()
        relcache.apply(model, relcache.RFC(order=2, threshold=0.05), patterns=[r"mods\.0"])
        with torch.set_grad_enabled(grad):
            runs.append([o.detach() for o in run_trajectory(model, xs)])
        if not grad:
            branch = _engine(model).now.branches[FIRST]
            factors = branch.predictor.modules["mods.0"].factors[0]
            assert factors._version > 0  # updated in place
            assert len({len(s) for s in branch.history.schedules()}) == 3  # partial steps ran
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
