"""The conditions users run: half precision, overflow, stopped generations, explicit steps,
threads, other caches, dtype changes, shared modules (each case failed on the code before)."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import Tensor, nn

import relcache
from relcache.caching.steps import FIRST
from relcache.models.dit import DiT, DiTConfig
from relcache.sampling.ddim import generate
from tests.toys import Chain, Scale, run_trajectory

PATTERNS = [r"mods\.\d+"]
HALF = (torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    """Tiny tensors (conftest's one_thread)."""


def _dit(dtype: torch.dtype = torch.float32) -> DiT:
    torch.manual_seed(0)
    cfg = DiTConfig(
        input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4,
        num_classes=10,
    )  # fmt: skip
    return DiT(cfg).eval().to(dtype)


def _ramp(steps: int, batch: int = 3, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """Smooth per-step inputs (B, 4, 6): what a denoising trajectory feeds its modules."""
    g = torch.Generator().manual_seed(0)
    base, drift = torch.randn(batch, 4, 6, generator=g), torch.randn(batch, 4, 6, generator=g)
    return [(base + 0.05 * i * drift + 0.01 * i * i).to(dtype) for i in range(steps)]


# ----- 1. RCS in half precision -------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(
    "spec", ["rfc2:threshold=0.3", "rcs:threshold=0.3", "rfc2:nfc=5:steps=10", "rfc2:scope=batch"]
)
def test_rcs_runs_in_half_precision_with_float32_statistics(spec: str, dtype) -> None:
    if "threshold" not in spec and "nfc" not in spec:
        spec += ":threshold=0.3"
    model = _dit(dtype)
    relcache.apply(model, relcache.build_method(spec))
    out = generate(model, [1, 2], steps=10, cfg_scale=1.5, progress=False)
    st = relcache.stats(model)
    assert torch.isfinite(out).all()
    assert 2 <= st.nfc <= 10 and (st.nfc == 5 if "nfc" in spec else True)
    rcs = relcache.api._engine(model).now.branches[FIRST].scheduler
    assert rcs.acc.dtype == torch.float32 and rcs.factors.dtype == torch.float32


def test_half_model_outputs_keep_the_model_dtype() -> None:
    model = _dit(torch.bfloat16)
    relcache.apply(model, relcache.RFC(order=2, threshold=0.3))
    x, y = torch.randn(2, 4, 8, 8, dtype=torch.bfloat16), torch.tensor([1, 2])
    with torch.no_grad():
        outs = [model(x, torch.full((2,), 900.0 - 100 * i), y) for i in range(6)]
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o).all() for o in outs)


# ----- 2. float16 overflow ------------------------------------------------------------------
def test_float16_prediction_overflow_forces_a_full_step_and_is_counted() -> None:
    model = Chain(nn.Identity())
    values = [40000.0, 50000.0, 58000.0, 64000.0, 65000.0, 65000.0]  # slowing down: Taylor
    xs = [torch.tensor([[v] * 3, [v / 2] * 3], dtype=torch.float16) for v in values]  # overshoots
    relcache.apply(model, relcache.TaylorSeer(order=2, full_steps=(0, 1, 2)), patterns=[r"mods\.0"])
    with torch.no_grad():
        outs = run_trajectory(model, xs)
    st = relcache.stats(model)
    assert all(torch.isfinite(o).all() for o in outs)  # step 4 predicts 70000 for row 0: inf
    assert st.nonfinite_predictions == 2  # row 0 at steps 4 and 5
    assert torch.equal(outs[4][0], xs[4][0]) and torch.equal(outs[5][0], xs[5][0])  # ran fully
    assert st.schedules["call0"] == [[0, 1, 2, 4, 5], [0, 1, 2]]  # row 1 stays cached


def test_float16_overflow_under_rcs_records_the_forced_rows() -> None:
    model = Chain(nn.Identity(), Scale(1.0))
    values = [30000.0, 45000.0, 55000.0, 61000.0, 64000.0, 65000.0]
    xs = [torch.full((2, 3), v, dtype=torch.float16) for v in values]
    relcache.apply(model, relcache.build_method("rcs2:threshold=1e6"), patterns=PATTERNS)
    with torch.no_grad():
        outs = run_trajectory(model, xs)
    st = relcache.stats(model)
    assert all(torch.isfinite(o).all() for o in outs)
    assert st.nonfinite_predictions == 4 and st.full_steps["call0"] == [0, 1, 3, 4]
    assert st.nonfinite_errors == 0


