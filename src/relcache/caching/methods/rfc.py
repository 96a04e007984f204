"""RFC = RFE (relational magnitude) + RCS (error-driven full steps) on TaylorSeer (§3)."""

from __future__ import annotations

from dataclasses import dataclass

from relcache.caching.methods.base import (
    CacheMethod,
    check_clamp,
    check_order,
    check_rfe_warmup,
    check_scope,
    check_threshold,
    clamp_label,
    scope_label,
)
from relcache.caching.predictors import RelationalPredictor
from relcache.caching.schedulers import RCSSchedule, Scheduler

DEFAULT_WARMUP = 2  # RFE's two full steps; 3 for FLUX
LEGACY = ("rfe", "rcs", "nfc", "steps", "interval", "full_steps", "first")  # engine v2 keywords


@dataclass(frozen=True)
class RFC(CacheMethod):
    """Relational feature caching, the paper's method: RFE prediction on RCS's schedule.

    Engine v2's switches still build the ablations: ``RFC(rcs=False, interval=N)`` is
    :class:`RFE`, ``RFC(rfe=False, threshold=t)`` is :class:`RCS`, ``RFC(nfc=n, steps=s)`` is
    :class:`Budget`.
    """

    order: int = 2
    threshold: float | None = None
    warmup: int = DEFAULT_WARMUP
    scope: str = "sample"  # RCS: who decides together, see RCSSchedule
    clamp: float | None = None  # RFE magnitude within [1/c, c] x the Taylor increment's length

    name = "rfc"

    def __new__(cls, *args: object, **kwargs: object) -> CacheMethod:
        if cls is RFC and any(k in kwargs for k in LEGACY):
            return _ablation(*args, **kwargs)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order(self.order, minimum=1)
        check_rfe_warmup(self.warmup)
        check_threshold(self.threshold)
        check_scope(self.scope)
        check_clamp(self.clamp)

    def scheduler(self) -> Scheduler:
        return RCSSchedule(self.threshold, self.order, self.warmup, self.scope)

    def predictor(self) -> RelationalPredictor:
        return RelationalPredictor(self.order, self.clamp, self.warmup)

    def describe(self) -> str:
        scope, clamp = scope_label(self.scope), clamp_label(self.clamp)
        return f"RFC m={self.order}{scope}{clamp}{self.unit}"


def _ablation(
    order: int = 2, threshold: float | None = None, warmup: int | None = None, **kw: object
) -> CacheMethod:
    """Engine v2's ``RFC(rfe=..., rcs=..., nfc=...)`` as the method it meant."""
    from relcache.caching.methods.budget import Budget
    from relcache.caching.methods.rcs import RCS
    from relcache.caching.methods.rfe import RFE
    from relcache.caching.methods.taylorseer import TaylorSeer

    rfe, rcs = kw.pop("rfe", True), kw.pop("rcs", True)
    for name, value in (("rfe", rfe), ("rcs", rcs)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    same = {"order": order, **({} if warmup is None else {"warmup": warmup})}
    if not rcs:
        if threshold is not None or kw.get("nfc") is not None:
            raise ValueError("threshold / nfc are RCS settings; with rcs=False drop them")
        if kw.pop("scope", None) is not None:
            raise ValueError("scope is an RCS setting; drop it or set rcs=True")
        if rfe:
            return RFE(**same, **kw)
        if kw.get("clamp") is not None:
            raise ValueError("clamp bounds RFE's magnitude; drop it or set rfe=True")
        return TaylorSeer(**same, **kw)
    fixed = [k for k in ("interval", "full_steps", "first") if kw.get(k) is not None]
    if fixed:
        raise ValueError(
            f"RCS schedules full steps itself ({', '.join(fixed)} given); drop "
            "interval/full_steps/first, or pass rcs=False (relcache.RFE) to use a fixed schedule"
        )
    kw = {k: v for k, v in kw.items() if k not in ("interval", "full_steps", "first")}
    if kw.get("nfc") is not None:
        if threshold is not None:
            raise ValueError(
                "pass either threshold= (the paper's RCS) or nfc= (a budget), not both"
            )
        if not rfe:
            raise ValueError("budget mode predicts with RFE; drop rfe=False")
        return Budget(**same, **kw)
    if rfe:  # an RFC instance would be initialised again with these keywords
        raise ValueError(
            "RFC is RFE + RCS: drop rfe=True / rcs=True / nfc=None / steps= (steps is a "
            "budget's, relcache.RFC(nfc=14, steps=50))"
        )
    kw.pop("nfc", None), kw.pop("steps", None)
    if kw.get("clamp") is not None:
        raise ValueError("clamp bounds RFE's magnitude; drop it or set rfe=True")
    return RCS(**same, threshold=threshold, **kw)
