"""TaylorSeer: extrapolate each module's output with a Taylor series over steps (§2)."""

from __future__ import annotations

from dataclasses import dataclass

from relcache.caching.methods.base import (
    CacheMethod,
    as_full_steps,
    check_first,
    check_order,
    check_positive_int,
    check_schedule_knobs,
    fixed_or_explicit,
)
from relcache.caching.predictors import TaylorPredictor

DEFAULT_INTERVAL = 4  # NFC 14 at 50 steps with warmup 2
DEFAULT_WARMUP = 2  # the official value for DiT (3 for FLUX)


@dataclass(frozen=True)
class TaylorSeer(CacheMethod):
    """Full step every ``interval`` steps after ``warmup``; cached steps predict
    sum_r f_r k^r / r! with orders up to ``order`` (or use an explicit ``full_steps`` list).

    ``interval`` and ``warmup`` default to 4 and 2; with ``full_steps`` they stay None (the
    list is the whole schedule, and giving them too is an error)."""

    interval: int | None = None  # None: 4 (no full_steps) / unused (full_steps)
    order: int = 2
    warmup: int | None = None  # None: 2 (no full_steps) / unused (full_steps)
    full_steps: tuple[int, ...] | None = None
    first: int | None = None  # first refresh after the warmup (None: W - 1 + N, the official)

    name = "taylorseer"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "full_steps", as_full_steps(self.full_steps))
        check_order(self.order)
        check_schedule_knobs(self.interval, self.warmup, self.full_steps)
        check_first(self.first, self.full_steps)
        if self.full_steps is not None:
            return
        for knob, default in (("interval", DEFAULT_INTERVAL), ("warmup", DEFAULT_WARMUP)):
            if getattr(self, knob) is None:
                object.__setattr__(self, knob, default)
        check_positive_int("interval", self.interval, "use 1 for full compute, 4 for NFC 14/50")
        check_positive_int("warmup", self.warmup, "the official value is 2 for DiT, 3 for FLUX")

    def scheduler(self):
        return fixed_or_explicit(self.interval, self.warmup, self.full_steps, self.first)

    def predictor(self) -> TaylorPredictor:
        return TaylorPredictor(self.order, self.warmup)

    def describe(self) -> str:
        sched = "" if self.full_steps is not None else f" N={self.interval}"
        sched += "" if self.first is None else f" first {self.first}"
        return f"TaylorSeer{sched} m={self.order}{self.unit}"
