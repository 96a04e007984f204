"""+RFE: RFE's relational magnitude (§3) on TaylorSeer's fixed schedule, the paper's ablation."""

from __future__ import annotations

from dataclasses import dataclass

from relcache.caching.methods.base import (
    CacheMethod,
    as_full_steps,
    check_clamp,
    check_first,
    check_order,
    check_positive_int,
    check_rfe_full_steps,
    check_rfe_warmup,
    check_schedule_knobs,
    clamp_label,
    fixed_or_explicit,
)
from relcache.caching.predictors import RelationalPredictor
from relcache.caching.schedulers import Scheduler

DEFAULT_WARMUP = 2  # RFE's two full steps; 3 for FLUX


@dataclass(frozen=True)
class RFE(CacheMethod):
    """Taylor direction, magnitude s * ||I - I(i)|| (§3), on a fixed ``interval`` (or an
    explicit ``full_steps``); ``clamp`` keeps the magnitude within [1/c, c] x Taylor's."""

    order: int = 2
    interval: int | None = None
    warmup: int | None = None  # None: 2 (no full_steps) / unused (full_steps)
    full_steps: tuple[int, ...] | None = None
    first: int | None = None  # first refresh after the warmup (None: W - 1 + N, the official)
    clamp: float | None = None

    name = "rfe"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "full_steps", as_full_steps(self.full_steps))
        check_order(self.order, minimum=1)
        check_schedule_knobs(None, self.warmup, self.full_steps)
        if self.warmup is None and self.full_steps is None:
            object.__setattr__(self, "warmup", DEFAULT_WARMUP)
        if self.warmup is not None:
            check_rfe_warmup(self.warmup)
        if (self.interval is None) == (self.full_steps is None):
            raise ValueError(
                "RFE needs exactly one of interval=N (TaylorSeer's schedule) or full_steps=[...]"
            )
        if self.interval is not None:
            check_positive_int("interval", self.interval, "use 4 for NFC 14 at 50 steps")
        check_first(self.first, self.full_steps)
        check_rfe_full_steps(self.full_steps)
        check_clamp(self.clamp)

    def scheduler(self) -> Scheduler:
        return fixed_or_explicit(self.interval, self.warmup, self.full_steps, self.first)

    def predictor(self) -> RelationalPredictor:
        return RelationalPredictor(self.order, self.clamp, self.warmup)

    def describe(self) -> str:
        first = "" if self.first is None else f" first {self.first}"
        return f"+RFE m={self.order}{clamp_label(self.clamp)}{first}{self.unit}"
