"""FLOPs accounting reproduces the paper's DiT-XL/2 table (RFC_SPEC §4) within 1%."""

import json

import pytest
import torch

import relcache
from relcache.caching.flops import StepCosts
from relcache.cli import main
from relcache.evaluation.flops import dit_flops, step_costs
from relcache.models import create_dit

PAPER = {None: 23.74, 4: 6.66, 5: 5.24, 6: 4.76, 7: 3.82, 9: 3.35}


@pytest.fixture(scope="module")
def xl_taylorseer_costs() -> StepCosts:
    with torch.device("meta"):
        model = create_dit("DiT-XL/2")
    x, t = torch.empty(2, 4, 32, 32, device="meta"), torch.zeros(2, device="meta")
    y = torch.zeros(2, dtype=torch.long, device="meta")
    return step_costs(model, relcache.TaylorSeer(order=2), lambda i: model(x, t, y), "blocks.*")


@pytest.mark.parametrize("interval", [4, 5, 6, 7, 9])
def test_taylorseer_tflops_match_paper(xl_taylorseer_costs: StepCosts, interval: int) -> None:
    nfc = len(relcache.TaylorSeer(interval=interval).schedule(50))
    tflops = xl_taylorseer_costs.total(50, nfc) / 1e12
    assert tflops == pytest.approx(PAPER[interval], rel=0.01)


def test_full_compute_and_cli_json(capsys: pytest.CaptureFixture) -> None:
    assert dit_flops("DiT-XL/2", None).tflops == pytest.approx(PAPER[None], rel=0.01)
    argv = "flops --model dit-xl-2 --steps 50 --method taylorseer --interval 4 --order 2 --json"
    assert main(argv.split()) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nfc"] == 14 and out["tflops"] == pytest.approx(6.66, rel=0.01)


def test_rfc_costs_a_little_more_than_taylorseer() -> None:
    ts = dit_flops("DiT-S/2", relcache.TaylorSeer(interval=4))
    rfc = dit_flops("DiT-S/2", relcache.RFC(threshold=1.0), nfc=14)
    assert rfc.nfc == ts.nfc == 14
    assert ts.tflops < rfc.tflops < ts.tflops * 1.01


def test_rcs_needs_a_budget() -> None:
    with pytest.raises(ValueError, match="--nfc"):
        dit_flops("DiT-S/2", relcache.RFC(threshold=1.0))
    with pytest.raises(ValueError, match="NFC must lie"):
        dit_flops("DiT-S/2", relcache.RFC(threshold=1.0), nfc=60)
