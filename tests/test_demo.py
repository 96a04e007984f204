"""The shipped generator and the demo, end to end in a reduced setting."""

import json

import pytest
import torch

from relcache.cli import main
from relcache.evaluation.budgets import interval_for_nfc
from relcache.sampling import generate
from relcache.shipped import load_generator

COLUMNS = {
    "method",
    "target_nfc",
    "nfc",
    "tflops",
    "seconds",
    "flops_speedup",
    "wall_speedup",
    "psnr",
    "ssim",
    "fd2fc",
    "fd",
    "class_accuracy",
}


def test_shipped_generator_gives_finite_samples() -> None:
    model = load_generator()
    assert model.config.input_size == 28 and model.config.in_channels == 1
    x = generate(model, [0, 7], steps=5, cfg_scale=3.0, seed=0, progress=False)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()


def test_missing_generator_file_says_how_to_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="train_generator"):
        load_generator(tmp_path / "nope.safetensors")


def test_interval_for_budget_matches_the_paper() -> None:
    assert [interval_for_nfc(b, 50) for b in (14, 11, 10, 8, 7)] == [4, 5, 6, 7, 9]


@pytest.mark.slow
def test_demo_json_has_every_column(tmp_path, capsys) -> None:
    argv = [
        "demo",
        "--steps",
        "8",
        "--samples",
        "6",
        "--budgets",
        "4",
        "--out",
        str(tmp_path),
        "--json",
        "--no-progress",
    ]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["full", "fora", "taylorseer", "rfc", "recommended"]
    for row in rows:
        assert COLUMNS <= set(row)
    assert [r.get("recommended") for r in rows] == [None, False, False, False, True]
    full, rfc = rows[0], rows[3]
    assert full["psnr"] is None and full["ssim"] == pytest.approx(1.0)  # null: identical
    assert full["fd2fc"] == pytest.approx(0.0, abs=1e-6)
    assert abs(rfc["nfc"] - 4) <= 0.5 and rfc["flops_speedup"] > 1
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert json.loads((tmp_path / "table.json").read_text())[0]["method"] == "full"


def test_text_table_widens_the_method_column_for_long_labels() -> None:
    from relcache.evaluation.tables import format_table

    rows = [{"label": "TaylorSeer m=2 fitted schedule", "psnr": 45.26}, {"label": "FORA N=4"}]
    lines = format_table(rows).splitlines()
    assert len({len(line) for line in lines}) == 1  # aligned: header, rule and rows
    assert lines[2].startswith("TaylorSeer m=2 fitted schedule  ")
