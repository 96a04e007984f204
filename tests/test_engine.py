"""The engine around the math: attach/detach, branches, resets, per-row decisions, stats."""

import numpy as np
import pytest
import torch
from torch import nn

import relcache
from relcache.caching.steps import FIRST
from tests.toys import Chain, linear_module, run_trajectory


def _model() -> nn.Module:
    return Chain(linear_module(), nn.GELU().double(), linear_module(seed=3))


def _inputs(steps: int, batch: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, batch, 4, 6, generator=gen, dtype=torch.float64).unbind(0)
    speed = torch.arange(1, batch + 1, dtype=torch.float64).view(batch, 1, 1)  # per-row pace
    return [a * torch.cos(0.1 * i * speed) + b * (0.05 * i * speed) ** 1.5 for i in range(steps)]


PATTERNS = [r"mods\.[02]"]


def test_remove_restores_bit_identical_outputs() -> None:
    model, xs = _model(), _inputs(12)
    with torch.no_grad():
        before = run_trajectory(model, xs)
        relcache.apply(model, relcache.RFC(threshold=0.3), patterns=PATTERNS)
        run_trajectory(model, xs)
        relcache.remove(model)
        after = run_trajectory(model, xs)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=False))
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_never_caching_config_is_bit_identical() -> None:
    model, xs = _model(), _inputs(10)
    with torch.no_grad():
        ref = run_trajectory(model, xs)
        relcache.apply(model, relcache.TaylorSeer(interval=1), patterns=PATTERNS)
        out = run_trajectory(model, xs)
    assert all(torch.equal(a, b) for a, b in zip(ref, out, strict=False))
    assert relcache.stats(model).nfc == 10


def test_apply_twice_and_remove_unapplied_are_errors() -> None:
    model = _model()
    relcache.apply(model, relcache.FORA(), patterns=PATTERNS)
    with pytest.raises(ValueError, match="already applied"):
        relcache.apply(model, relcache.FORA(), patterns=PATTERNS)
    relcache.remove(model)
    with pytest.raises(ValueError, match="call relcache.apply first"):
        relcache.remove(model)


def test_no_matching_module_and_unknown_model_errors() -> None:
    with pytest.raises(ValueError, match="matches the patterns"):
        relcache.apply(_model(), relcache.FORA(), patterns=[r"blocks\.\d+\.attn"])
    with pytest.raises(ValueError, match="pass the modules to cache"):
        relcache.apply(_model(), relcache.FORA())
    with pytest.raises(TypeError, match="relcache method"):
        relcache.apply(_model(), {"interval": 4}, patterns=PATTERNS)


def test_state_resets_between_generations() -> None:
    model, xs = _model(), _inputs(20)
    relcache.apply(model, relcache.RFC(threshold=0.2), patterns=PATTERNS)
    with torch.no_grad():
        first = run_trajectory(model, xs)
        second = run_trajectory(model, xs)  # timestep goes back up: a new trajectory
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=False))
    assert relcache.stats(model).steps == {"call0": 20}


def test_shape_change_starts_new_trajectory_with_warning() -> None:
    model = _model()
    relcache.apply(model, relcache.TaylorSeer(interval=3), patterns=PATTERNS)
    xs = _inputs(6)
    with torch.no_grad():
        for i, x in enumerate(xs[:3]):
            model(x, torch.full((3,), 10.0 - i))
        with pytest.warns(UserWarning, match="shapes changed mid-trajectory"):
            model(xs[3][:2], torch.full((2,), 7.0))
    assert relcache.stats(model).steps == {"call0": 1}


def test_new_resolution_on_new_generation_needs_no_reset() -> None:
    model = _model()
    relcache.apply(model, relcache.RFC(threshold=0.2), patterns=PATTERNS)
    small = [x[:, :2] for x in _inputs(8)]
    with torch.no_grad():
        run_trajectory(model, _inputs(8))
        out = run_trajectory(model, small)
        relcache.remove(model)
        relcache.apply(model, relcache.RFC(threshold=0.2), patterns=PATTERNS)
        fresh = run_trajectory(model, small)
    assert all(torch.equal(a, b) for a, b in zip(out, fresh, strict=False))


