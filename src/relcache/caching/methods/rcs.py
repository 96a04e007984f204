"""+RCS: Taylor prediction on RCS's error-driven schedule (§3), the paper's ablation."""

from __future__ import annotations

from dataclasses import dataclass

from relcache.caching.methods.base import (
    CacheMethod,
    check_order,
    check_positive_int,
    check_scope,
    check_threshold,
    scope_label,
)
from relcache.caching.predictors import TaylorPredictor
from relcache.caching.schedulers import RCSSchedule, Scheduler

DEFAULT_WARMUP = 2


@dataclass(frozen=True)
class RCS(CacheMethod):
    """Full step when the driver input's accumulated relative L1 error exceeds ``threshold``;
    cached steps predict with TaylorSeer's series of order ``order``."""

    order: int = 2
    threshold: float | None = None
    warmup: int = DEFAULT_WARMUP
    scope: str = "sample"  # who decides together, see RCSSchedule

    name = "rcs"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order(self.order, minimum=1)
        check_positive_int("warmup", self.warmup, "the official value is 2 for DiT, 3 for FLUX")
        check_threshold(self.threshold)
        check_scope(self.scope)

    def scheduler(self) -> Scheduler:
        return RCSSchedule(self.threshold, self.order, self.warmup, self.scope)

    def predictor(self) -> TaylorPredictor:
        return TaylorPredictor(self.order, self.warmup)

    def describe(self) -> str:
        return f"+RCS m={self.order}{scope_label(self.scope)}{self.unit}"
