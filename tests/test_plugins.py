"""Engine v2's plug-in contract: a method is a scheduler and a predictor, one registry entry.

The toy method below is defined only here, registered, and run end to end through the Python
API, the registry and the ``relcache flops`` command: adding a method needs no engine change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

import relcache
from relcache.caching.history import History
from relcache.caching.methods import METHODS, CacheMethod, MethodEntry, register_method
from relcache.caching.predictors import Predictor
from relcache.caching.schedulers import CACHED, FULL, Decision, Scheduler
from relcache.cli import main
from tests.toys import Chain, Scale, run_trajectory


class EvenSteps(Scheduler):
    """Full at even steps only."""

    def begin(self, history: History) -> Decision:
        return FULL if history.step % 2 == 0 else CACHED


class InputSlope(Predictor):
    """O_hat = O(i) + g * (I - I(i)) with g = ||dO|| / ||dI|| fixed: exact for O = g * I."""

    def __init__(self, gain: float) -> None:
        self.gain, self.last = gain, {}

    def record(self, name, history, rows, outputs, inputs) -> None:
        assert rows is None  # a fixed schedule never splits the batch
        self.last[name] = (outputs[0], inputs[0])

    def predict(self, name, history, inputs) -> list[Tensor]:
        out, inp = self.last[name]
        return [out + self.gain * (inputs[0] - inp)]

    def ready(self, name: str) -> bool:
        return name in self.last

    def tensors(self) -> list[Tensor]:
        return [t for pair in self.last.values() for t in pair]


@dataclass(frozen=True)
class Toy(CacheMethod):
    """A method that exists only in this test file."""

    gain: float = 2.0
    name = "toy"

    def scheduler(self) -> Scheduler:
        return EvenSteps()

    def predictor(self) -> Predictor:
        return InputSlope(self.gain)


@pytest.fixture
def toy_registered():
    entry = register_method(MethodEntry("toy", "Toy", lambda **kw: Toy(), (), "test-only"))
    yield entry
    del METHODS["toy"]


def test_toy_method_runs_end_to_end_through_the_engine(toy_registered) -> None:
    model, steps = Chain(Scale(2.0)), 9
    xs = [torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(i)) for i in range(steps)]
    with torch.no_grad():
        ref = run_trajectory(model, xs)
        with relcache.cached(model, relcache.build_method("toy"), patterns=[r"mods\.0"]):
            got = run_trajectory(model, xs)
            st = relcache.stats(model)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, ref, strict=True))
    assert st.full_steps == {"call0": [0, 2, 4, 6, 8]} and st.nfc == 5
    assert st.module_calls["mods.0"] == {"full": 5, "cached": 4}
    assert st.peak_cache_bytes == 2 * 3 * 4 * 5 * 4  # one output and one input, float32
    assert Toy().schedule(6) == [0, 2, 4] and not Toy().adaptive


def test_toy_method_reaches_the_cli(toy_registered, capsys) -> None:
    assert main("flops --model DiT-S/2 --steps 10 --method toy --json".split()) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nfc"] == 5 and report["method"] == "toy"
    assert main("flops --model DiT-S/2 --method toy --order 2".split()) == 2  # not its knob


def test_registry_rejects_bad_entries_and_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_method(MethodEntry("rfc", "RFC", relcache.RFC, ("threshold",), ""))
    with pytest.raises(ValueError, match="unknown knob"):
        register_method(MethodEntry("bad", "Bad", relcache.RFC, ("tau",), ""))
    with pytest.raises(ValueError, match="trailing digits"):
        register_method(MethodEntry("bad2", "Bad", relcache.RFC, (), ""))
    with pytest.raises(ValueError, match="unknown method 'tailorseer'"):
        relcache.build_method("tailorseer")
    with pytest.raises(ValueError, match="fora has no order"):
        relcache.build_method("fora2")
    with pytest.raises(ValueError, match="does not take threshold"):
        relcache.build_method("taylorseer", threshold=0.5)


def test_method_names_and_budgets() -> None:
    assert relcache.build_method("taylorseer1", interval=3) == relcache.TaylorSeer(3, order=1)
    rfe, info = METHODS["rfe"].for_nfc(8, 50, order=1)
    assert rfe == relcache.RFC(order=1, rcs=False, interval=7) and info == {"interval": 7}
    assert METHODS["taylorseer"].for_nfc(14, 50)[0] == relcache.TaylorSeer(interval=4)
    assert METHODS["rcs"].make(threshold=0.1) == relcache.RFC(rfe=False, threshold=0.1)
    assert METHODS["rfc"].for_nfc(8, 50)[0] == relcache.RFC(nfc=8, steps=50)  # budget mode
    assert METHODS["budget"].for_nfc(8, 30, scope="sample")[0].nfc == 8
    with pytest.raises(ValueError, match="calibrated threshold"):
        METHODS["rcs"].for_nfc(8, 50)
    with pytest.raises(ValueError, match="impossible at 10 steps"):
        METHODS["taylorseer"].for_nfc(60, 10)
    calls = []

    def calibrate(make, target):
        calls.append(make(0.25))
        return 0.25, {"calibration_nfc": target}

    cfg, info = METHODS["rfc"].for_nfc(8, 50, calibrate=calibrate, order=1)
    assert cfg == calls[0] == relcache.RFC(order=1, threshold=0.25)
    assert info == {"threshold": 0.25, "calibration_nfc": 8}


def test_every_config_is_a_scheduler_and_predictor_pair() -> None:
    from relcache.caching.predictors import RelationalPredictor, TaylorPredictor
    from relcache.caching.schedulers import ExplicitSchedule, FixedSchedule, RCSSchedule

    pairs = {
        relcache.FORA(): (FixedSchedule, TaylorPredictor, 0),
        relcache.TaylorSeer(full_steps=[0, 2]): (ExplicitSchedule, TaylorPredictor, 2),
        relcache.RFC(threshold=0.1): (RCSSchedule, RelationalPredictor, 2),
        relcache.RFC(order=1, rcs=False, interval=3): (FixedSchedule, RelationalPredictor, 1),
        relcache.RFC(rfe=False, threshold=0.1): (RCSSchedule, TaylorPredictor, 2),
    }
    for cfg, (sched, pred, order) in pairs.items():
        assert type(cfg.scheduler()) is sched and type(cfg.predictor()) is pred
        assert cfg.predictor().order == order
        assert cfg.adaptive == (sched is RCSSchedule)
        assert cfg.scheduler() is not cfg.scheduler()  # fresh state per branch


def test_decision_from_mask() -> None:
    assert Decision.from_mask(torch.tensor([True, True])) is FULL
    assert Decision.from_mask(torch.tensor([False, False])) is CACHED
    part = Decision.from_mask(torch.tensor([False, True, True]))
    assert not part.all_full and part.any_full and part.rows.tolist() == [1, 2]
    assert FULL.any_full and not CACHED.any_full


def test_history_counts_rows_and_memoises_coefficients() -> None:
    h = History()
    h.start_rows(3, torch.device("cpu"))
    h.advance(None, any_full=True)  # step 0: every row full
    h.advance(None, any_full=False)  # step 1 cached
    h.advance(torch.tensor([2]), any_full=True)  # step 2: row 2 only
    assert h.step == 3 and h.full_steps == [0, 2]
    assert h.n_full.tolist() == [1, 1, 2] and h.last_full.tolist() == [0, 0, 2]
    c = h.coefficients(1)
    assert c is h.coefficients(1)  # once per step
    assert c.tolist() == [[1, 0], [1, 0], [1, 1]]  # rows 0-1: order 1 not formed yet; row 2: k = 1
    assert h.gaps(torch.tensor([0, 2]))[0].tolist() == [3, 1]


def test_bench_names_come_from_the_registry() -> None:
    from relcache.evaluation.budgets import bench_method
    from relcache.evaluation.settings import BenchSettings

    labels = {n: bench_method(n).family for n in ("fora", "taylorseer", "rfc1", "rfe1", "rcs1")}
    assert labels == {
        "fora": "FORA",
        "taylorseer": "TaylorSeer m=2",
        "rfc1": "RFC m=1",
        "rfe1": "+RFE m=1",
        "rcs1": "+RCS m=1",
    }
    assert bench_method("rcs1").adaptive and not bench_method("rfe1").adaptive
    with pytest.raises(ValueError, match="unknown method 'magcache'"):
        BenchSettings(methods=("fora", "magcache"))
    assert METHODS["rfe"].example(order=1) == relcache.RFC(order=1, rcs=False, interval=4)
    assert METHODS["rfc"].example().threshold == 1.0


def test_method_specs_carry_knob_values() -> None:
    cfg = relcache.build_method("rfc2:scope=batch", threshold=0.1)
    assert cfg == relcache.RFC(order=2, threshold=0.1, scope="batch")
    assert cfg.describe() == "RFC m=2 batch"
    assert relcache.build_method("taylorseer:interval=7") == relcache.TaylorSeer(interval=7)
    with pytest.raises(ValueError, match="expected name:knob=value"):
        relcache.build_method("taylorseer:tau=3")
    with pytest.raises(ValueError, match="interval must be a int"):
        relcache.build_method("taylorseer:interval=x")
    with pytest.raises(ValueError, match="scope must be one of row, sample, batch"):
        relcache.RFC(threshold=0.1, scope="pixel")
    with pytest.raises(ValueError, match="scope is an RCS setting"):
        relcache.RFC(rcs=False, interval=3, scope="batch")