# ----- 3. generations that stop after their first step --------------------------------------
def test_ddim_after_a_generation_that_stopped_at_step_0_equals_a_fresh_run() -> None:
    model = _dit()
    cfg = relcache.TaylorSeer(interval=3, order=2)
    with relcache.cached(model, cfg):
        fresh = generate(model, [1, 2], steps=8, seed=3, progress=False)

    def stop(info: dict) -> None:
        raise KeyboardInterrupt if info["i"] == 0 else None

    with relcache.cached(model, cfg):
        generate(model, [1, 2], steps=1, seed=5, progress=False)  # a 1-step generation
        again = generate(model, [1, 2], steps=8, seed=3, progress=False)
        with pytest.raises(KeyboardInterrupt):
            generate(model, [1, 2], steps=8, seed=5, progress=False, callback=stop)
        third = generate(model, [1, 2], steps=8, seed=3, progress=False)
    assert torch.equal(again, fresh) and torch.equal(third, fresh)


@pytest.mark.parametrize("explicit", [True, False])
def test_bare_loop_after_a_one_step_generation_starts_afresh(explicit: bool) -> None:
    model = Chain(nn.Linear(6, 6).double(), nn.Linear(6, 6).double())
    relcache.apply(model, relcache.TaylorSeer(interval=3, order=2), patterns=PATTERNS)
    xs, other = _ramp(8, dtype=torch.float64), _ramp(1, dtype=torch.float64)[0] + 1.0

    def loop(inputs: list[Tensor]) -> list[Tensor]:
        outs = []
        for i, x in enumerate(inputs):
            t = torch.full((3,), 8.0 - i)
            if explicit:
                with relcache.at_step(model, i):
                    outs.append(model(x, t))
            else:
                outs.append(model(x, t))
        return outs

    with torch.no_grad():
        fresh = loop(xs)
        relcache.reset(model)
        loop([other])  # stops after step 0 (other latents)
        again = loop(xs)
    st = relcache.stats(model)
    assert list(st.steps) == ["call0"]  # not taken for a second CFG branch
    assert all(torch.equal(a, b) for a, b in zip(again, fresh, strict=True))


# ----- 4. relcache.at_step is the step -------------------------------------------------------
def test_at_step_numbers_drive_taylor_distances_and_explicit_schedules() -> None:
    model = Chain(nn.Identity())
    relcache.apply(model, relcache.TaylorSeer(order=1, full_steps=(0, 1, 4)), patterns=[r"mods\.0"])
    with torch.no_grad():
        outs = {}
        for i in [0, 1, 2, 5]:
            with relcache.at_step(model, i):
                outs[i] = model(torch.full((1, 2), float(i)), torch.zeros(1))
    assert torch.allclose(outs[5], torch.full((1, 2), 5.0))  # linear in the step: exact at 5
    assert relcache.stats(model).full_steps["call0"] == [0, 1]  # step 4 never came
    relcache.reset(model)
    with torch.no_grad():
        for i in [0, 1, 4]:  # a sampler that skips steps 2 and 3
            with relcache.at_step(model, i):
                model(torch.full((1, 2), float(i)), torch.zeros(1))
    assert relcache.stats(model).full_steps["call0"] == [0, 1, 4]  # fires at step 4, 3rd call


# ----- 5. one model, two threads ------------------------------------------------------------
def test_threads_taking_turns_keep_their_own_trajectories() -> None:
    model = _dit()
    cfg = relcache.TaylorSeer(interval=3, order=2)
    with relcache.cached(model, cfg):
        ref = {s: generate(model, [1, 2], steps=8, seed=s, progress=False) for s in (1, 2)}
    got: dict[int, Tensor] = {}
    turn = [threading.Semaphore(1), threading.Semaphore(0)]

    def run(seed: int, me: int) -> None:  # the two generations interleave step by step
        def step_done(_: dict) -> None:
            turn[1 - me].release()
            turn[me].acquire()

        turn[me].acquire()
        got[seed] = generate(model, [1, 2], steps=8, seed=seed, progress=False, callback=step_done)
        turn[1 - me].release()

    with relcache.cached(model, cfg):
        threads = [threading.Thread(target=run, args=(s, k)) for k, s in enumerate((1, 2))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
    assert set(got) == {1, 2}
    assert torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2])


def test_a_step_started_while_another_thread_is_mid_step_is_refused() -> None:
    entered, release = threading.Event(), threading.Event()

    class Slow(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            entered.set()
            release.wait(10)
            return x

    model = Chain(Slow())
    relcache.apply(model, relcache.TaylorSeer(interval=2), patterns=[r"mods\.0"])
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: model(torch.ones(1, 2), torch.ones(1)))
    worker.start()
    entered.wait(10)
    entered.clear()
    try:
        model(torch.ones(1, 2), torch.ones(1))
    except RuntimeError as err:
        errors.append(err)
    release.set()
    worker.join(10)
    assert errors and "running a step in thread" in str(errors[0])
    model(torch.ones(1, 2), torch.zeros(1))  # the worker's step finished cleanly: usable


