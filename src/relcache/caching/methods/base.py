"""What every caching method is: a frozen, validated config that makes, per branch, a scheduler
(which steps run fully) and a predictor (what cached steps return)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from relcache.caching.predictors import Predictor
from relcache.caching.schedulers import SCOPES, ExplicitSchedule, FixedSchedule, Scheduler
from relcache.caching.units import check_granularity, unit_label

MAX_ORDER = 20  # k^r / r! must fit the integer arithmetic of the coefficients


def check_positive_int(name: str, value: object, hint: str) -> None:
    """Raise a ValueError that says how to fix a non-positive or non-integer setting."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}; {hint}")


def check_order(order: object, minimum: int = 0) -> None:
    """The Taylor order m must be an integer >= ``minimum``."""
    if isinstance(order, bool) or not isinstance(order, int) or order < minimum:
        raise ValueError(
            f"order must be an integer >= {minimum}, got {order!r}; the paper uses 2 for DiT "
            "and FLUX, 1 for HunyuanVideo"
        )
    if order > MAX_ORDER:
        raise ValueError(
            f"order must be <= {MAX_ORDER}, got {order}: r! overflows the coefficients beyond "
            "that (and orders above 3 only amplify noise); use 1 or 2"
        )


def check_bool(name: str, value: object) -> None:
    """A switch must be a real bool (a truthy string such as "no" would turn it on)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def as_full_steps(full_steps: object) -> tuple[int, ...] | None:
    """``full_steps`` as a validated tuple (None stays None); see :func:`check_full_steps`."""
    if full_steps is None:
        return None
    if isinstance(full_steps, (str, bytes)) or not hasattr(full_steps, "__iter__"):
        raise ValueError(
            f"full_steps must be a list of step indices such as [0, 1, 5, 9], got {full_steps!r}"
        )
    steps = tuple(full_steps)
    check_full_steps(steps)
    return tuple(operator.index(s) for s in steps)


def check_full_steps(full_steps: tuple[int, ...] | None) -> None:
    """An explicit schedule must be sorted, unique, non-negative and start at step 0."""
    if full_steps is None:
        return
    steps = list(full_steps)
    if any(isinstance(s, bool) or not hasattr(type(s), "__index__") for s in steps):
        raise ValueError(f"full_steps must hold integers such as [0, 1, 5, 9], got {steps!r}")
    steps = [operator.index(s) for s in steps]
    if not steps or steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(
            f"full_steps must be a strictly increasing list of step indices starting at 0 "
            f"(step 0 has nothing cached yet), got {steps!r}"
        )


def check_schedule_knobs(interval: object, warmup: object, full_steps: object) -> None:
    """An explicit ``full_steps`` replaces the fixed schedule: ``interval`` and ``warmup``
    would be ignored, so giving them too is an error."""
    if full_steps is None:
        return
    given = [k for k, v in (("interval", interval), ("warmup", warmup)) if v is not None]
    if given:
        raise ValueError(
            f"full_steps={list(full_steps)!r} is the whole schedule, so {' and '.join(given)} "
            f"would be ignored; drop {', '.join(given)} or drop full_steps"
        )


def fixed_or_explicit(
    interval: int | None,
    warmup: int | None,
    full_steps: tuple[int, ...] | None,
    first: int | None = None,
):
    """The scheduler of a non-adaptive method: the explicit list if given, else TaylorSeer's."""
    if full_steps is not None:
        return ExplicitSchedule(full_steps)
    return FixedSchedule(interval, warmup, first)


def check_first(first: object, full_steps: object) -> None:
    """``first`` (the first refresh step of a fixed schedule) is a positive step index."""
    if first is None:
        return
    if full_steps is not None:
        raise ValueError("first= shifts the fixed schedule; with full_steps= drop it")
    check_positive_int("first", first, "e.g. 3: the first refresh one step after a 2-step warmup")


def check_rfe_warmup(warmup: object) -> None:
    """RFE measures s between two full steps, so its warm-up has at least two."""
    check_positive_int("warmup", warmup, "RFE needs warmup >= 2")
    if warmup < 2:
        raise ValueError(
            f"warmup must be >= 2 with RFE (it needs two full steps to measure s), got "
            f"{warmup}; use warmup=2 for DiT, 3 for FLUX"
        )


def check_rfe_full_steps(full_steps: tuple[int, ...] | None) -> None:
    """An explicit schedule for RFE starts with two full steps (to measure s)."""
    if full_steps is not None and full_steps[:2] != (0, 1):
        raise ValueError(
            f"RFE needs two full steps before the first cached one (to measure s), so "
            f"full_steps must start 0, 1, got {list(full_steps)!r}; e.g. "
            f"{[0, 1, *[s for s in full_steps if s > 1]]!r}, or TaylorSeer"
        )


