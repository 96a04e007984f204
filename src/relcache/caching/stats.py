"""What a generation computed, read off the trajectories (off the hot path)."""

from __future__ import annotations

from dataclasses import dataclass, field

from relcache.caching.steps import FIRST
from relcache.caching.trajectories import Trajectories


@dataclass
class CacheStats:
    """NFC, full steps, per-module calls, cache memory; per branch, keyed by its label
    (``call0``, ``call1`` ... for a step's calls, a context's name, ``default``)."""

    nfc: float
    nfc_per_sample: dict[str, list[float]]
    full_steps: dict[str, list[int]]
    steps: dict[str, int]
    module_calls: dict[str, dict[str, int]]
    peak_cache_bytes: int
    method: str = ""
    nonfinite_errors: int = 0  # RCS: row-steps whose error was NaN/inf (forced full steps)
    nonfinite_predictions: int = 0  # row-steps whose prediction overflowed (forced full steps)
    schedules: dict[str, list[list[int]]] = field(default_factory=dict)  # branch -> per row
    row_nfc: list[float] = field(default_factory=list)  # the first branch's, per batch row
    row_schedules: list[list[int]] = field(default_factory=list)  # the first branch's, per row


def collect(now: Trajectories, names: list[str], method: str) -> CacheStats:
    """The stats of one thread's trajectories over the cached modules ``names``."""
    branches = now.branches.values()
    per_sample = {
        b.key.label: (b.history.n_full.float().tolist() if b.history.started else [])
        for b in branches
    }
    flat = [v for vs in per_sample.values() for v in vs]
    calls: dict[str, dict[str, int]] = {n: {"full": 0, "cached": 0} for n in names}
    for b in branches:
        for n, c in b.full_calls.items():
            calls[n]["full"] += c
        for n, c in b.cached_calls.items():
            calls[n]["cached"] += c
    schedules = {b.key.label: b.history.schedules() for b in branches}
    first = now.branches.get(FIRST) or next(iter(branches), None)
    return CacheStats(
        nfc=sum(flat) / len(flat) if flat else 0.0,
        nfc_per_sample=per_sample,
        full_steps={b.key.label: list(b.history.full_steps) for b in branches},
        steps={b.key.label: b.history.step for b in branches},
        module_calls=calls,
        peak_cache_bytes=now.peak_bytes,
        method=method,
        schedules=schedules,
        nonfinite_errors=sum(b.scheduler.report().get("nonfinite_errors", 0) for b in branches),
        nonfinite_predictions=sum(b.nonfinite_predictions for b in branches),
        row_nfc=[] if first is None else per_sample[first.key.label],
        row_schedules=[] if first is None else schedules[first.key.label],
    )
