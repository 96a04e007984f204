"""Peers (``relcache.peers``) over the bench's sample set, at matched measured FLOPs.

Same converted model, sampler, seeds, CFG and batches as relcache's runs; FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` on the first batch of every row (relcache's included,
``runner.timed_batches``), so block-level peers that always run some blocks are charged what
they run. A peer's
knob (a threshold, an interval) is tuned to a FLOPs target on the calibration seeds, as RCS's
threshold is tuned to an NFC (``budgets.py``), at every point of its grid of documented secondary
knobs (warm-up, caps, ...: ``Peer.grid``); the point with the best calibration PSNR among those
that meet the target wins (:func:`search_peer`). The reported rows use the held-out seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from relcache.evaluation.metrics import psnr
from relcache.evaluation.runner import Generation, per_sample_noise, sample_batch, timed_batches
from relcache.peers import Peer, PeerUnavailable, StepInfo, applied
from relcache.sampling.ddim import ddim_schedule

__all__ = [
    "Candidate", "PeerRun", "PeerSearch", "TOLERANCE", "cache_bytes", "calibrated",
    "pick_candidate", "run_peer", "search_peer", "step_infos", "tune_peer",
]  # fmt: skip
TOLERANCE = 0.03  # a candidate meets the budget at most 3% above the target GFLOPs


@dataclass
class PeerRun:
    """A peer's samples, their measured FLOPs and what the library reported."""

    gen: Generation
    gflops: float  # per image (its CFG rows included), FlopCounterMode
    summary: dict


def step_infos(steps: int) -> list[StepInfo]:
    """Per DDIM step i: the timestep and sigma the sampler's step i runs at (ddim.py's order)."""
    schedule = ddim_schedule(steps)
    infos = []
    for i, index in enumerate(range(len(schedule) - 1, -1, -1)):
        abar = float(schedule.alphas_cumprod[index])
        timestep = float(schedule.timesteps[index])
        a, b = math.sqrt(abar), math.sqrt(1 - abar)
        infos.append(StepInfo(i, steps, timestep, b / (a + b)))
    return infos


def run_peer(
    model: nn.Module,
    peer: Peer,
    seeds: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "",
    count_flops: bool = True,
) -> PeerRun:
    """Generate one image per (seed, label) with ``peer`` installed on ``model.transformer``;
    FLOPs and timing as :func:`runner.timed_batches` measures relcache's runs."""
    tr, cfg = model.transformer, model.config
    noise = per_sample_noise(seeds, (cfg.in_channels, cfg.input_size, cfg.input_size))
    infos, peak = step_infos(steps), 0

    def step(i: int):
        nonlocal peak
        if i == steps - 1:  # the cache as it stands after a whole trajectory
            peak = max(peak, cache_bytes(peer.cache_roots(tr)))
        return peer.step(tr, infos[i])

    def run_batch(rows: slice) -> torch.Tensor:
        peer.reset(tr)
        return sample_batch(model, noise[rows], labels[rows], steps=steps, cfg_scale=cfg_scale,
                            step_context=step)  # fmt: skip

    desc = desc or peer.describe()
    with applied(peer, tr, steps):
        images, seconds, gflops = timed_batches(len(seeds), batch_size, run_batch, model,
                                                count_flops, progress, desc)  # fmt: skip
        summary = peer.summary(tr)
    nan = torch.full((len(seeds),), float("nan"))  # a peer has no NFC of its own
    return PeerRun(Generation(images, nan, seconds, peak, None, gflops), gflops, summary)


def calibrated(
    model: nn.Module,
    peer: Peer,
    seeds: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
) -> Peer:
    """``peer`` after its own calibration procedure (MagCache's ratios) on ``seeds``, if any:
    ``peer.calibrate`` gets a function that generates ``seeds`` with a given probe peer."""

    def generate(probe: Peer) -> None:
        run_peer(model, probe, seeds, labels, steps=steps, cfg_scale=cfg_scale,
                 batch_size=len(seeds), progress=False, count_flops=False)  # fmt: skip

    return peer.calibrate(model.transformer, steps, generate)


def tune_peer(
    model: nn.Module,
    peer: Peer,
    target_gflops: float,
    seeds: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
    iterations: int = 7,
    progress: bool = False,
) -> tuple[Peer, PeerRun]:
    """``peer`` with its knob set so its GFLOPs per image on ``seeds`` is closest to the target
    (bisection; integers: binary search), and its run there (GFLOPs and images, for scoring)."""
    knob = peer.knob
    if knob is None:
        raise ValueError(f"{peer.name} has no knob to tune")
    tried: dict[float, PeerRun] = {}
    bar = tqdm(desc=f"tune {peer.name}", disable=not progress, leave=False)

    def measure(value: float) -> float:
        if value not in tried:
            probe = peer.with_knobs(**{knob.name: value})
            tried[value] = run_peer(model, probe, seeds, labels, steps=steps, cfg_scale=cfg_scale,
                                    batch_size=len(seeds), progress=False)  # fmt: skip
            bar.update()
            bar.set_postfix({knob.name: f"{value:.4g}", "GFLOPs": f"{tried[value].gflops:.3g}"})
        return tried[value].gflops

    low, high = knob.low, knob.high
    for _ in range(iterations):
        if knob.integer and high - low <= 1:
            break
        mid = _middle(low, high, knob.integer, knob.log)
        cheaper = measure(mid) < target_gflops
        if cheaper == knob.more_is_cheaper:  # too cheap: move toward more compute
            high = mid
        else:
            low = mid
    for end in (low, high):
        measure(end)
    bar.close()
    best = min(tried, key=lambda v: (abs(tried[v].gflops - target_gflops), tried[v].gflops))
    return peer.with_knobs(**{knob.name: int(best) if knob.integer else best}), tried[best]


