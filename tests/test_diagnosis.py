"""The bench's diagnosis (issue 10): increment errors, teacher forcing, schedules, step windows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from relcache import FORA, RFC, TaylorSeer
from relcache.evaluation import analysis, distributed
from relcache.evaluation.bench import run_bench
from relcache.evaluation.runner import run_method
from relcache.evaluation.settings import BenchSettings
from relcache.shipped import random_dit

STEPS = 8
ATTN = "blocks.0.attn"  # the first cached module: its input is exact up to its own step


@pytest.fixture(scope="module")
def model():
    """A tiny random DiT whose blocks matter: its small random gates and output layer scaled up,
    so cached outputs move the trajectory measurably."""
    model = random_dit("DiT-FM", 0, depth=1, hidden_size=32, num_heads=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer" in name:
                p.mul_(25)
    return model


def _errors(model, config, teacher_forced: bool = False) -> analysis.StepAccumulator:
    return analysis.step_errors(model, config, [0, 1], torch.tensor([0, 1]), steps=STEPS,
                                cfg_scale=3.0, teacher_forced=teacher_forced)  # fmt: skip


def test_increment_split_on_known_changes() -> None:
    anchor, actual = torch.zeros(3, 4, 5), torch.randn(3, 4, 5)
    magnitude, direction = analysis.increment_split(anchor + 2 * actual, actual, anchor)
    assert torch.allclose(magnitude, torch.ones(3, dtype=torch.float64))  # twice the change
    assert torch.allclose(direction, torch.zeros(3, dtype=torch.float64), atol=1e-12)
    magnitude, direction = analysis.increment_split(anchor - actual, actual, anchor)
    assert torch.allclose(magnitude, torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(direction, torch.full((3,), 2.0, dtype=torch.float64))


def test_fora_predicts_no_change(model) -> None:
    acc = _errors(model, FORA(interval=3))
    cached = [i for i in range(STEPS) if i not in FORA(interval=3).schedule(STEPS)]
    for name, values in acc.per_module("magnitude").items():
        assert [i for i, v in enumerate(values) if v is not None] == cached, name
        assert all(values[i] == -1.0 for i in cached)  # O_hat = O(i): no change, exactly
    assert all(v in (None, 1.0) for v in acc.per_step("direction"))


def test_teacher_forcing_separates_the_predictor_from_accumulation(model) -> None:
    config = TaylorSeer(interval=3, order=2)  # full 0, 1, 4, 7: cached 2, 3, 5, 6
    free = _errors(model, config).per_module("relative_l1")[ATTN]
    forced = _errors(model, config, teacher_forced=True).per_module("relative_l1")[ATTN]
    assert free[2] == forced[2]  # the first cached step: same trajectory so far
    assert free[3] != forced[3]  # then step 2's errors feed the free-running inputs
    assert free[4] is None and forced[0] is None  # full steps are not errors


def test_runs_record_each_images_schedule(model) -> None:
    seeds, labels = [0, 1, 2], torch.tensor([0, 1, 2])
    gen = run_method(model, RFC(order=2, nfc=5, steps=STEPS), seeds, labels, steps=STEPS,
                     batch_size=2, progress=False)  # fmt: skip
    assert len(gen.full_steps) == 3 and all(len(f) == 5 and f[:2] == [0, 1] for f in gen.full_steps)
    share = gen.schedule_share(STEPS)
    assert len(share) == STEPS and share[:2] == [1.0, 1.0] and sum(share) == pytest.approx(5)
    fixed = run_method(model, FORA(interval=3), seeds, labels, steps=STEPS, progress=False)
    assert fixed.schedule_share(STEPS) == [float(i in (0, 1, 4, 7)) for i in range(STEPS)]


def test_window_schedule_caches_only_inside_the_window() -> None:
    assert analysis.window_schedule(2, 10, 12, 8) == [0, 1, 2, 10, 11]
    assert analysis.window_schedule(10, 12, 12, 8) == list(range(11))


# --- in the bench -------------------------------------------------------------------------------

SECTIONS = (
    "## Magnitude vs direction of the predicted change",
    "## Teacher-forced vs free-running error",
    "## Full-step schedules per budget",
    "## Which steps matter",
    "## What the diagnosis shows",
    "## The cached step's cost in kernels",
)
PLOTS = ("increment_error", "teacher_forcing", "schedules", "step_windows")


@pytest.fixture(scope="module")
def bench(model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diagnosis")
    s = BenchSettings(steps=STEPS, samples=4, methods=("fora", "rfc2"), budgets=(4,),
                      calibration_samples=2, batch_size=4, analysis_samples=2, window_samples=4,
                      grid_columns=2, out=tmp / "out", cache_dir=None, progress=False)  # fmt: skip
    return s, run_bench(model, None, s)


def test_bench_reports_the_diagnosis(bench) -> None:
    s, results = bench
    a = results["analysis"]
    labels = set(a["increment_error"]["methods"])
    assert len(labels) == 5 and any(x.startswith("recommended") for x in labels)
    assert set(a["teacher_forcing"]["methods"]) == labels
    assert all(len(v["free_running"]) == STEPS for v in a["teacher_forcing"]["methods"].values())
    windows = a["step_windows"]["windows"]
    assert [(w["start"], w["stop"]) for w in windows] == [(2, 8)]
    assert windows[0]["nfc"] == 3 and a["step_windows"]["samples"] == 4
    for run_id in ("fora@4", "rfc2@4"):
        share = results["runs"][run_id]["schedule_share"]
        assert len(share) == STEPS and share[0] == 1.0
    counts = a["hot_path"]
    assert set(counts) == {results["runs"][r]["label"] for r in ("fora@4", "rfc2@4")}
    assert [c["syncs_per_cached_step"] for c in counts.values()] == [0, 1]  # fora, rfc
    report = (s.out / "report.md").read_text()
    assert all(section in report for section in SECTIONS)
    assert all((s.out / f"{p}.png").stat().st_size > 0 for p in PLOTS)


def test_resume_adds_only_missing_analyses(bench, model, monkeypatch) -> None:
    s, results = bench
    path = s.out / "results.json"
    old = json.loads(path.read_text())
    recorded = old["runs"]["rfc2@4"].pop("schedule_share")  # a run from before schedules
    old["analysis"] = None
    path.write_text(json.dumps(old))
    calls = []
    real = distributed.run_sharded
    monkeypatch.setattr(
        distributed, "run_sharded", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
    again = run_bench(model, None, dataclasses.replace(s, resume=True))
    assert calls == [None]  # the reference only (no cache dir): no run repeated, no calibration
    backfill = again["analysis"]["schedule_backfill"]
    assert set(backfill) == {"rfc2@4"} and backfill["rfc2@4"]["source"] == "rerun on 4 images"
    assert backfill["rfc2@4"]["schedule_share"] == recorded  # the same seeds, the same batches
    assert set(again["analysis"]) >= {"prediction_error", "increment_error", "step_windows"}
    assert "rerun on 4 images" in Path(s.out / "report.md").read_text()
