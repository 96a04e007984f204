"""The cached step's kernel budget (issue 9): op and host-sync counts are deterministic."""

import pytest
import torch

import relcache
from relcache.api import _engine
from relcache.evaluation.hot_path import count_calls
from relcache.shipped.loading import random_dit

STEPS = (0, 1, 2)  # full; steps 3-5 cached


def _counts(config, explicit: bool = True, latents: torch.Tensor | None = None):
    """Counts of a bare call and of 6 cached-model calls (DiT-FM's 16 modules, narrow)."""
    model = random_dit("DiT-FM", hidden_size=48, num_heads=4)
    x = torch.randn(4, 1, 28, 28) if latents is None else latents  # (4, 1, 28, 28)
    y = torch.tensor([1, 2, 10, 10])

    def call(i: int):
        t = torch.full((4,), 999.0 - i)
        if not explicit:
            return model(x, t, y)
        with relcache.at_step(model, i):
            return model(x, t, y)

    with relcache.cached(model, config):
        names = _engine(model).names
        counts = count_calls(model, names, call, 6)
    bare = count_calls(model, names, call, 1)[0]
    return bare, names, counts


def _per_module(count, names) -> list[int]:
    return [count.per_module[n] for n in names]


@pytest.mark.parametrize(
    "config", [relcache.FORA(full_steps=STEPS), relcache.TaylorSeer(full_steps=STEPS)]
)
def test_taylor_prediction_is_one_kernel_per_module(config) -> None:
    bare, names, counts = _counts(config)
    for step in counts[3:]:
        ops = _per_module(step, names)
        assert max(ops[1:]) == 1  # the bmm (<= 2 is the budget)
        assert ops[0] <= 1 + 4 + 4  # + this step's coefficients (+ after a full step: r!)
        assert step.outside == bare.outside  # no engine kernels outside the modules
        assert step.syncs == 0


def test_rfe_prediction_is_four_kernels_per_module() -> None:
    bare, names, counts = _counts(relcache.RFC(rcs=False, full_steps=STEPS))
    for step in counts[4:]:  # (the first cached step after a full one also stacks s, G)
        ops = _per_module(step, names)
        assert max(ops[1:]) == 4  # sub, norm, addcmul, bmm (<= 6 is the budget)
        assert sum(ops) / len(ops) <= 6  # with the per-step plan for every module
        assert step.outside == bare.outside and step.syncs == 0


def test_paired_rcs_decision_costs_three_more_kernels() -> None:
    """scope="sample" on a CFG-doubled batch (equal halves): the pair's error is shared."""
    x = torch.randn(2, 1, 28, 28)
    doubled = torch.cat([x, x])  # (4, ...) cond rows, then uncond rows
    _, _, rows = _counts(relcache.RFC(threshold=1e6, scope="row"), latents=doubled)
    _, _, pairs = _counts(relcache.RFC(threshold=1e6), latents=doubled)
    for a, b in zip(rows[3:], pairs[3:], strict=True):
        assert b.inside - a.inside == 3 and b.syncs == a.syncs == 1


def test_rcs_decision_costs_one_sync_and_few_kernels() -> None:
    _, names, rfe = _counts(relcache.RFC(rcs=False, full_steps=STEPS))
    bare, _, rfc = _counts(relcache.RFC(threshold=1e6))  # never full again after the warmup
    for a, b in zip(rfe[3:], rfc[3:], strict=True):
        # the decision: bmm, the cast of the step's float64 coefficients (which RFE's plan
        # computes anyway), cdist, norm, addcdiv and one max read on the host: 6
        assert b.inside - a.inside <= 6 and b.ops["max"] - a.ops["max"] == 1
        assert b.ops["le"] == a.ops["le"] and b.ops["where"] == a.ops["where"]  # no per-row mask
        assert b.syncs == 1  # reading the decision, once per step
        assert b.outside == bare.outside


def test_reading_the_timestep_is_the_only_other_sync() -> None:
    _, _, counts = _counts(relcache.TaylorSeer(full_steps=STEPS), explicit=False)
    assert all(c.syncs == 1 for c in counts)  # relcache.at_step removes it


def test_gpu_generation_script_runs_at_toy_size_on_cpu() -> None:
    import argparse
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_generation.py"
    spec = importlib.util.spec_from_file_location("gpu_generation", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = argparse.Namespace(
        preset="DiT-FM", size=0, device="cpu", dtype="float32", steps=6, batch=(1,), nfc=(4,),
        methods=("full", "taylorseer", "rfc", "rfc:scope=batch"), modes=("eager",), out=None,
    )  # fmt: skip
    rows = script.run(args)
    names = ["full", "TaylorSeer N=2 m=2", "RFC m=2", "RFC m=2 batch"]
    assert [r["method"] for r in rows] == names
    assert all(r["error"] is None and r["ms"] > 0 for r in rows)
    assert rows[1]["nfc"] == 4 and abs(rows[2]["nfc"] - 4) <= 0.5 and rows[1]["flops_speedup"] > 1


def test_step_counts_for_the_bench_report() -> None:
    from relcache.evaluation.hot_path import step_counts

    model = random_dit("DiT-FM", hidden_size=48, num_heads=4)
    ts = step_counts(model, relcache.TaylorSeer(interval=4))
    rfc = step_counts(model, relcache.RFC(threshold=1e-9))  # would fire: the probe keeps it cached
    assert ts == {
        "kernels_per_cached_module": 1.25,
        "engine_kernels_per_cached_step": 0,
        "syncs_per_cached_step": 0,
    }
    assert rfc["syncs_per_cached_step"] == 1 and rfc["kernels_per_cached_module"] <= 8