def check_clamp(clamp: object) -> None:
    """RFE's magnitude bound c >= 1 (None: unbounded)."""
    if clamp is None:
        return
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not clamp >= 1:
        raise ValueError(f"clamp must be a number >= 1 (e.g. 1.1), got {clamp!r}")


def check_threshold(threshold: object) -> None:
    """RCS's threshold tau > 0."""
    t = threshold
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise ValueError(
            f"RCS needs a threshold > 0, got {t!r}; pass e.g. threshold=0.5, or find the one "
            "matching a target NFC with relcache.METHODS['rfc'].for_nfc(nfc, steps, "
            "calibrate=fn), where fn(make, nfc) returns (threshold, info) (relcache bench and "
            "demo do this), or ask for a budget: relcache.RFC(nfc=14, steps=50)"
        )


def check_scope(scope: object) -> None:
    """Who decides together under RCS."""
    if scope not in SCOPES:
        raise ValueError(
            f"scope must be one of {', '.join(SCOPES)}, got {scope!r}: 'row' decides per "
            "batch row (the paper), 'sample' the CFG branches of a sample together, 'batch' "
            "all rows of a call together"
        )


def check_budget(nfc: object, steps: object, warmup: int) -> None:
    """A budget of ``nfc`` full steps per sample over ``steps`` steps."""
    check_positive_int("steps", steps, "the sampler's number of steps, e.g. 50")
    if isinstance(nfc, bool) or not isinstance(nfc, int):
        raise ValueError(f"nfc must be an integer number of full steps, got {nfc!r}")
    if not warmup <= nfc <= steps:
        raise ValueError(
            f"nfc must lie between the {warmup} warm-up steps and steps={steps}, got {nfc}"
        )


def scope_label(scope: str) -> str:
    """A non-default scope in a method's label."""
    return "" if scope == "sample" else f" {scope}"


def clamp_label(clamp: float | None) -> str:
    """A clamp in a method's label."""
    return "" if clamp is None else f" clamp {clamp:g}"


def check_method(config: object) -> None:
    """What relcache.apply caches with must be a method config."""
    if not isinstance(config, CacheMethod):
        raise TypeError(
            f"config must be a relcache method, a relcache.CacheMethod (see relcache.METHODS), "
            f"got {type(config).__name__}"
        )


@dataclass(frozen=True)
class CacheMethod:
    """Base config: subclasses are frozen dataclasses validated in ``__post_init__`` (which
    calls this one). Every method takes the unit it predicts and the factors' dtype."""

    name: ClassVar[str] = "base"
    granularity: str = field(default="module", kw_only=True)  # module / block / stack (units.py)
    factors_dtype: str | None = field(default=None, kw_only=True)  # None: the model's half dtype

    def __post_init__(self) -> None:
        check_granularity(self.granularity, self.factors_dtype)

    @property
    def unit(self) -> str:
        """The granularity and factor dtype in a label ("" for the defaults)."""
        return unit_label(self.granularity, self.factors_dtype)

    def scheduler(self) -> Scheduler:
        """A fresh scheduler for one branch (trajectory)."""
        raise NotImplementedError

    def predictor(self) -> Predictor:
        """A fresh predictor for one branch (trajectory)."""
        raise NotImplementedError

    @property
    def adaptive(self) -> bool:
        """Whether the full steps depend on the data (then ``schedule`` is None)."""
        return self.scheduler().adaptive

    def schedule(self, steps: int) -> list[int] | None:
        """The full steps of a ``steps``-step trajectory, or None if adaptive."""
        return self.scheduler().schedule(steps)

    def with_full_steps(self, full_steps: tuple[int, ...]) -> CacheMethod:
        """The same predictor on an explicit schedule (used to count a cached step's FLOPs)."""
        steps = tuple(full_steps)
        return Composed(
            lambda: ExplicitSchedule(steps),
            self.predictor,
            f"{self.describe()}",
            granularity=self.granularity,
            factors_dtype=self.factors_dtype,
        )

    def cost_key(self) -> tuple:
        """What a step's FLOPs depend on: the predictor's kind and order, and adaptivity."""
        p = self.predictor()
        return type(p).__name__, getattr(p, "order", None), self.adaptive, self.granularity

    def describe(self) -> str:
        """Short human-readable label used in tables and plots."""
        return self.name


@dataclass(frozen=True)
class Composed(CacheMethod):
    """A method assembled from a scheduler and a predictor factory (probes, experiments)."""

    make_scheduler: Callable[[], Scheduler]
    make_predictor: Callable[[], Predictor]
    label: str = "composed"

    name = "composed"

    def scheduler(self) -> Scheduler:
        return self.make_scheduler()

    def predictor(self) -> Predictor:
        return self.make_predictor()

    def describe(self) -> str:
        return self.label