@dataclass
class Candidate:
    """One grid point of a peer's search, tuned to the target: its knobs and calibration scores."""

    peer: Peer
    knobs: dict[str, Any]  # the grid point's secondary knobs and the tuned knob's value
    gflops: float
    psnr: float  # mean over the calibration images, against full compute of the same seeds
    run: PeerRun | None = None  # its run on the calibration seeds

    def meets(self, target: float, tolerance: float) -> bool:
        """Whether its GFLOPs are at most ``tolerance`` above ``target``."""
        return self.gflops <= target * (1 + tolerance)

    def record(self, target: float, tolerance: float) -> dict[str, Any]:
        """Its row in the search record."""
        return {"knobs": self.knobs, "gflops": self.gflops, "psnr": self.psnr,
                "meets": self.meets(target, tolerance)}  # fmt: skip


@dataclass
class PeerSearch:
    """A peer's search: the winner, its calibration run, and the record the report shows."""

    peer: Peer
    run: PeerRun  # the winner's run on the calibration seeds
    record: dict[str, Any]  # space, knob, target, tolerance, candidates, skipped, winner (index)


def pick_candidate(candidates: Sequence[Candidate], target: float, tolerance: float) -> int:
    """The index of the best PSNR among candidates at most ``tolerance`` above ``target`` GFLOPs
    (ties: the first); if none is, of the one closest to the target."""
    meets = [i for i, c in enumerate(candidates) if c.meets(target, tolerance)]
    if not meets:
        return min(range(len(candidates)), key=lambda i: abs(candidates[i].gflops - target))
    return max(meets, key=lambda i: _score(candidates[i].psnr))


def search_peer(
    model: nn.Module,
    peer: Peer,
    target_gflops: float,
    seeds: Sequence[int],
    labels: torch.Tensor,
    reference: torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
    warmup: int,
    iterations: int = 7,
    tolerance: float = TOLERANCE,
    progress: bool = False,
) -> PeerSearch:
    """At every point of ``peer.grid``, the knob tuned to the target on ``seeds`` and the images
    scored against ``reference`` (full compute of the same seeds); the winner by
    :func:`pick_candidate`, with the record of the search."""
    kw = dict(steps=steps, cfg_scale=cfg_scale, iterations=iterations, progress=progress)
    candidates, skipped = [], []
    points = peer.grid(steps, warmup)
    for point in tqdm(points, desc=f"search {peer.name}", disable=not progress, leave=False):
        try:
            candidates.append(_candidate(model, peer.tuned(steps, warmup), point, target_gflops,
                                         seeds, labels, reference, kw))  # fmt: skip
        except PeerUnavailable as err:  # e.g. more always-computed blocks than the model has
            skipped.append({"knobs": point, "error": str(err)})
    if not candidates:
        raise PeerUnavailable(f"{peer.name}: no point of its search space runs here: {skipped}")
    best = pick_candidate(candidates, target_gflops, tolerance)
    record = {
        "space": peer.search_space(steps, warmup),
        "knob": peer.knob.name,
        "target_gflops": target_gflops,
        "tolerance": tolerance,
        "candidates": [c.record(target_gflops, tolerance) for c in candidates],
        "skipped": skipped,
        "winner": best,
    }
    return PeerSearch(candidates[best].peer, candidates[best].run, record)


def _candidate(
    model: nn.Module,
    start: Peer,
    point: dict[str, Any],
    target_gflops: float,
    seeds: Sequence[int],
    labels: torch.Tensor,
    reference: torch.Tensor,
    kw: dict[str, Any],
) -> Candidate:
    """``start`` with the grid ``point`` set, its knob tuned to the target, scored."""
    peer, run = tune_peer(model, start.with_knobs(**point), target_gflops, seeds, labels, **kw)
    knobs = {**point, peer.knob.name: peer.knobs[peer.knob.name]}
    return Candidate(peer, knobs, run.gflops, psnr(run.gen.images, reference), run)


def _score(value: float) -> float:
    """A PSNR to rank by (NaN: last)."""
    return -math.inf if math.isnan(value) else value


def _middle(low: float, high: float, integer: bool, log: bool) -> float:
    if integer:
        return (int(low) + int(high)) // 2
    return math.sqrt(low * high) if log else (low + high) / 2


def cache_bytes(roots: list) -> int:
    """Bytes of the distinct tensor storages reachable from ``roots`` through containers and
    plain objects (modules, their parameters and functions are not followed)."""
    seen_objects: set[int] = set()
    storages: dict[int, int] = {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen_objects:
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "meta":
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, (nn.Module, type)) or callable(obj):
            continue
        elif isinstance(obj, dict):
            stack += list(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack += list(obj)
        elif hasattr(obj, "__dict__"):
            stack += list(vars(obj).values())
    return sum(storages.values())
