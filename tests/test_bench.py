"""``relcache bench`` on a tiny random DiT: calibration, reference cache, outputs, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import relcache
from relcache import RFC
from relcache.cli import build_parser, main
from relcache.evaluation import distributed
from relcache.evaluation.bench import run_bench
from relcache.evaluation.budgets import (
    DEFAULT_METHODS,
    bench_method,
    calibrate_threshold,
)
from relcache.evaluation.reference import reference, reference_key
from relcache.evaluation.runner import per_sample_noise, run_method, sample_batch
from relcache.evaluation.settings import BenchSettings
from relcache.sampling import generate
from relcache.shipped import load_classifier, random_dit

TINY = dict(depth=2, hidden_size=64, num_heads=4)


@pytest.fixture(scope="module")
def model():
    return random_dit("DiT-FM", 0, **TINY)


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def _settings(tmp: Path, **kw) -> BenchSettings:
    base = dict(
        steps=8,
        samples=6,
        budgets=(5, 4),
        calibration_samples=4,
        batch_size=3,
        analysis_samples=2,
        grid_columns=4,
        out=tmp / "out",
        cache_dir=tmp / "cache",
        progress=False,
    )
    return BenchSettings(**{**base, **kw})


# --- threshold search ---------------------------------------------------------------------------


def test_threshold_search_hits_target_on_synthetic_measure() -> None:
    calls = []

    def measure(tau: float) -> float:  # monotone non-increasing in tau, like RCS
        calls.append(tau)
        return 2 + 48 / (1 + 20 * tau)

    tau, nfc = calibrate_threshold(measure, 10.0)
    assert abs(nfc - 10.0) <= 0.25 and abs(measure(tau) - nfc) < 1e-12
    assert len(calls) <= 15


def test_threshold_search_hits_target_on_tiny_model(model) -> None:
    seeds, labels = list(range(4)), torch.arange(4)

    def measure(tau: float) -> float:
        gen = run_method(model, RFC(order=2, threshold=tau), seeds, labels, steps=10,
                         cfg_scale=2.0, batch_size=4, progress=False)  # fmt: skip
        return float(gen.nfc_per_image.mean())

    tau, nfc = calibrate_threshold(measure, 5.0)
    assert abs(nfc - 5.0) <= 0.5
    assert measure(tau) == nfc  # deterministic


def test_bench_sampling_is_generate(model) -> None:
    c = model.config
    noise = per_sample_noise([3], (c.in_channels, c.input_size, c.input_size))  # (1, C, H, W)
    ours = sample_batch(model, noise, torch.tensor([7]), steps=6, cfg_scale=2.0)
    theirs = generate(model, [7], steps=6, cfg_scale=2.0, seed=3, progress=False)
    assert torch.equal(ours, theirs)


# --- reference cache ----------------------------------------------------------------------------


def test_reference_is_identical_across_runs_and_cached(model, tmp_path) -> None:
    s = _settings(tmp_path)
    seeds, labels = list(range(s.samples)), torch.arange(s.samples) % 10
    first, info1 = reference(model, s, seeds, labels)
    second, info2 = reference(model, s, seeds, labels)
    uncached, info3 = reference(model, dataclasses.replace(s, cache_dir=None), seeds, labels)
    assert not info1["cache_hit"] and info2["cache_hit"] and not info3["cache_hit"]
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.images, uncached.images)
    assert len(list((tmp_path / "cache").glob("reference-*.pt"))) == 1
    other = dataclasses.replace(s, cfg_scale=1.5)  # another sampler setting, another key
    assert reference_key(model, other) != reference_key(model, s)


# --- a whole bench ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(model, classifier, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    s = _settings(tmp)
    return s, run_bench(model, classifier, s)


def test_outputs_hold_every_method_and_budget(finished) -> None:
    s, results = finished
    runs = json.loads((s.out / "results.json").read_text())["runs"]
    assert set(runs) == {"full"} | {f"{m}@{b}" for m in DEFAULT_METHODS for b in s.budgets}
    report = (s.out / "report.md").read_text()
    for b in s.budgets:
        rows = [r for r in runs.values() if r["budget"] == b]
        assert {r["method"] for r in rows} == set(DEFAULT_METHODS)
        for r in rows:
            assert f"| {r['label']} | {b} |" in report
            assert r["psnr"] > 0 and r["fd2fc"] is not None and r["tflops"] > 0
        assert (s.out / f"grid_nfc{b}.png").exists()
        assert f"**NFC {b}**" in report
    for r in runs.values():
        if r["method"] != "full" and bench_method(r["method"]).adaptive:
            assert r["threshold"] > 0 and "calibration_nfc" in r and r["nfc_std"] >= 0
        elif r["method"] != "full":
            assert r["target_nfc"] == r["nfc"]  # fixed schedule: its own NFC is the target
    assert "wall-clock overhead of RFC over TaylorSeer" in report
    for png in ("quality_vs_tflops", "prediction_error", "feature_dynamics"):
        assert (s.out / f"{png}.png").stat().st_size > 0
    a = results["analysis"]
    assert set(a["ratio_stability"]) == {
        f"blocks.{i}.{m}" for i in range(2) for m in ("attn", "mlp")
    }
    assert all(len(v) == 4 for v in a["prediction_error"].values())
    assert "relcache bench --preset" not in report and "--budgets 5,4" in report


def test_resume_skips_finished_runs(finished, model, classifier, monkeypatch) -> None:
    s, _ = finished
    path = s.out / "results.json"
    saved = json.loads(path.read_text())
    dropped = json.loads(path.read_text())
    del dropped["runs"]["taylorseer2@4"]
    path.write_text(json.dumps(dropped))
    calls = []
    real = distributed.run_sharded
    monkeypatch.setattr(
        distributed, "run_sharded", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
    results = run_bench(model, classifier, dataclasses.replace(s, resume=True))
    assert [c.describe() for c in calls] == ["TaylorSeer N=3 m=2"]  # only the missing run
    again = results["runs"]["taylorseer2@4"]
    assert again["psnr"] == saved["runs"]["taylorseer2@4"]["psnr"]
    with pytest.raises(ValueError, match="other settings"):
        run_bench(model, classifier, dataclasses.replace(s, resume=True, seed=1))


# --- command line -------------------------------------------------------------------------------

BAD = [
    (["--methods", "fora,magic"], "unknown method"),
    (["--budgets", "60"], "at most --steps"),
    (["--budgets", "1"], "warmup"),
    (["--samples", "0"], "--samples must be"),
    (["--samples", "8", "--calibration-seed", "4"], "overlap the reported seeds"),
    (["--budgets", "14", "--analysis-budget", "9"], "not one of --budgets"),
    (["--window-samples", "1"], "--window-samples must be an integer >= 2"),
]


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_bad_arguments_are_clear_errors(argv, message, tmp_path, capsys) -> None:
    assert main(["bench", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relcache bench: error:") and message in err


def test_help_documents_every_flag() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["bench"]
    for action in sub._actions:
        assert action.help, f"{action.option_strings} has no help"
    assert "--resume" in sub.format_help()


def test_cli_runs_a_tiny_bench(tmp_path) -> None:
    tiny = "depth=1,hidden_size=32,num_heads=2"
    argv = ["bench", "--preset", "DiT-FM", "--preset-overrides", tiny,
            "--steps", "6", "--samples", "4", "--budgets", "4", "--methods", "fora,rfc2",
            "--calibration-samples", "2", "--batch-size", "2", "--no-analysis", "--no-progress",
            "--no-cache", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    report = (tmp_path / "report.md").read_text()
    assert "--preset DiT-FM" in report and "RFC m=2" in report


def test_report_rows_carry_the_wall_clock_overhead_over_taylorseer() -> None:
    from relcache.evaluation.report import _vs_taylorseer

    ts = {"method": "taylorseer2", "seconds": 10.0}
    group = [ts, {"method": "rfc2:scope=batch", "seconds": 10.4}, {"method": "fora", "seconds": 9}]
    rows = [_vs_taylorseer(r, group) for r in group]
    assert "wall_vs_taylorseer" not in rows[0] and "wall_vs_taylorseer" not in rows[2]
    assert abs(rows[1]["wall_vs_taylorseer"] - 4.0) < 1e-9


def test_fitted_rows_run_the_profile_fitted_for_each_budget(
    model, classifier, tmp_path, monkeypatch
) -> None:
    """``name:fitted`` runs a fixed-schedule method on the model's profile for each budget (the
    lookup is monkeypatched: no profile ships for the tiny random model), and says the fix when
    a budget has none."""
    from relcache.caching.methods.profile import Profile
    from relcache.evaluation import bench as bench_module

    fitted = {5: (0, 1, 2, 4, 6), 4: (0, 1, 3, 6)}
    asked = []

    def find(m, nfc, steps, cfg_scale=None):
        asked.append((nfc, steps, cfg_scale))
        if nfc not in fitted:
            return None
        return Profile("tiny", "x", steps, cfg_scale, nfc, "taylorseer2", fitted[nfc])

    monkeypatch.setattr(bench_module, "find_profile", find)
    s = _settings(tmp_path, methods=("taylorseer2:fitted",), analysis=False)
    runs = run_bench(model, classifier, s)["runs"]
    for b, steps in fitted.items():
        row = runs[f"taylorseer2:fitted@{b}"]
        assert row["full_steps"] == list(steps) and row["nfc"] == len(steps)
        assert row["label"] == "TaylorSeer m=2 fitted"
        assert row["config"] == repr(relcache.TaylorSeer(order=2, full_steps=steps))
    assert (5, 8, 3.0) in asked
    assert bench_method("taylorseer2:fitted").family == "TaylorSeer m=2 fitted"
    with pytest.raises(ValueError, match="relcache calibrate --nfc 3"):
        run_bench(model, classifier, _settings(tmp_path / "b", methods=("taylorseer2:fitted",),
                                               budgets=(3,), analysis=False))  # fmt: skip
    with pytest.raises(ValueError, match="fixed-schedule method"):
        bench_method("rfc2:fitted")
