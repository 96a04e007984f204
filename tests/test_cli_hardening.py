"""CLI and bench hardening: a filled --out, resume keys, torch.load, dangling symlinks,
non-finite numbers, scopes, contradictory method specs, impossible budgets, --peer-match."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import relcache
import relcache.shipped
from relcache.caching.methods import METHODS, parse_method
from relcache.caching.schedulers import SCOPES
from relcache.cli import build_parser, main
from relcache.evaluation import resume
from relcache.evaluation.bench import Bench
from relcache.evaluation.settings import BenchSettings
from relcache.shipped import random_dit

SRC = Path(__file__).resolve().parents[1] / "src" / "relcache"
TINY = "depth=1,hidden_size=32,num_heads=2"
SMALL = ["--steps", "6", "--samples", "4", "--budgets", "4", "--methods", "fora",
         "--calibration-samples", "2", "--batch-size", "2", "--no-analysis", "--no-progress",
         "--no-cache"]  # fmt: skip


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model is work: the command must have failed before it."""

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the arguments were checked")

    for name in ("load_generator", "load_classifier", "load_model"):
        monkeypatch.setattr(relcache.shipped, name, loaded)
    from relcache.commands import generate

    monkeypatch.setattr(generate, "load_pipeline", loaded)


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run the CLI: exit status 2 and an error without a traceback; the error text."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def _small_settings(out: Path, **kw: object) -> BenchSettings:
    """The settings ``SMALL`` gives on the command line."""
    base = dict(steps=6, samples=4, budgets=(4,), methods=("fora",), calibration_samples=2,
                batch_size=2, analysis=False, progress=False, cache_dir=None, out=out)  # fmt: skip
    return BenchSettings(**{**base, **kw})


