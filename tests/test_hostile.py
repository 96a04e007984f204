"""Hostile input (issue 12, items 6-10): bad configs, API misuse, CLI arguments, output hygiene.

Every case must fail fast with a ValueError (Python) or ``relcache CMD: error: ...`` and exit
status 2 (CLI) whose message says what to pass instead, before any model is loaded or sampled.
The engine cases (odd trajectories, non-finite values, autograd; items 1-5) are in
``test_engine.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import relcache
import relcache.shipped
from relcache.cli import main
from relcache.evaluation.rows import to_json
from tests.toys import Chain, Scale

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _strict(text: str) -> object:
    """json.loads that refuses Infinity / NaN (what other JSON readers do)."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# ----- item 6/7: configs ------------------------------------------------------------------------
BAD_CONFIGS: list[tuple[str, Callable[[], object], str]] = [
    ("order 21", lambda: relcache.TaylorSeer(order=21), "order must be <= 20"),
    ("rfc order 25", lambda: relcache.RFC(order=25, threshold=0.5), "order must be <= 20"),
    (
        "interval + full_steps",
        lambda: relcache.TaylorSeer(full_steps=[0, 1, 5], interval=3),
        "interval would be ignored",
    ),  # fmt: skip
    (
        "warmup + full_steps",
        lambda: relcache.TaylorSeer(full_steps=[0, 1, 5], warmup=3),
        "warmup would be ignored",
    ),  # fmt: skip
    (
        "fora interval + full_steps",
        lambda: relcache.FORA(full_steps=[0, 2], interval=2),
        "drop interval",
    ),  # fmt: skip
    (
        "rfe warmup + full_steps",
        lambda: relcache.RFC(rcs=False, full_steps=[0, 1], warmup=3),
        "warmup would be ignored",
    ),  # fmt: skip
    (
        "rfe schedule 0, 3",
        lambda: relcache.RFC(rcs=False, full_steps=[0, 3]),
        "must start 0, 1",
    ),  # fmt: skip
    ("rfe='no'", lambda: relcache.RFC(rfe="no", threshold=0.5), "rfe must be True or False"),
    ("rcs='yes'", lambda: relcache.RFC(rcs="yes", threshold=0.5), "rcs must be True or False"),
    ("rcs=1", lambda: relcache.RFC(rcs=1, interval=4), "rcs must be True or False"),
    ("full_steps [0, 'a']", lambda: relcache.TaylorSeer(full_steps=[0, "a"]), "hold integers"),
    ("full_steps 5", lambda: relcache.TaylorSeer(full_steps=5), "list of step indices"),
    ("full_steps '015'", lambda: relcache.TaylorSeer(full_steps="015"), "list of step indices"),
    ("full_steps [0, 1.5]", lambda: relcache.FORA(full_steps=[0, 1.5]), "hold integers"),
    (
        "for_nfc + full_steps",
        lambda: relcache.METHODS["taylorseer"].for_nfc(8, 50, full_steps=(0, 1)),
        "already the whole schedule",
    ),  # fmt: skip
    ("for_nfc 60 of 10", lambda: relcache.METHODS["taylorseer"].for_nfc(60, 10), "impossible"),
]


