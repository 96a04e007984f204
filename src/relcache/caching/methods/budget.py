"""RFC in budget mode: exactly ``nfc`` full steps per sample, placed by RCS's error (§3)."""

from __future__ import annotations

from dataclasses import dataclass

from relcache.caching.methods.base import (
    CacheMethod,
    check_budget,
    check_clamp,
    check_order,
    check_rfe_warmup,
    check_scope,
    clamp_label,
    scope_label,
)
from relcache.caching.predictors import RelationalPredictor
from relcache.caching.schedulers import BudgetSchedule, Scheduler

DEFAULT_WARMUP = 2


@dataclass(frozen=True)
class Budget(CacheMethod):
    """RFE prediction; full steps where the accumulated error is large, ``nfc`` of ``steps``
    per sample exactly (no threshold, no calibration)."""

    order: int = 2
    nfc: int | None = None
    steps: int = 50
    warmup: int = DEFAULT_WARMUP
    scope: str = "sample"
    clamp: float | None = None

    name = "budget"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order(self.order, minimum=1)
        check_rfe_warmup(self.warmup)
        check_budget(self.nfc, self.steps, self.warmup)
        check_scope(self.scope)
        check_clamp(self.clamp)

    def scheduler(self) -> Scheduler:
        return BudgetSchedule(self.nfc, self.steps, self.order, self.warmup, self.scope, None)

    def predictor(self) -> RelationalPredictor:
        return RelationalPredictor(self.order, self.clamp, self.warmup)

    def describe(self) -> str:
        label = f"RFC m={self.order}{scope_label(self.scope)} NFC {self.nfc}"
        return f"{label}{clamp_label(self.clamp)}{self.unit}"
