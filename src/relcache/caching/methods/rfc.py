"""RFC = RFE (relational magnitude) + RCS (error-driven full steps) on TaylorSeer (§3)."""

from __future__ import annotations

from dataclasses import dataclass

from relcache.caching.methods.base import (
    CacheMethod,
    as_full_steps,
    check_bool,
    check_first,
    check_order,
    check_positive_int,
    check_schedule_knobs,
    fixed_or_explicit,
)
from relcache.caching.predictors import RelationalPredictor, TaylorPredictor
from relcache.caching.schedulers import SCOPES, BudgetSchedule, RCSSchedule, Scheduler

DEFAULT_WARMUP = 2  # RFE's two full steps; 3 for FLUX


@dataclass(frozen=True)
class RFC(CacheMethod):
    """Relational feature caching. ``rcs=False`` takes a fixed ``interval`` or ``full_steps``
    (the paper's "+RFE" ablation); ``rfe=False`` keeps the Taylor prediction ("+RCS")."""

    order: int = 2
    threshold: float | None = None
    warmup: int | None = None  # None: 2 (no full_steps) / unused (full_steps)
    rfe: bool = True
    rcs: bool = True
    interval: int | None = None
    full_steps: tuple[int, ...] | None = None
    scope: str = "row"  # RCS: who decides together, see RCSSchedule
    nfc: int | None = None  # budget mode: exactly this many full steps per sample (no threshold)
    steps: int = 50  # budget mode: the trajectory's length the budget is planned over
    clamp: float | None = None  # RFE magnitude within [1/c, c] x the Taylor increment's length
    first: int | None = None  # fixed schedule: first refresh after the warmup (None: official)

    name = "rfc"

    def __post_init__(self) -> None:
        check_bool("rfe", self.rfe)
        check_bool("rcs", self.rcs)
        object.__setattr__(self, "full_steps", as_full_steps(self.full_steps))
        check_order(self.order, minimum=1)
        if self.warmup is None and self.full_steps is None:
            object.__setattr__(self, "warmup", DEFAULT_WARMUP)
        if self.warmup is not None:
            self._check_warmup()
        if self.rcs:
            self._check_rcs()
        else:
            self._check_fixed()
        self._check_clamp()

    def _check_clamp(self) -> None:
        c = self.clamp
        if c is None:
            return
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 1:
            raise ValueError(f"clamp must be a number >= 1 (e.g. 1.1), got {c!r}")
        if not self.rfe:
            raise ValueError("clamp bounds RFE's magnitude; drop it or set rfe=True")

    def _check_warmup(self) -> None:
        check_positive_int("warmup", self.warmup, "RFC needs warmup >= 2")
        if self.warmup < 2:
            raise ValueError(
                f"RFC warmup must be >= 2 (RFE needs two full steps to measure s), got "
                f"{self.warmup}; use warmup=2 for DiT, 3 for FLUX"
            )

    def _check_rcs(self) -> None:
        t = self.threshold
        if self.nfc is not None:
            self._check_budget()
        elif isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(
                f"RFC(rcs=True) needs a threshold > 0, got {t!r}; pass e.g. threshold=0.5, or "
                "find the one matching a target NFC with relcache.METHODS['rfc'].for_nfc(nfc, "
                "steps, calibrate=fn), where fn(make, nfc) returns (threshold, info) (relcache "
                "bench and demo do this)"
            )
        if self.interval is not None or self.full_steps is not None or self.first is not None:
            raise ValueError(
                "RFC(rcs=True) schedules full steps itself; drop interval/full_steps/first, or "
                "pass rcs=False to use a fixed schedule"
            )
        if self.scope not in SCOPES:
            raise ValueError(
                f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}: 'row' decides "
                "per batch row (the paper), 'sample' the CFG branches of a sample together, "
                "'batch' all rows of a call together"
            )

    def _check_budget(self) -> None:
        if self.threshold is not None:
            raise ValueError(
                "pass either threshold= (the paper's RCS) or nfc= (a budget), not both"
            )
        check_positive_int("steps", self.steps, "the sampler's number of steps, e.g. 50")
        if isinstance(self.nfc, bool) or not isinstance(self.nfc, int):
            raise ValueError(f"nfc must be an integer number of full steps, got {self.nfc!r}")
        if not self.warmup <= self.nfc <= self.steps:
            raise ValueError(
                f"nfc must lie between the {self.warmup} warm-up steps and steps={self.steps}, "
                f"got {self.nfc}"
            )

    def _check_fixed(self) -> None:
        if self.nfc is not None:
            raise ValueError("nfc= is RCS's budget; with rcs=False pass interval= or full_steps=")
        if self.threshold is not None:
            raise ValueError("threshold is only used with rcs=True; drop it or set rcs=True")
        if self.scope != "row":
            raise ValueError("scope is an RCS setting; drop it or set rcs=True")
        if (self.interval is None) == (self.full_steps is None):
            raise ValueError(
                "RFC(rcs=False) needs exactly one of interval=N (TaylorSeer's schedule) or "
                "full_steps=[...]"
            )
        if self.interval is not None:
            check_positive_int("interval", self.interval, "use 4 for NFC 14 at 50 steps")
        check_schedule_knobs(None, self.warmup, self.full_steps)
        check_first(self.first, self.full_steps)
        if self.rfe and self.full_steps is not None and self.full_steps[:2] != (0, 1):
            raise ValueError(
                f"RFE needs two full steps before the first cached one (to measure s), so "
                f"full_steps must start 0, 1, got {list(self.full_steps)!r}; e.g. "
                f"{[0, 1, *[s for s in self.full_steps if s > 1]]!r}, or rfe=False"
            )

    def scheduler(self) -> Scheduler:
        if self.rcs and self.nfc is not None:
            return BudgetSchedule(self.nfc, self.steps, self.order, self.warmup, self.scope, None)
        if self.rcs:
            return RCSSchedule(self.threshold, self.order, self.warmup, self.scope)
        return fixed_or_explicit(self.interval, self.warmup, self.full_steps, self.first)

    def predictor(self) -> TaylorPredictor:
        if not self.rfe:
            return TaylorPredictor(self.order)
        return RelationalPredictor(self.order, self.clamp)

    def describe(self) -> str:
        parts = {(True, True): "RFC", (True, False): "+RFE", (False, True): "+RCS"}
        label = parts.get((self.rfe, self.rcs), "TaylorSeer(RFC)")
        extra = "" if self.scope == "row" else f" {self.scope}"
        extra += "" if self.nfc is None else f" NFC {self.nfc}"
        extra += "" if self.clamp is None else f" clamp {self.clamp:g}"
        extra += "" if self.first is None else f" first {self.first}"
        return f"{label} m={self.order}{extra}"