def _filled(out: Path, settings: dict | None = None, runs: int = 8) -> Path:
    """An --out holding a results.json with ``runs`` rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = {f"fora@{i}": {"method": "fora"} for i in range(runs)}
    path = out / "results.json"
    path.write_text(json.dumps({"settings": settings or {}, "runs": rows, "analysis": None}))
    return path


# ----- 1. bench data ----------------------------------------------------------------------------


def test_filled_out_is_refused_without_resume_or_overwrite(tmp_path, capsys, no_work) -> None:
    path = _filled(tmp_path / "out")
    before = path.read_text()
    err = _error(["bench", "--out", str(tmp_path / "out"), *SMALL], capsys)
    assert "already holds a bench" in err and "8 run(s)" in err
    assert "--resume" in err and "--overwrite" in err
    assert path.read_text() == before


def test_overwrite_passes_and_excludes_resume(tmp_path) -> None:
    _filled(tmp_path)
    assert resume.check_out(_small_settings(tmp_path, overwrite=True)) is None
    with pytest.raises(ValueError, match="pass one"):
        _small_settings(tmp_path, overwrite=True, resume=True)
    flags = build_parser().parse_args(["bench", "--overwrite"])
    assert flags.overwrite and not flags.resume


def test_resume_with_other_settings_is_refused_before_loading(tmp_path, capsys, no_work) -> None:
    key = _small_settings(tmp_path).result_key()
    _filled(tmp_path, {**key, "cfg_scale": 2.0, "model": "abc", "device": "cpu"})
    err = _error(["bench", "--resume", "--out", str(tmp_path), *SMALL], capsys)
    assert "cfg_scale (--cfg-scale): 2.0 there, 3.0 now" in err
    assert "--overwrite" in err and "new --out" in err


def test_resume_key_holds_the_model_and_device() -> None:
    s = BenchSettings(steps=6, samples=4, budgets=(4,), calibration_samples=2)
    a = random_dit("DiT-FM", 0, depth=1, hidden_size=32, num_heads=2)
    b = random_dit("DiT-FM", 1, depth=1, hidden_size=32, num_heads=2)  # another --init-seed
    c = random_dit("DiT-FM", 0, depth=1, hidden_size=32, num_heads=4)  # other overrides
    keys = [resume.results_key(s, m) for m in (a, b, c)]
    assert len({k["model"] for k in keys}) == 3 and keys[0]["device"] == "cpu"
    assert resume.results_key(s, a) == keys[0]  # deterministic
    assert set(s.result_key()) >= {"steps", "cfg_scale", "seed", "samples", "batch_size"}


def test_resume_with_another_model_is_refused(tmp_path, capsys) -> None:
    model = random_dit("DiT-FM", 0, depth=1, hidden_size=32, num_heads=2)
    s = _small_settings(tmp_path, model_name="DiT-FM (random weights, seed 0)")
    old = {"settings": resume.results_key(s, model), "runs": {"full": {}}, "analysis": None,
           "model": {"name": s.model_name, "args": "--preset DiT-FM --init-seed 0"}}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(old))
    argv = ["bench", "--preset", "DiT-FM", "--preset-overrides", TINY, "--init-seed", "1",
            "--resume", "--out", str(tmp_path), *SMALL]  # fmt: skip
    err = _error(argv, capsys)
    assert "model (--checkpoint / --preset / --preset-overrides / --init-seed)" in err
    assert "--init-seed 0" in err and "seed 1" in err and "--overwrite" in err


def test_resume_accepts_the_same_model_loaded_again(tmp_path) -> None:
    from relcache.shipped import load_model

    s = _small_settings(tmp_path)
    overrides = dict(depth=1, hidden_size=32, num_heads=2)
    keys = [resume.results_key(s, load_model(None, "DiT-FM", overrides, 3)[0]) for _ in range(2)]
    assert keys[0] == keys[1]
    resume.check_key(tmp_path / "results.json", {"settings": json.loads(json.dumps(keys[0]))},
                     keys[1])  # fmt: skip


def test_resume_recomputes_sections_whose_settings_changed(tmp_path) -> None:
    s = BenchSettings(steps=6, samples=4, budgets=(4,), calibration_samples=2, out=tmp_path,
                      analysis_samples=2, peers=("diffusers-fbc",),
                      methods=("fora", "rfc2"))  # fmt: skip
    old = {"runs": {}, "analysis": {"hot_path": {}}, "peers": {"x@4": {}},
           "derived": {**s.derived_key(), "analysis": {"samples": 4}}}  # fmt: skip
    kept = Bench._drop_stale_sections(SimpleNamespace(s=s), json.loads(json.dumps(old)))
    assert kept["analysis"] is None and kept["peers"] == old["peers"]
    other = dataclasses.replace(s, peer_match="fora")
    kept = Bench._drop_stale_sections(SimpleNamespace(s=other), json.loads(json.dumps(old)))
    assert "peers" not in kept and kept["derived"]["peers"] == "fora"


def test_every_torch_load_is_weights_only() -> None:
    unsafe = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"):
                continue
            flags = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if flags.get("weights_only") != "True":
                unsafe.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


# ----- 2. paths and numbers before any work -----------------------------------------------------


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
@pytest.mark.parametrize("below", ["", "sub"])
def test_dangling_symlink_is_refused(flag, below, tmp_path, capsys, no_work) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    target = link / below if below else link
    argv = ["bench", *SMALL[:-1], "--out", str(tmp_path / "o"), flag, str(target)]
    err = _error(argv, capsys)
    assert f"{flag} {target}" in err and "symlink" in err and "does not exist" in err


def test_demo_and_generate_refuse_a_dangling_out(tmp_path, capsys, no_work) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    assert "symlink" in _error(["demo", "--out", str(link)], capsys)
    argv = ["generate", "--model", "m", "--prompt", "p", "--device", "cpu", "--out", str(link)]
    assert "symlink" in _error(argv, capsys)


NON_FINITE = [
    (["bench", "--cfg-scale", "nan"], "--cfg-scale must be a finite number"),
    (["bench", "--cfg-scale", "inf"], "--cfg-scale must be a finite number"),
    (["bench", "--cfg-scale", "-1"], "--cfg-scale must be a finite number >= 0"),
    (["bench", "--seed", "-1"], "--seed must be an integer >= 0"),
    (["bench", "--preset", "DiT-FM", "--preset-overrides", "mlp_ratio=nan"], "finite number"),
    (["demo", "--cfg-scale", "nan"], "--cfg-scale must be a finite number"),
    (["demo", "--seed", "-2"], "--seed must be >= 0"),
    (["generate", "--guidance-scale", "inf"], "--guidance-scale must be a finite number"),
    (["generate", "--method", "rfc", "--threshold", "inf"], "--threshold must be a finite"),
    (["generate", "--method", "rfe", "--clamp", "nan"], "--clamp must be a finite number"),
    (["flops", "--method", "rfc", "--nfc", "nan"], "--nfc must be a finite number"),
    (["flops", "--method", "rfc2:threshold=inf"], "threshold must be a finite number"),
]


@pytest.mark.parametrize(("argv", "fragment"), NON_FINITE, ids=[" ".join(a) for a, _ in NON_FINITE])
def test_non_finite_numbers_are_refused(argv, fragment, tmp_path, capsys, no_work) -> None:
    if argv[0] == "generate":
        argv = [*argv, "--model", "m", "--prompt", "p", "--device", "cpu"]
    if argv[0] in ("bench", "demo", "generate"):
        argv = [*argv, "--out", str(tmp_path / "o")]
    assert fragment in _error(argv, capsys)


def test_method_knobs_refuse_non_finite_values() -> None:
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        relcache.build_method("rfc2", threshold=float("inf"))
    with pytest.raises(ValueError, match="clamp must be a finite number"):
        parse_method("rfe2:clamp=inf")


# ----- 3. scopes, contradictory specs, impossible budgets, --peer-match -------------------------


def test_scope_help_choices_and_errors_name_sample(capsys) -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["generate"]
    scope = next(a for a in sub._actions if a.dest == "scope")
    assert tuple(scope.choices) == SCOPES and "sample (the default" in scope.help
    assert "invalid choice" in _error(["flops", "--method", "rfc", "--scope", "pixel"], capsys)
    with pytest.raises(ValueError, match="'sample' the CFG branches"):
        relcache.RFC(threshold=0.1, scope="pixel")
    with pytest.raises(ValueError, match="scope must be one of row, sample, batch"):
        parse_method("rfc2:scope=pixel")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("taylorseer2:order=1", "sets order twice (the trailing 2 and order=1)"),
        ("taylorseer2:order=2", "sets order twice"),
        ("rfe2:clamp=1.05:clamp=2", "sets clamp twice (clamp=1.05 and clamp=2)"),
    ],
)
def test_contradictory_specs_are_refused(spec, fragment) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse_method(spec)


def test_knobs_given_twice_are_refused(capsys, no_work) -> None:
    with pytest.raises(ValueError, match="'rfc2' already sets order=2"):
        relcache.build_method("rfc2", order=1)
    assert "already sets order=2" in _error(["flops", "--method", "taylorseer2", "--order", "1"],
                                            capsys)  # fmt: skip
    with pytest.raises(ValueError, match="an NFC budget sets interval itself"):
        METHODS["taylorseer"].for_nfc(8, 50, **parse_method("taylorseer:interval=7")[1])
    with pytest.raises(ValueError, match="uses warmup=2"):
        BenchSettings(methods=("rfc2:warmup=3",))
    argv = ["generate", "--model", "m", "--prompt", "p", "--device", "cpu", "--method", "rfc",
            "--threshold", "0.5", "--nfc", "8"]  # fmt: skip
    assert "not both" in _error(argv, capsys)


def test_recommended_refuses_budgets_it_cannot_meet() -> None:
    with pytest.raises(ValueError, match="pass NFC >= 2"):
        relcache.recommended(1)
    assert len(relcache.recommended(2).schedule(50)) == 2
    with pytest.raises(ValueError, match=r"first=3\); pass NFC >= 3"):
        METHODS["taylorseer"].for_nfc(2, 50, first=3)


def test_peer_match_without_peers_is_refused(tmp_path, capsys, no_work) -> None:
    with pytest.raises(ValueError, match="no --peers are given"):
        BenchSettings(peer_match="rfc2")
    err = _error(["bench", "--peer-match", "fora", "--out", str(tmp_path), *SMALL], capsys)
    assert "--peer-match fora" in err and "add --peers" in err