@pytest.mark.parametrize(("make", "fragment"), [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])  # fmt: skip
def test_bad_config_is_a_value_error_with_a_fix(make: Callable, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        make()


def test_defaults_are_resolved_and_explicit_schedules_stay_explicit() -> None:
    ts = relcache.TaylorSeer()
    assert (ts.interval, ts.warmup, ts.order) == (4, 2, 2)
    assert repr(ts) == (
        "TaylorSeer(granularity='module', factors_dtype=None, interval=4, order=2, warmup=2, "
        "full_steps=None, first=None)"
    )
    assert relcache.FORA().schedule(14) == [0, 1, 5, 9, 13]
    assert relcache.RFC(threshold=0.5).warmup == 2
    explicit = relcache.TaylorSeer(full_steps=np.array([0, 1, 4]))
    assert explicit.full_steps == (0, 1, 4) and explicit.interval is None
    assert dataclasses.replace(explicit, order=1).schedule(6) == [0, 1, 4]
    assert dataclasses.replace(ts, interval=5).schedule(12) == [0, 1, 6, 11]
    assert relcache.RFC(rcs=False, full_steps=[0, 1, 3]).schedule(5) == [0, 1, 3]
    assert relcache.RFC(rcs=False, rfe=False, full_steps=[0, 3]).schedule(5) == [0, 3]


def test_threshold_error_names_an_api_that_exists() -> None:
    with pytest.raises(ValueError) as err:
        relcache.RFC()
    named = re.search(r"relcache\.METHODS\['rfc'\]\.for_nfc", str(err.value))
    assert named and callable(relcache.METHODS["rfc"].for_nfc)
    assert "calibrate" in str(err.value)


# ----- item 7: API misuse -----------------------------------------------------------------------
BAD_TARGETS = [
    (dict(patterns=["mods["]), "pattern 'mods[' is not a valid regular expression"),
    (dict(patterns=r"mods\.(0"), "missing )"),
    (dict(patterns=[r"mods\.\d+"], driver="mods.[0"), "driver 'mods.[0' is not a valid"),
    (dict(patterns=[]), "patterns is empty"),
    (dict(patterns=[3]), "must be a regex string"),
]


@pytest.mark.parametrize(("kwargs", "fragment"), BAD_TARGETS)
def test_bad_patterns_are_value_errors(kwargs: dict, fragment: str) -> None:
    model = Chain(Scale(), Scale())
    with pytest.raises(ValueError, match=re.escape(fragment)):
        relcache.apply(model, relcache.TaylorSeer(), **kwargs)
    assert not relcache.is_applied(model)


# ----- item 8: the CLI checks every argument before any work ------------------------------------
@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model is work: every command must have failed before it."""

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the arguments were checked")

    for name in ("load_generator", "load_classifier", "load_model"):
        monkeypatch.setattr(relcache.shipped, name, loaded)
    from relcache.commands import generate

    monkeypatch.setattr(generate, "load_pipeline", loaded)


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run the CLI; it must exit with status 2 and a one-line error (no traceback)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


CLI_BAD = [
    (["demo", "--out", "{file}"], "is an existing file"),
    (["demo", "--out", "{file}/sub"], "cannot be created"),
    (["bench", "--out", "{file}"], "is an existing file"),
    (["bench", "--cache-dir", "{file}"], "--cache-dir"),
    (["generate", "--model", "m", "--prompt", "p", "--out", "{file}"], "is an existing file"),
    (["demo", "--steps", "0"], "--steps must be >= 3"),
    (["bench", "--steps", "0"], "--steps must be an integer >= 3"),
    (["generate", "--model", "m", "--prompt", "p", "--steps", "0"], "--steps must be >= 1"),
    (["flops", "--steps", "0"], "--steps must be >= 1"),
    (["demo", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["demo", "--budgets", "14,abc"], "expected comma-separated integers, e.g. 14,8"),
    (["demo", "--budgets", ""], "--budgets is empty"),
    (["demo", "--budgets", "60"], "drop it or raise --steps"),
    (["bench", "--budgets", "14,abc"], "expected comma-separated integers"),
    (["flops", "--batch", "0"], "--batch must be >= 1"),
    (["flops", "--input-size", "0"], "--input-size must be >= 1"),
    (["flops", "--nfc", "60", "--steps", "10"], "impossible at 10 steps"),
    (
        ["generate", "--model", "m", "--prompt", "p", "--nfc", "60", "--steps", "10"],
        "impossible at 10 steps",
    ),  # fmt: skip
    (["generate", "--model", "m"], "pass --prompt"),
    (["generate", "--model", "m", "--prompt", "p", "--class-label", "1"], "not both"),
    (["generate", "--model", "m", "--prompt", "p", "--height", "0"], "--height must be >= 1"),
    (["generate", "--model", "m", "--prompt", "p", "--device", "nope"], "not a torch device"),
    (["bench", "--device", "nope"], "not a torch device"),
    (["bench", "--threads", "0"], "--threads must be >= 1"),
    (["bench", "--checkpoint", "{tmp}/missing.pt"], "no such file"),
    (["bench", "--preset-overrides", "depth=1"], "needs --preset"),
    (
        ["flops", "--method", "taylorseer", "--full-steps", "0,1", "--interval", "3"],
        "interval would be ignored",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("argv", "fragment"), CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_cli_rejects_before_any_work(argv, fragment, tmp_path, capsys, no_work) -> None:
    argv = [a.format(file=_file(tmp_path), tmp=tmp_path) for a in argv]
    if argv[0] in ("demo", "bench") and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    err = _cli_error(argv, capsys)
    assert fragment in err
    if "--budgets" not in argv or "14,abc" not in argv:
        assert err.startswith(f"relcache {argv[0]}: error:")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into any folder")
def test_cli_rejects_an_unwritable_out_folder(tmp_path, capsys, no_work) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert "is not writable" in _cli_error(["demo", "--out", str(locked / "x")], capsys)


@NO_CUDA
@pytest.mark.parametrize("command", ["bench", "generate"])
def test_cuda_without_cuda_is_a_clear_error(command, tmp_path, capsys, no_work) -> None:
    extra = ["--model", "m", "--prompt", "p"] if command == "generate" else []
    argv = [command, *extra, "--device", "cuda", "--out", str(tmp_path / "o")]
    assert "pass --device cpu" in _cli_error(argv, capsys)


def test_bench_checkpoint_that_is_not_weights(tmp_path, capsys) -> None:
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"")
    argv = ["bench", "--checkpoint", str(bad), "--out", str(tmp_path / "o"), "--no-cache"]
    err = _cli_error(argv, capsys)
    assert "is not a readable checkpoint" in err and ".safetensors" in err


# ----- item 8/9/10: generate on a tiny saved DiT pipeline ---------------------------------------
@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny class-conditional DiTPipeline written by save_pretrained (no download)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=1, sample_size=8, norm_num_groups=8,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), latent_channels=4,
        norm_num_groups=8, sample_size=8,
    )  # fmt: skip
    pipe = diffusers.DiTPipeline(transformer=transformer.eval(), vae=vae,
                                 scheduler=diffusers.DDIMScheduler())  # fmt: skip
    folder = tmp_path_factory.mktemp("pipe") / "dit"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access; one thread (tiny tensors)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


GENERATE_BAD = [
    (["--prompt", "a cat"], "class-conditional: pass --class-label"),
    (["--class-label", "5000"], "out of range: this model has class ids 0 to 999"),
    (["--class-label", "tabby"], "unknown class name"),
]


@pytest.mark.parametrize(("extra", "fragment"), GENERATE_BAD)
def test_generate_rejects_what_the_pipeline_cannot_take(
    extra, fragment, dit_folder, tmp_path, capsys, offline
) -> None:
    argv = ["generate", "--model", str(dit_folder), *extra, "--steps", "4", "--device", "cpu",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert fragment in _cli_error(argv, capsys)
    assert not (tmp_path / "o").exists()


def test_generate_unknown_model_is_a_clear_error(tmp_path, capsys, offline) -> None:
    pytest.importorskip("diffusers")
    argv = ["generate", "--model", "no-such-org/no-such-model", "--prompt", "p",
            "--device", "cpu", "--out", str(tmp_path / "o")]  # fmt: skip
    err = _cli_error(argv, capsys)
    assert "could not load --model 'no-such-org/no-such-model'" in err and "save_pretrained" in err


def test_generate_defaults_run_without_deprecation_warnings(
    dit_folder, tmp_path, capsys, offline
) -> None:
    argv = ["generate", "--model", str(dit_folder), "--class-label", "1", "3", "--steps", "8",
            "--device", "cpu", "--out", str(tmp_path / "o")]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    assert not [w for w in caught if "torch_dtype" in str(w.message)]
    assert "torch_dtype" not in capsys.readouterr().err
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["method"] == "TaylorSeer N=4 m=2" and stats["full_steps"] == {"call0": [0, 1, 5]}


def test_nfc_means_the_same_in_flops_and_generate(dit_folder, tmp_path, capsys, offline) -> None:
    assert main(["flops", "--steps", "8", "--nfc", "4", "--json"]) == 0
    flops = json.loads(capsys.readouterr().out)
    argv = ["generate", "--model", str(dit_folder), "--class-label", "2", "--steps", "8",
            "--nfc", "4", "--device", "cpu", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert flops["nfc"] == stats["nfc"] == 4 and flops["method"] == stats["method"]


def test_flops_default_runs(capsys) -> None:
    assert main(["flops", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "TaylorSeer N=4 m=2" and report["nfc"] == 14


# ----- item 10: output hygiene ------------------------------------------------------------------
def test_table_json_is_strict_json_with_null_for_identical(tmp_path) -> None:
    from relcache.evaluation.demo import write_demo_outputs

    rows = [{"method": "full", "psnr": math.inf, "fd": math.nan, "nfc": 50.0}]
    write_demo_outputs(tmp_path, rows, [("full", torch.zeros(2, 1, 8, 8))])
    table = _strict((tmp_path / "table.json").read_text())
    assert table == [{"method": "full", "psnr": None, "fd": None, "nfc": 50.0}]
    assert "null" in (ROOT / "README.md").read_text()


def test_results_json_is_strict_json(tmp_path) -> None:
    from relcache.evaluation.bench import RESULTS, Bench

    results = {"runs": {"full": {"psnr": math.inf, "curve": [1.0, -math.inf]}}, "analysis": None}
    Bench.save_results(SimpleNamespace(main=True, s=SimpleNamespace(out=tmp_path), results=results))
    saved = _strict((tmp_path / RESULTS).read_text())
    assert saved["runs"]["full"] == {"psnr": None, "curve": [1.0, None]}
    assert to_json({"x": math.nan, "y": [math.inf]}) == '{"x": null, "y": [null]}'


def test_default_output_folders_are_ignored_by_git() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for folder in ("relcache_demo", "relcache_bench", "relcache_out"):
        assert f"/{folder}/" in ignored


def test_no_step_progress_bar_when_stderr_is_not_a_terminal(capsys) -> None:
    from relcache.sampling import generate
    from relcache.shipped import random_dit

    model = random_dit("DiT-FM", 0, depth=1, hidden_size=32, num_heads=2)
    generate(model, [0, 1], steps=3, cfg_scale=2.0, seed=0, progress=True)
    assert "DDIM" not in capsys.readouterr().err


def test_demo_prints_calibration_progress_and_a_wall_clock_caveat(
    tmp_path, capsys, monkeypatch
) -> None:
    from relcache.evaluation import demo

    model = relcache.shipped.random_dit("DiT-FM", 0, depth=1, hidden_size=32, num_heads=2)
    s = demo.DemoSettings(steps=6, samples=2, budgets=(4,), batch_size=2, out=tmp_path)

    def one_step(name, budget, steps, measure):  # a one-step "bisection"
        config = relcache.RFC(threshold=0.5)
        measure(config)
        return config, {}

    monkeypatch.setattr(demo, "config_for_budget", one_step)
    demo.run_at_budget(model, "rfc2", 4, s, [0, 1], torch.tensor([0, 1]))
    assert re.search(
        r"calibrating rfc2@4 on 16 other images: tau=0\.5 -> NFC [\d.]+", capsys.readouterr().err
    )

    monkeypatch.setattr(demo, "run_demo", lambda *args: [])
    for name in ("load_generator", "load_classifier"):
        monkeypatch.setattr(relcache.shipped, name, lambda: None)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert "noisy on a shared or loaded machine" in capsys.readouterr().out
    assert "noisy" in (ROOT / "README.md").read_text()


def test_int_list_is_the_shared_list_parser() -> None:
    from relcache.commands.common import int_list

    assert int_list("14, 8") == (14, 8)
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        int_list("14,abc")
