"""Peers (other libraries' caches) on the converted DiT: installed and removed exactly, driven
by the project's sampler, FLOPs counted and knobs tuned like relcache's; the bench's peers rows."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import pytest
import torch

import relcache
from relcache.evaluation import peers as peer_runs
from relcache.evaluation.peers import (
    Candidate,
    PeerRun,
    cache_bytes,
    calibrated,
    pick_candidate,
    run_peer,
    search_peer,
    step_infos,
    tune_peer,
)
from relcache.evaluation.rows import json_safe
from relcache.evaluation.runner import Generation, run_method
from relcache.evaluation.settings import BenchSettings
from relcache.peers import PEERS, Knob, Peer, PeerUnavailable, applied, get_peer
from relcache.sampling.ddim import ddim_schedule

pytest.importorskip("diffusers")
from relcache.models.diffusers_dit import DiffusersDiT  # noqa: E402
from relcache.shipped.loading import random_dit  # noqa: E402

STEPS = 8
KW = dict(steps=STEPS, cfg_scale=2.0)
DIFFUSERS_PEERS = [n for n in PEERS if n.startswith("diffusers-") and n != "diffusers-fastercache"]


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.usefixtures("one_thread")
CACHE_DIT = pytest.mark.skipif(not _has("cache_dit"), reason="needs relcache[peers] (cache-dit)")


@pytest.fixture(scope="module")
def model() -> DiffusersDiT:
    """A 4-block DiT-FM with random weights (no zero-initialised layers), converted."""
    return DiffusersDiT.from_dit(random_dit("DiT-FM", depth=4, hidden_size=64, num_heads=4))


@pytest.fixture(scope="module")
def sample_set() -> tuple[list[int], torch.Tensor]:
    return [0, 1, 2], torch.tensor([0, 3, 7])


@pytest.fixture(scope="module")
def full(model, sample_set):
    return run_method(model, None, *sample_set, **KW, progress=False, count_flops=True)


def _peer(name: str, **knobs):
    peer = get_peer(name)
    if name.startswith("cachedit") and not _has("cache_dit"):
        pytest.skip("needs relcache[peers] (cache-dit)")
    return peer.with_knobs(**knobs) if knobs else peer


def test_step_infos_follow_the_sampler() -> None:
    """Step i runs at the i-th largest respaced timestep; sigma is in [0, 1] and grows with t."""
    infos = step_infos(STEPS)
    ts = ddim_schedule(STEPS).timesteps.flip(0).tolist()
    assert [i.timestep for i in infos] == ts
    assert [i.index for i in infos] == list(range(STEPS))
    sigmas = [i.sigma for i in infos]
    assert all(0 < s < 1 for s in sigmas) and sigmas == sorted(sigmas, reverse=True)


@pytest.mark.parametrize("name", DIFFUSERS_PEERS + ["cachedit-dbcache"])
def test_removing_a_peer_restores_the_model_exactly(model, name) -> None:
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([999, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        before = model(x, t, y)
        peer = _peer(name)
        if name == "diffusers-magcache":  # it refuses to run without its calibrated ratios
            peer = peer.with_knobs(mag_ratios=[1.0] * STEPS)
        with applied(peer, model.transformer, STEPS):
            pass
        after = model(x, t, y)
    assert torch.equal(before, after)


@pytest.mark.parametrize(
    "name, knobs",
    [("diffusers-fbc", {"threshold": 0.0}), ("cachedit-dbcache", {"residual_diff_threshold": 0.0})],
)
def test_a_threshold_of_zero_caches_nothing(model, sample_set, full, name, knobs) -> None:
    run = run_peer(model, _peer(name, **knobs), *sample_set, **KW, progress=False)
    assert torch.equal(run.gen.images, full.images)
    assert run.gflops == pytest.approx(full.gflops, rel=1e-9)


@pytest.mark.parametrize(
    "name", ["diffusers-fbc", "diffusers-seacache", "cachedit-dbcache-taylorseer"]
)
def test_a_large_threshold_caches_and_counts_fewer_flops(model, sample_set, full, name) -> None:
    peer = get_peer(name).tuned(STEPS, 2)  # 2 warmup steps (cache-dit's default 8 = all steps)
    run = run_peer(model, _peer(name, **{**peer.knobs, peer.knob.name: 3.0}), *sample_set, **KW,
                   progress=False)  # fmt: skip
    assert run.gflops < 0.8 * full.gflops
    assert not torch.equal(run.gen.images, full.images)
    assert run.gen.peak_cache_bytes > 0
    assert math.isnan(run.gen.mean_nfc)  # a peer has no NFC of its own


def test_relcache_on_the_converted_model_counts_its_flops(model, sample_set, full) -> None:
    """A fixed schedule's counted FLOPs: NFC 4 of 8 full steps cost about half (cached steps
    still run the embeddings and norms outside the cached modules)."""
    config = relcache.TaylorSeer(interval=2, order=1)
    gen = run_method(model, config, *sample_set, **KW, progress=False, count_flops=True)
    assert gen.mean_nfc == 5
    assert 0.55 * full.gflops < gen.gflops < 0.75 * full.gflops


def test_magcache_calibrates_one_ratio_per_step(model, sample_set) -> None:
    peer = calibrated(model, get_peer("diffusers-magcache"), *sample_set, **KW)
    ratios = peer.knobs["mag_ratios"]
    assert len(ratios) == STEPS and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert "<8 calibrated values>" in peer.describe()


def test_tuning_moves_the_flops_to_the_target(model, sample_set, full) -> None:
    """The tuned threshold's FLOPs are closer to the target than the two ends of its range."""
    target = 0.6 * full.gflops
    peer = get_peer("diffusers-fbc")
    tuned, run = tune_peer(model, peer, target, *sample_set, **KW, iterations=6)
    measured = run.gflops
    low = run_peer(model, peer.with_knobs(threshold=peer.knob.low), *sample_set, **KW,
                   progress=False).gflops  # fmt: skip
    assert abs(measured - target) < abs(low - target)
    assert tuned.knobs["threshold"] > peer.knob.low


