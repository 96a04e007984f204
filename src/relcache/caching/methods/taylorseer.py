"""TaylorSeer: extrapolate each module's output with a Taylor series over steps (§2)."""

from __future__ import annotations

from dataclasses import dataclass

from relcache.caching.methods.base import (
    CacheMethod,
    check_full_steps,
    check_order,
    check_positive_int,
    fixed_or_explicit,
)
from relcache.caching.predictors import TaylorPredictor


@dataclass(frozen=True)
class TaylorSeer(CacheMethod):
    """Full step every ``interval`` steps after ``warmup``; cached steps predict
    sum_r f_r k^r / r! with orders up to ``order`` (or use an explicit ``full_steps`` list)."""

    interval: int = 4
    order: int = 2
    warmup: int = 2
    full_steps: tuple[int, ...] | None = None

    name = "taylorseer"

    def __post_init__(self) -> None:
        if self.full_steps is not None:
            object.__setattr__(self, "full_steps", tuple(self.full_steps))
        check_order(self.order)
        check_positive_int("interval", self.interval, "use 1 for full compute, 4 for NFC 14/50")
        check_positive_int("warmup", self.warmup, "the official value is 2 for DiT, 3 for FLUX")
        check_full_steps(self.full_steps)

    def scheduler(self):
        return fixed_or_explicit(self.interval, self.warmup, self.full_steps)

    def predictor(self) -> TaylorPredictor:
        return TaylorPredictor(self.order)

    def describe(self) -> str:
        sched = "" if self.full_steps is not None else f" N={self.interval}"
        return f"TaylorSeer{sched} m={self.order}"
