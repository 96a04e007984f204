"""Fitted schedules: the search (pure), the profile file, the resumable fit and its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import relcache
from relcache.caching.methods.profile import Profile, save_profile, weights_hash
from relcache.cli import main
from relcache.evaluation import fitting
from relcache.evaluation.fitting import (
    FitSettings,
    SearchPaused,
    greedy_exchange,
    moves,
    scan,
    spread,
    start_candidates,
    start_schedule,
    state_path,
)
from relcache.shipped import random_dit

TINY = dict(depth=1, hidden_size=32, num_heads=2)  # a DiT-FM shape small enough for a test
FIT = dict(steps=8, cfg_scale=3.0, samples=2, seed=1000, radius=2)


@pytest.fixture(scope="module")
def tiny(one_thread):
    return random_dit("DiT-FM", 0, **TINY)


# ----- the search -------------------------------------------------------------------------------
def test_start_is_taylorseers_fixed_schedule_or_an_even_spread() -> None:
    assert start_schedule(8, 50) == (0, 1, 8, 15, 22, 29, 36, 43)  # N = 7, the official
    assert start_schedule(14, 50) == (0, 1, *range(5, 50, 4))  # N = 4
    for nfc in range(3, 51):
        s = start_schedule(nfc, 50)
        assert len(s) == nfc and s[:2] == (0, 1) and list(s) == sorted(set(s)) and s[-1] < 50


def test_start_candidates_scan_the_phase_and_the_span() -> None:
    assert spread(2, 49, 5) == (2, 14, 26, 37, 49) and spread(7, 7, 1) == (7,)
    found = start_candidates(8, 50)  # N = 7: firsts 2..8, lasts 49, 46, 42
    assert found[0] == start_schedule(8, 50) and len(found) == len(set(found))
    assert (0, 1, 7, 13, 20, 26, 33, 39) == start_candidates(8, 40)[6]  # first 7, last 39
    assert {c[2] for c in found} == set(range(2, 9)) and {c[-1] for c in found} >= {49, 46, 42}
    for nfc in range(3, 51):
        for c in start_candidates(nfc, 50):
            assert len(c) == nfc and c[:2] == (0, 1) and list(c) == sorted(set(c)) and c[-1] < 50


def test_the_scan_starts_the_exchange_from_the_best_candidate(tiny) -> None:
    scores = {(0, 1, 4): 1.0, (0, 1, 5): 3.0, (0, 1, 6): 3.0}
    assert scan(scores.__getitem__, list(scores)) == (0, 1, 5)  # the first of a tie


def test_moves_keep_the_order_and_the_range() -> None:
    assert moves((0, 1, 4, 6), 2, 2, 8) == [(0, 1, 3, 6), (0, 1, 5, 6), (0, 1, 2, 6)]
    assert moves((0, 1, 4, 6), 3, 3, 8) == [(0, 1, 4, 5), (0, 1, 4, 7)]


def test_greedy_exchange_finds_the_best_schedule_of_a_separable_score() -> None:
    target = (0, 1, 3, 9, 17)
    calls: list[tuple[int, ...]] = []

    def score(s: tuple[int, ...]) -> float:  # best at target, worse with every step away
        calls.append(s)
        return -sum(abs(a - b) for a, b in zip(s, target, strict=True))

    best, value, passes = greedy_exchange(score, (0, 1, 6, 12, 18), 2, 3, 20)
    assert best == target and value == 0 and passes >= 2
    assert all(c[:2] == (0, 1) for c in calls)  # the warm-up never moves


# ----- settings and profiles --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(seed=0), "held-out report seeds"),
        (dict(seed=999), "pass --seed 1000"),
        (dict(predictor="rfc2"), "fixed-schedule method"),
        (dict(nfc=2), "--nfc must be an integer >= 3"),
        (dict(nfc=9), "exceeds --steps"),
    ],
)
def test_settings_refuse_report_seeds_and_bad_values(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FitSettings(**{"nfc": 4, **FIT, **change})


def test_profile_round_trip_and_its_checks(tmp_path: Path, tiny) -> None:
    p = Profile("tiny", weights_hash(tiny), 8, 3.0, 4, "rfe2:clamp=1.05", (0, 1, 3, 6))
    path = save_profile(p, tmp_path / "p.json")
    assert relcache.load_profile(path) == p
    assert json.loads(path.read_text())["method"] == "rfe2:clamp=1.05:full_steps=0/1/3/6"
    method = relcache.from_profile(path, model=tiny)
    assert isinstance(method, relcache.RFE) and method.schedule(8) == [0, 1, 3, 6]
    other = random_dit("DiT-FM", 1, **TINY)
    with pytest.raises(ValueError, match="fit a profile for it with `relcache calibrate`"):
        relcache.from_profile(path, model=other)
    with pytest.raises(ValueError, match="nfc is 5 but full_steps has 4"):
        Profile("tiny", "x", 8, 3.0, 5, "taylorseer2", (0, 1, 3, 6))
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a relcache profile"):
        relcache.load_profile(path)
    with pytest.raises(FileNotFoundError, match="relcache calibrate --nfc N"):
        relcache.load_profile(tmp_path / "missing.json")


# ----- the fit ----------------------------------------------------------------------------------
def test_fit_improves_on_the_start_and_writes_a_loadable_profile(tmp_path: Path, tiny) -> None:
    out = tmp_path / "fit.json"
    profile = relcache.fit_schedule(tiny, 4, **FIT, out=out, progress=False)
    assert profile.score["after"] >= profile.score["before"]
    assert profile.score["start_full_steps"] == list(start_schedule(4, 8))
    assert profile.search["generations"] >= 1 and profile.search["stopped"] == "converged"
    assert relcache.from_profile(out, model=tiny).schedule(8) == list(profile.full_steps)
    assert not state_path(out).exists()  # finished: no partial state left


def test_a_paused_fit_resumes_to_the_uninterrupted_result(tmp_path: Path, tiny) -> None:
    whole = relcache.fit_schedule(tiny, 4, **FIT, progress=False)
    out = tmp_path / "fit.json"
    with pytest.raises(SearchPaused, match="resume"):
        relcache.fit_schedule(tiny, 4, **FIT, out=out, max_seconds=0.0, progress=False)
    assert state_path(out).exists() and not out.exists()
    with pytest.raises(ValueError, match="pass --resume"):
        relcache.fit_schedule(tiny, 4, **FIT, out=out, progress=False)
    with pytest.raises(ValueError, match="radius differ"):
        relcache.fit_schedule(tiny, 4, **{**FIT, "radius": 1}, out=out, resume=True)
    resumed = relcache.fit_schedule(tiny, 4, **FIT, out=out, resume=True, progress=False)
    assert resumed.full_steps == whole.full_steps
    assert resumed.search["generations"] == whole.search["generations"]
    assert resumed.search["reference_generations"] == 2  # one per run


def test_max_generations_caps_the_search(tiny) -> None:
    profile = relcache.fit_schedule(tiny, 4, **FIT, max_generations=2, progress=False)
    assert profile.search["generations"] == 2 and profile.search["stopped"] == "cap"


def test_calibrate_command_writes_the_profile(tmp_path: Path, capsys, one_thread) -> None:
    out = tmp_path / "p.json"
    args = ["calibrate", "--preset", "DiT-FM", "--preset-overrides",
            "depth=1,hidden_size=32,num_heads=2", "--steps", "8", "--nfc", "4", "--samples", "2",
            "--max-generations", "3", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "NFC 4: full steps" in capsys.readouterr().out
    assert relcache.load_profile(out).search["generations"] <= 3
    assert main([*args[:-3], "--seed", "12", "--out", str(out)]) == 2
    assert "held-out report seeds" in capsys.readouterr().err


# ----- the shipped profiles ---------------------------------------------------------------------
def test_shipped_profiles_fit_the_shipped_model_and_recommended_uses_them() -> None:
    shipped = relcache.caching.methods.shipped_profiles()
    assert {relcache.load_profile(p).nfc for p in shipped} == {7, 8, 10, 11, 14}  # the paper's
    model = relcache.shipped.load_generator()
    for path in shipped:
        p = relcache.load_profile(path)
        assert p.matches(model) and (p.steps, p.cfg_scale) == (50, 3.0)
        assert p.search["calibration_seeds"][0] >= fitting.REPORT_SEEDS.stop
        assert relcache.recommended(p.nfc, model=model) == p.method()
    assert relcache.recommended(8) == relcache.recommended(8, model=random_dit("DiT-FM", 0))


def test_generate_takes_a_profile_alone_and_at_its_steps(tmp_path: Path) -> None:
    from relcache.cli import build_parser
    from relcache.commands.generate import build_method

    path = relcache.caching.methods.shipped_profiles()[0]
    base = ["generate", "--model", "m", "--class-label", "1", "--profile", str(path)]
    method = build_method(build_parser().parse_args(base))
    assert method == relcache.load_profile(path).method()
    with pytest.raises(ValueError, match="drop --nfc"):
        build_method(build_parser().parse_args([*base, "--nfc", "8"]))
    with pytest.raises(ValueError, match="pass --steps 50"):
        build_method(build_parser().parse_args([*base, "--steps", "20"]))