def test_rows_are_independent_of_batch_mates() -> None:
    """Per-row RCS decisions: a sample's output does not depend on the rest of its batch."""
    model, xs = _model(), _inputs(25, batch=4)
    relcache.apply(model, relcache.RFC(threshold=0.15), patterns=PATTERNS)
    with torch.no_grad():
        batched = run_trajectory(model, xs)
        nfc_rows = relcache.stats(model).nfc_per_sample["call0"]
        for row in range(4):
            alone = run_trajectory(model, [x[row : row + 1] for x in xs])
            assert all(
                torch.allclose(a[row], b[0], atol=1e-12)
                for a, b in zip(batched, alone, strict=False)
            )
            assert relcache.stats(model).nfc_per_sample["call0"] == [nfc_rows[row]]
    assert len(set(nfc_rows)) > 1  # the rows really took different schedules


def test_sequential_cfg_keeps_branches_apart() -> None:
    """Two calls per step (cond, uncond) at the same timestep == one doubled batch."""
    model, xs = _model(), _inputs(20, batch=4)
    relcache.apply(model, relcache.RFC(threshold=0.15, scope="row"), patterns=PATTERNS)
    with torch.no_grad():
        doubled = run_trajectory(model, xs)
        nfc_doubled = relcache.stats(model).nfc_per_sample["call0"]
        cond, uncond = [], []
        for i, x in enumerate(xs):
            t = torch.full((2,), float(20 - i))
            cond.append(model(x[:2], t))  # CFG's branches share their latents (steps.py)
            uncond.append(model(x[:2], t, x[2:] - x[:2]))  # and differ by their conditioning
    st = relcache.stats(model)
    assert st.steps == {"call0": 20, "call1": 20}
    assert st.nfc_per_sample["call0"] + st.nfc_per_sample["call1"] == nfc_doubled
    for d, c, u in zip(doubled, cond, uncond, strict=False):
        assert torch.allclose(d, torch.cat([c, u]), atol=1e-12)


def test_explicit_cache_context() -> None:
    model, xs = _model(), _inputs(9)
    relcache.apply(model, relcache.TaylorSeer(interval=4), patterns=PATTERNS)
    with torch.no_grad():
        for i, x in enumerate(xs):
            with relcache.cache_context(model, "uncond"):
                model(x, torch.full((3,), float(9 - i)))
    st = relcache.stats(model)
    assert st.full_steps == {"uncond": [0, 1, 5]}


def test_stats_counts_and_memory() -> None:
    model, xs = _model(), _inputs(14)
    relcache.apply(model, relcache.TaylorSeer(interval=4, order=2), patterns=PATTERNS)
    with torch.no_grad():
        run_trajectory(model, xs)
    st = relcache.stats(model)
    assert st.nfc == 5 and st.full_steps["call0"] == [0, 1, 5, 9, 13]
    assert st.module_calls == {n: {"full": 5, "cached": 9} for n in ("mods.0", "mods.2")}
    factor_bytes = 2 * 3 * (3 * 4 * 6) * 8  # 2 modules x (m+1) x (B,T,D) float64
    scratch_bytes = 2 * (3 * 4 * 6) * 8  # the update's two (B, N) work buffers, shared
    assert st.peak_cache_bytes == factor_bytes + scratch_bytes


def test_rfc_memory_includes_last_inputs() -> None:
    model, xs = _model(), _inputs(6)
    relcache.apply(model, relcache.RFC(rcs=False, interval=4, order=1), patterns=PATTERNS)
    with torch.no_grad():
        run_trajectory(model, xs)
    st = relcache.stats(model)
    per_module = 2 * 72 * 8 + 72 * 8 + 3 * 8 + 3 * 1 * 1 * 8  # factors, input, s, gram
    scratch = 72 * 8  # one (B, N) work buffer, shared by the modules
    assert st.peak_cache_bytes == 2 * per_module + scratch