def test_tuned_peers_start_from_relcache_warmup() -> None:
    assert get_peer("diffusers-magcache").tuned(50, 2).knobs["retention_ratio"] == 2 / 50
    assert get_peer("diffusers-seacache").tuned(50, 2).knobs["retention_steps"] == 2
    assert get_peer("diffusers-taylorseer").tuned(50, 2).knobs["disable_cache_before_step"] == 2
    assert get_peer("cachedit-dbcache").tuned(50, 2).knobs["max_warmup_steps"] == 2
    assert get_peer("diffusers-fbc").tuned(50, 2).knobs == {}


def test_cache_bytes_counts_distinct_storages_and_skips_modules() -> None:
    a = torch.zeros(10)  # 40 bytes
    holder = type("Holder", (), {})()
    holder.state = {"x": a, "view": a[:5], "more": [torch.zeros(2, dtype=torch.float64)]}
    holder.module = torch.nn.Linear(100, 100)  # parameters are not cache
    assert cache_bytes([holder, None]) == 40 + 16


def test_fastercache_cannot_run_on_images(model, sample_set) -> None:
    """diffusers' FasterCache assumes video latents (5-D); on DiT it fails, and the bench
    reports the error instead of a row."""
    with pytest.raises(RuntimeError, match="permute"):
        run_peer(model, get_peer("diffusers-fastercache"), *sample_set, **KW, progress=False)


def test_missing_library_says_how_to_install() -> None:
    peer = get_peer("cachedit-dbcache")
    missing = type(peer)(**{**peer.__dict__, "library": "no-such-library"})
    with pytest.raises(PeerUnavailable, match=r"relcache\[peers\]"):
        missing.check()


def test_settings_check_peers() -> None:
    with pytest.raises(ValueError, match="unknown peer"):
        BenchSettings(methods=("taylorseer2",), peers=("no-such-peer",))
    with pytest.raises(ValueError, match="--peer-match"):
        BenchSettings(methods=("taylorseer2",), peers=("diffusers-fbc",), peer_match="rfc2")
    s = BenchSettings(methods=("taylorseer2", "rfe2:clamp=1.05"), peers=("diffusers-fbc",))
    assert s.match_method == "rfe2:clamp=1.05"
    assert "--peers diffusers-fbc --peer-match rfe2:clamp=1.05" in s.command()