# ----- 6. two caches on one model -----------------------------------------------------------
def _flux_transformer() -> nn.Module:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
        axes_dims_rope=(2, 2, 4),
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["fbc", "taylorseer"])
def test_a_diffusers_cache_enabled_before_apply_is_refused(kind: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    model = _flux_transformer()
    if kind == "fbc":
        model.enable_cache(diffusers.FirstBlockCacheConfig(threshold=0.1))
    else:
        model.enable_cache(diffusers.TaylorSeerCacheConfig(cache_interval=3))
    with pytest.raises(RuntimeError, match="another cache is enabled.*disable_cache"):
        relcache.apply(model, relcache.TaylorSeer(interval=3))
    model.disable_cache()
    relcache.apply(model, relcache.TaylorSeer(interval=3))  # after removing it: fine


def test_a_diffusers_cache_enabled_after_apply_is_refused() -> None:
    diffusers = pytest.importorskip("diffusers")
    from diffusers.hooks import apply_first_block_cache

    model = _flux_transformer()
    relcache.apply(model, relcache.TaylorSeer(interval=3))
    with pytest.raises(RuntimeError, match="relcache.remove"):
        model.enable_cache(diffusers.FirstBlockCacheConfig(threshold=0.1))
    relcache.remove(model)
    assert "enable_cache" not in vars(model)  # diffusers' own method is back
    model.enable_cache(diffusers.FirstBlockCacheConfig(threshold=0.1))
    model.disable_cache()
    torch.manual_seed(0)
    sd3 = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
        caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=16,
    )  # fmt: skip
    relcache.apply(sd3, relcache.TaylorSeer(interval=3))
    apply_first_block_cache(sd3, diffusers.FirstBlockCacheConfig(threshold=0.1))  # behind it
    with pytest.raises(RuntimeError, match="FirstBlockCache"):
        sd3(
            hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 3, 16),
            pooled_projections=torch.randn(1, 8), timestep=torch.ones(1),
        )  # fmt: skip


# ----- 7. dtype or device change mid-generation ---------------------------------------------
def test_dtype_change_mid_generation_restarts_with_a_warning() -> None:
    model = _dit()
    relcache.apply(model, relcache.RFC(order=2, threshold=0.3))
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        for i in range(4):
            model(x, torch.full((2,), 900.0 - 100 * i), y)
        model.to(torch.bfloat16)
        with pytest.warns(UserWarning, match="dtypes or devices changed"):
            out = model(x.bfloat16(), torch.full((2,), 500.0), y)
        outs = [model(x.bfloat16(), torch.full((2,), 400.0 - 100 * i), y) for i in range(3)]
    assert out.dtype == torch.bfloat16 and all(o.dtype == torch.bfloat16 for o in outs)


# ----- 8. a submodule shared by two cached models -------------------------------------------
def test_a_shared_submodule_is_refused_by_the_second_apply() -> None:
    shared = nn.Linear(6, 6)
    m1, m2 = Chain(shared, nn.Linear(6, 6)), Chain(shared)
    relcache.apply(m1, relcache.TaylorSeer(interval=2), patterns=PATTERNS)
    with pytest.raises(ValueError, match="shares it"):
        relcache.apply(m2, relcache.TaylorSeer(interval=2), patterns=PATTERNS)
    assert not relcache.is_applied(m2)
    relcache.remove(m1)
    assert "forward" not in vars(shared)
    relcache.apply(m2, relcache.TaylorSeer(interval=2), patterns=PATTERNS)  # now it may
    relcache.remove(m2)


# ----- smaller ------------------------------------------------------------------------------
def test_cached_keeps_the_users_exception_when_the_body_removed_the_model() -> None:
    model = Chain(nn.Linear(6, 6))
    with pytest.raises(ZeroDivisionError):
        with relcache.cached(model, relcache.TaylorSeer(interval=2), patterns=PATTERNS):
            relcache.remove(model)
            1 / 0  # noqa: B018
    with pytest.raises(RuntimeError, match="already removed"):
        with relcache.cached(model, relcache.TaylorSeer(interval=2), patterns=PATTERNS):
            relcache.remove(model)


def test_generation_scope_is_a_no_op_without_relcache() -> None:
    model = Chain(nn.Identity())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with relcache.generation(model):
            model(torch.ones(1, 2), torch.ones(1))