def test_observe_reports_predictions_and_shadow_truth() -> None:
    model, xs = _model(), _inputs(8)
    relcache.apply(model, relcache.TaylorSeer(interval=3, order=1), patterns=PATTERNS)
    records = []
    with torch.no_grad(), relcache.observe(model, records.append, shadow=True):
        outs = run_trajectory(model, xs)
    cached = [r for r in records if not r["full"]]
    assert {r["step"] for r in cached} == {2, 3, 5, 6}
    assert all(r["actual"] is not None for r in cached)
    assert [r["full"] for r in records if r["name"] == "mods.0"][:3] == [True, True, False]
    relcache.remove(model)
    with torch.no_grad():
        ref = run_trajectory(model, xs)
    # shadow runs do not change the returned (cached) outputs
    assert not torch.equal(outs[2], ref[2]) and torch.equal(outs[1], ref[1])


def test_reference_dit_samples_identical_without_caching_and_after_remove() -> None:
    from relcache.models import create_dit
    from relcache.sampling import generate

    torch.manual_seed(0)
    dit = create_dit("DiT-FM", depth=2, hidden_size=48, num_heads=4)
    for p in dit.parameters():  # adaLN-Zero starts at zero: give the blocks something to do
        p.data.add_(0.02 * torch.randn_like(p))
    kw = dict(steps=10, cfg_scale=2.0, seed=3, progress=False)
    ref = generate(dit, [1, 2, 3], **kw)
    relcache.apply(dit, relcache.TaylorSeer(interval=1))
    assert len(relcache.stats(dit).module_calls) == 4  # blocks.{0,1}.{attn,mlp}
    assert torch.equal(generate(dit, [1, 2, 3], **kw), ref)
    relcache.remove(dit)
    relcache.apply(dit, relcache.RFC(threshold=0.1))
    cached = generate(dit, [1, 2, 3], **kw)
    assert relcache.stats(dit).nfc < 10 and not torch.equal(cached, ref)
    relcache.remove(dit)
    assert torch.equal(generate(dit, [1, 2, 3], **kw), ref)


def test_calls_that_skip_every_cached_module_give_a_clear_error() -> None:
    class Skipper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mods = nn.ModuleList([nn.Identity()])

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x  # never calls mods.0

    model = Skipper()
    relcache.apply(model, relcache.TaylorSeer(interval=4), patterns=[r"mods\.0"])
    xs = _inputs(3)
    model(xs[0], torch.full((3,), 3.0))
    with pytest.raises(RuntimeError, match="no cached module ran"):
        model(xs[1], torch.full((3,), 2.0))


# ----- robustness: failed calls, step rules, autograd, non-finite errors (issue 12) ------------
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_call_leaves_no_half_built_branch(error) -> None:
    model, xs = _model(), _inputs(10)
    relcache.apply(model, relcache.TaylorSeer(interval=3), patterns=PATTERNS)
    with torch.no_grad():
        clean = run_trajectory(model, xs)

        def hook(mod, args):
            raise error("interrupted")

        handle = model.mods[2].register_forward_pre_hook(hook)
        with pytest.raises(error):
            run_trajectory(model, xs)
        handle.remove()
        again = run_trajectory(model, xs)
    assert all(torch.equal(a, b) for a, b in zip(clean, again, strict=True))
    assert set(relcache.stats(model).steps) == {"call0"}


def test_explicit_steps_need_no_timestep_and_tell_generations_apart() -> None:
    model, xs = _model(), _inputs(8)
    relcache.apply(model, relcache.RFC(threshold=0.2), patterns=PATTERNS)
    with torch.no_grad():
        ref = run_trajectory(model, xs)
        for _ in range(2):  # the same timestep at every call: only the explicit step counts
            got = []
            for i, x in enumerate(xs):
                with relcache.at_step(model, i):
                    got.append(model(x, torch.zeros(3)))
            assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    assert relcache.stats(model).steps == {"call0": 8}