@CACHE_DIT
def test_bench_with_peers_writes_the_peers_section(tmp_path) -> None:
    from relcache.cli import main

    names = ("diffusers-fbc", "diffusers-fastercache", "cachedit-dbcache")
    argv = ["bench", "--preset", "DiT-FM", "--preset-overrides",
            "depth=2,hidden_size=32,num_heads=2", "--steps", "6", "--samples", "4",
            "--batch-size", "2", "--budgets", "4", "--methods", "taylorseer2",
            "--peers", ",".join(names), "--calibration-samples", "2", "--no-analysis",
            "--no-cache", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    peers = results["peers"]
    assert set(peers) == {f"{p}@{b}" for p in names for b in ("4", "default")}
    assert "permute" in peers["diffusers-fastercache@4"]["error"]
    tuned = peers["diffusers-fbc@4"]
    assert tuned["target_gflops"] == results["runs"]["taylorseer2@4"]["gflops"]
    assert tuned["gflops"] > 0 and tuned["fd2fc"] is not None
    assert [c["knobs"].keys() for c in tuned["search"]["candidates"]] == [{"threshold"}]
    search = peers["cachedit-dbcache@4"]["search"]  # 2 blocks: only F1B0, with 2 or 4 warmups
    assert [c["knobs"]["max_warmup_steps"] for c in search["candidates"]] == [2, 4]
    assert len(search["skipped"]) == 6 and search["winner"] in (0, 1)
    report = (tmp_path / "report.md").read_text()
    assert "## Peers" in report and "### Could not run" in report
    assert "#### cache-dit DBCache (`cachedit-dbcache`)" in report
    assert "`max_warmup_steps` in {2, 4}" in report and "| budget | winner |" in report
    assert (tmp_path / "quality_vs_gflops_peers.png").exists()


def test_trade_off_marks_rows_no_peer_beats_on_all_three() -> None:
    from types import SimpleNamespace

    from relcache.evaluation.peers_report import beaten_by, trade_off

    ours = {"label": "stack", "psnr": 40.0, "fd2fc": 0.2, "ms_per_image": 80.0,
            "peak_cache_mb": 20.0, "gflops": 10.0}  # fmt: skip
    slow = {**ours, "label": "module", "ms_per_image": 120.0, "peak_cache_mb": 200.0}
    peer = {"label": "peer", "method": "p", "budget": 14, "psnr": 41.0, "fd2fc": 0.1,
            "ms_per_image": 100.0, "peak_cache_mb": 10.0, "gflops": 10.0}  # fmt: skip
    assert beaten_by(slow, peer) and not beaten_by(ours, peer)
    results = {"runs": {"a@14": ours, "b@14": slow}, "peers": {"p@14": peer}}
    s = SimpleNamespace(methods=["a", "b"])
    table = "\n".join(trade_off(results, s, 14))
    lines = {ln.split("|")[1].strip(): ln for ln in table.splitlines() if ln.startswith("| ")}
    assert lines["stack"].rstrip().endswith("| yes |")
    assert not lines["module"].rstrip().endswith("| yes |")


# ----- the search over each peer's documented secondary knobs -----


@dataclass
class FakePeer(Peer):
    """A peer whose runs are faked (``fake_runs``): GFLOPs from its threshold and a floor per
    cap, image error per cap; cap 3 cannot run."""

    name: str = "fake"
    label: str = "fake cache"
    knob: Knob | None = Knob("t", 0.01, 1.0, log=False)
    space: dict = dataclasses.field(default_factory=lambda: {"cap": (0, 1, 2, 3)})

    def apply(self, transformer, steps) -> None: ...

    def remove(self, transformer) -> None: ...

    def reset(self, transformer) -> None: ...


FLOOR = {0: 0.0, 1: 0.0, 2: 8.0}  # cap 2 cannot go below 8 GFLOPs
ERROR = {0: 0.1, 1: 0.05, 2: 0.001}  # ... but has the best images
REFERENCE = torch.zeros(4, 1, 28, 28)


@pytest.fixture
def fake_runs(monkeypatch) -> None:
    """``run_peer`` replaced: no model runs."""

    def run(model, peer, seeds, labels, **kw) -> PeerRun:
        cap, t = peer.knobs["cap"], peer.knobs["t"]
        if cap == 3:
            raise PeerUnavailable("cap 3 does not fit this model")
        images = REFERENCE + ERROR[cap]
        gen = Generation(images, torch.full((4,), float("nan")), 0.0, 0)
        return PeerRun(gen, max(FLOOR[cap], 10 * (1 - t)), {})

    monkeypatch.setattr(peer_runs, "run_peer", run)


def _fake_search(target: float = 5.0):
    return search_peer(None, FakePeer(), target, [0, 1, 2, 3], torch.zeros(4), REFERENCE,
                       steps=STEPS, cfg_scale=2.0, warmup=2, iterations=20)  # fmt: skip


def test_search_picks_the_best_psnr_that_meets_the_budget(fake_runs) -> None:
    """Cap 2 has the best images but cannot reach the target: cap 1, the next best, wins."""
    found = _fake_search()
    record = found.record
    assert found.peer.knobs["cap"] == 1 and found.run.gflops == pytest.approx(5.0, rel=0.01)
    assert [c["knobs"]["cap"] for c in record["candidates"]] == [0, 1, 2]
    assert [c["meets"] for c in record["candidates"]] == [True, True, False]
    assert record["winner"] == 1 and record["skipped"][0]["knobs"] == {"cap": 3}
    assert record["candidates"][2]["psnr"] > record["candidates"][1]["psnr"]
    assert record["space"] == {"cap": (0, 1, 2, 3)} and record["knob"] == "t"
    json.dumps(json_safe(record), allow_nan=False)  # results.json holds it


def test_pick_candidate_falls_back_to_the_closest() -> None:
    c = [Candidate(None, {}, gflops, psnr) for gflops, psnr in ((12.0, 40.0), (10.5, 20.0))]
    assert pick_candidate(c, 10.0, 0.03) == 1  # none meets 10.3: the closest
    assert pick_candidate(c, 12.0, 0.03) == 0  # both meet: the best PSNR
    nan = [Candidate(None, {}, 1.0, float("nan")), Candidate(None, {}, 1.0, 10.0)]
    assert pick_candidate(nan, 1.0, 0.03) == 1


def test_report_lists_the_search_space_and_winners(fake_runs) -> None:
    from types import SimpleNamespace

    from relcache.evaluation.peers_report import search_lines

    row = {"peer": "fake", "budget": 14, "search": _fake_search().record}
    results = json.loads(json.dumps(json_safe({"peers": {"fake@14": row}})))
    text = "\n".join(search_lines(results, FakePeer(), SimpleNamespace(steps=STEPS)))
    assert "Search space: `t` tuned to the target at each of the 4 points of `cap` in" in text
    assert "{0, 1, 2, 3}" in text
    table = [ln for ln in text.splitlines() if ln.startswith("| 14 |")]
    assert len(table) == 1 and "cap=1, t=0.5" in table[0] and "2 of 3" in table[0]


def _config_class(peer: Peer) -> tuple[type, dict]:
    """The library's config class of ``peer`` and the values a run starts from before knobs."""
    if peer.library == "cache-dit":
        import cache_dit

        from relcache.peers.cache_dit import _DEFAULTS

        return cache_dit.DBCacheConfig, _DEFAULTS
    import diffusers.hooks as hooks

    return getattr(hooks, peer.config_name), peer.base


@pytest.mark.parametrize("name", list(PEERS))
def test_search_spaces_name_real_knobs_and_start_from_the_knob_alone(name) -> None:
    """Every searched knob is a field of the library's config class; the grid's first point is
    the tuned peer unchanged (so the search can only match or beat the knob alone), and it is
    small."""
    peer = get_peer(name)
    if not _has(peer.library.replace("-", "_")):
        pytest.skip(f"needs {peer.library}")
    cls, base = _config_class(peer)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    space, grid = peer.search_space(50, 2), peer.grid(50, 2)
    assert set(space) | {peer.knob.name} <= set(fields)
    tuned = {**fields, **base, **peer.tuned(50, 2).knobs}
    assert grid[0] == {k: tuned[k] for k in space}
    assert len(grid) <= 8 and len(grid) == len({repr(p) for p in grid})