def test_explicit_steps_count_sequential_branches() -> None:
    model, xs = _model(), _inputs(6)
    relcache.apply(model, relcache.TaylorSeer(interval=2), patterns=PATTERNS)
    with torch.no_grad():
        for i, x in enumerate(xs):
            with relcache.at_step(model, i):
                model(x, torch.zeros(3))
                model(2 * x, torch.zeros(3))
    assert relcache.stats(model).steps == {"call0": 6, "call1": 6}


@pytest.mark.parametrize(
    "form",
    [
        lambda v: np.float32(v),
        lambda v: np.int64(v),
        lambda v: torch.full((3, 1), float(v)),
        lambda v: float(v),
    ],
)
def test_timestep_forms_are_read_and_generations_reset(form) -> None:
    model, xs = _model(), _inputs(10)
    relcache.apply(model, relcache.TaylorSeer(interval=3), patterns=PATTERNS)
    with torch.no_grad():
        runs = [[model(x, form(10 - i)) for i, x in enumerate(xs)] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    assert relcache.stats(model).steps == {"call0": 10}


def test_increasing_timesteps_are_one_trajectory_and_reset_when_going_back() -> None:
    model, xs = _model(), _inputs(10)
    relcache.apply(model, relcache.TaylorSeer(interval=3), patterns=PATTERNS)
    with torch.no_grad():
        runs = [[model(x, torch.full((3,), i / 10)) for i, x in enumerate(xs)] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    st = relcache.stats(model)
    assert st.steps == {"call0": 10} and st.nfc == 4  # cached, not NFC 1 per call


def test_per_sample_timesteps_with_a_constant_first_element() -> None:
    model, xs = _model(), _inputs(6)
    relcache.apply(model, relcache.FORA(interval=2), patterns=PATTERNS)
    with torch.no_grad():
        for i, x in enumerate(xs):
            model(x, torch.tensor([5.0, 6.0 - i, 6.0 - i]))
    assert relcache.stats(model).steps == {"call0": 6}


def test_unreadable_timestep_warns_once() -> None:
    model = Chain(linear_module())
    relcache.apply(model, relcache.FORA(interval=2), patterns=[r"mods\.0"])
    x = _inputs(1)[0]
    with pytest.warns(UserWarning, match="cannot read a timestep"), torch.no_grad():
        model(x, torch.zeros(3, 4, 6))  # no timestep: an image-shaped second argument
        model(x, torch.zeros(3, 4, 6))
    assert relcache.stats(model).steps == {"default": 2}


def test_one_step_generations_do_not_leak_branches() -> None:
    model, x = _model(), _inputs(1)[0]
    relcache.apply(model, relcache.FORA(interval=2), patterns=PATTERNS)
    with pytest.warns(UserWarning, match="same timestep"), torch.no_grad():
        for _ in range(30):
            model(x, torch.full((3,), 999.0))
    assert len(relcache.stats(model).steps) <= 8


def test_cached_state_is_detached_from_autograd() -> None:
    model, xs = _model(), _inputs(8)
    relcache.apply(model, relcache.RFC(order=2, threshold=0.3), patterns=PATTERNS)
    for i, x in enumerate(xs):  # backward at every step, like guidance-by-gradient samplers
        x = x.clone().requires_grad_(True)
        model(x, torch.full((3,), 8.0 - i)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    predictor = relcache.api._engine(model).now.branches[FIRST].predictor
    assert not any(t.requires_grad for t in predictor.tensors())


def test_a_nan_error_forces_a_full_step_and_is_reported() -> None:
    model, xs = _model(), _inputs(30)
    cfg = relcache.RFC(order=1, threshold=0.5)
    relcache.apply(model, cfg, patterns=PATTERNS)
    with torch.no_grad():
        run_trajectory(model, xs)
        clean = relcache.stats(model).nfc_per_sample["call0"]
        poisoned = [x.clone() for x in xs]
        poisoned[6][1] = float("nan")  # row 1, step 6
        run_trajectory(model, poisoned)
        st = relcache.stats(model)
    assert st.nonfinite_errors >= 1
    assert st.nfc_per_sample["call0"][0] == clean[0]  # the other rows do not notice
    assert st.nfc_per_sample["call0"][1] >= clean[1] - 1  # row 1 keeps being scheduled


def test_batch_scope_decides_for_all_rows_together() -> None:
    model, xs = _model(), _inputs(30)
    for scope, split in (("row", True), ("batch", False)):
        relcache.apply(model, relcache.RFC(order=1, threshold=0.5, scope=scope), patterns=PATTERNS)
        with torch.no_grad():
            run_trajectory(model, xs)
        per_row = relcache.stats(model).nfc_per_sample["call0"]
        relcache.remove(model)
        assert (len(set(per_row)) > 1) == split  # rows move at different paces (see _inputs)
    assert per_row[0] >= 2 + 1  # the batch still gets full steps after the warmup


def test_budget_mode_gives_exactly_the_budget_to_every_row() -> None:
    model, xs = _model(), _inputs(30, batch=5)
    for nfc in (3, 8, 17):
        with relcache.cached(model, relcache.RFC(order=2, nfc=nfc, steps=30), patterns=PATTERNS):
            with torch.no_grad():
                run_trajectory(model, xs)
            assert relcache.stats(model).nfc_per_sample["call0"] == [float(nfc)] * 5
    with relcache.cached(model, relcache.RFC(nfc=8, steps=20), patterns=PATTERNS):
        with pytest.raises(ValueError, match="more than steps=20"), torch.no_grad():
            run_trajectory(model, xs)


def test_budget_mode_spreads_its_full_steps() -> None:
    """The budget rule compares the accumulated error with the share one gap should carry:
    full steps are spread over the trajectory, not spent at its start (a regression: the rule
    once read this step's error as zero and ran the first nfc steps fully)."""
    model, xs = _model(), _inputs(30, batch=2)
    with relcache.cached(model, relcache.RFC(order=2, nfc=8, steps=30), patterns=PATTERNS):
        with torch.no_grad():
            run_trajectory(model, xs)
        schedules = relcache.stats(model).schedules["call0"]
    for steps in schedules:
        assert len(steps) == 8 and steps != list(range(8))
        assert steps[-1] >= 20  # the last stretch of the trajectory gets a full step too


def test_sample_scope_pairs_cfg_rows_and_sequential_branches() -> None:
    model, xs = _model(), _inputs(30, batch=4)  # rows move at four different paces
    for scope in ("row", "sample"):  # batched CFG: equal halves of latents, other conditioning
        cfg = relcache.RFC(order=1, threshold=0.4, scope=scope)
        with relcache.cached(model, cfg, patterns=PATTERNS), torch.no_grad():
            for i, x in enumerate(xs):
                y = torch.cat([torch.zeros_like(x[:2]), x[2:] - x[:2]])  # (4, ...)
                model(torch.cat([x[:2], x[:2]]), torch.full((4,), 30.0 - i), y)
            rows = relcache.stats(model).nfc_per_sample["call0"]
        paired = rows[0] == rows[2] and rows[1] == rows[3]
        assert paired == (scope == "sample")
    for scope in ("row", "sample"):  # sequential CFG: two calls per step
        cfg = relcache.RFC(order=1, threshold=0.4, scope=scope)
        with relcache.cached(model, cfg, patterns=PATTERNS), torch.no_grad():
            for i, x in enumerate(xs):
                with relcache.at_step(model, i):
                    model(x[:2], torch.zeros(2))  # shared latents, other conditioning
                    model(x[:2], torch.zeros(2), x[2:] - x[:2])
            st = relcache.stats(model)
        same = st.nfc_per_sample["call0"] == st.nfc_per_sample["call1"]
        assert same == (scope == "sample")
        if scope == "sample":
            assert st.full_steps["call0"] == st.full_steps["call1"]


def test_sample_scope_keeps_samples_without_cfg_independent() -> None:
    """The default scope pairs rows only in a CFG-doubled batch: four samples without guidance
    (unequal halves) take the schedules they take alone."""
    model, xs = _model(), _inputs(30, batch=4)
    cfg = relcache.RFC(order=1, threshold=0.4)
    with relcache.cached(model, cfg, patterns=PATTERNS), torch.no_grad():
        together = run_trajectory(model, xs)
        rows = relcache.stats(model).schedules["call0"]
    for j in range(4):
        with relcache.cached(model, cfg, patterns=PATTERNS), torch.no_grad():
            alone = run_trajectory(model, [x[j : j + 1] for x in xs])
            assert relcache.stats(model).schedules["call0"] == [rows[j]]
        pairs = zip(together, alone, strict=True)
        assert all(torch.allclose(a[j : j + 1], b, atol=1e-12) for a, b in pairs)
    assert len({tuple(r) for r in rows}) > 1  # the rows did decide differently


def test_teacher_forced_observation_keeps_the_exact_trajectory() -> None:
    model, xs = _model(), _inputs(12)
    with torch.no_grad():
        ref = run_trajectory(model, xs)
        relcache.apply(model, relcache.RFC(order=1, rcs=False, interval=3), patterns=PATTERNS)
        records = []
        with relcache.observe(model, records.append, shadow=True, teacher_forced=True):
            got = run_trajectory(model, xs)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    cached = [r for r in records if r["actual"] is not None]
    assert cached and all(r["anchor"] is not None for r in cached)
    assert not torch.equal(cached[-1]["outputs"][0], cached[-1]["actual"][0])  # a prediction
    with pytest.raises(ValueError, match="needs shadow=True"):
        with relcache.observe(model, records.append, teacher_forced=True):
            pass


def test_stats_give_each_rows_schedule() -> None:
    model, xs = _model(), _inputs(20, batch=3)
    with relcache.cached(model, relcache.RFC(order=1, nfc=6, steps=20), patterns=PATTERNS):
        with torch.no_grad():
            run_trajectory(model, xs)
        rows = relcache.stats(model).schedules["call0"]
    assert len(rows) == 3 and all(len(r) == 6 and r[:2] == [0, 1] for r in rows)


def test_merge_rows_replaces_batch_rows_in_any_output_structure() -> None:
    """relcache.compile's split step merges whole model outputs (tensor, tuple, dict-like)."""
    from collections import OrderedDict, namedtuple

    from relcache.caching.structure import merge_rows

    whole = torch.zeros(4, 2)
    part = torch.ones(2, 2)
    rows = torch.tensor([1, 3])
    expected = torch.tensor([[0.0, 0], [1, 1], [0, 0], [1, 1]])
    assert torch.equal(merge_rows(whole, part, rows, 4), expected)
    assert torch.equal(whole, torch.zeros(4, 2))  # out of place
    shared = torch.full((3,), 7.0)  # not batch-sized: kept
    merged = merge_rows((whole, shared), (part, shared[:1]), rows, 4)
    assert isinstance(merged, tuple) and torch.equal(merged[0], expected) and merged[1] is shared
    out = merge_rows(OrderedDict(sample=whole), OrderedDict(sample=part), rows, 4)
    assert type(out) is OrderedDict and torch.equal(out["sample"], expected)
    Pair = namedtuple("Pair", "sample extra")
    out = merge_rows(Pair(whole, None), Pair(part, None), rows, 4)
    assert type(out) is Pair and torch.equal(out.sample, expected) and out.extra is None
    with pytest.raises(TypeError, match="slice_batch=False"):
        merge_rows(object(), object(), rows, 4)
