"""From (method name, NFC budget) to a config: the bench's methods, intervals and calibration.

Fixed-schedule methods take the interval whose NFC is closest to the budget (``interval_for_nfc``
of the methods' schedulers; ties go to the smallest N); RCS methods take the threshold whose mean
NFC matches it, bisected on calibration images (the paper's protocol, §3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relcache.caching.methods import (
    FORA,
    RECOMMENDED,
    RFC,
    CacheMethod,
    MethodEntry,
    TaylorSeer,
    interval_for_nfc,
    parse_method,
)

__all__ = [
    "DEFAULT_METHODS",
    "FITTED",
    "TAU_RANGE",
    "WARMUP",
    "BenchMethod",
    "analysis_configs",
    "bench_method",
    "calibrate_threshold",
    "config_for_budget",
    "diagnosis_configs",
    "interval_for_nfc",
]

WARMUP = 2  # DiT's official warmup; every bench method uses it
TAU_RANGE = (1e-3, 10.0)  # where the threshold search starts
# the paper's comparison: FORA, TaylorSeer and RFC at m = 1, 2, and its ablations at m = 1
DEFAULT_METHODS = ("fora", "taylorseer1", "taylorseer2", "rfc1", "rfc2", "rfe1", "rcs1")
FITTED = ":fitted"  # bench-only suffix: a fixed-schedule method on the schedule fitted per budget


@dataclass(frozen=True)
class BenchMethod:
    """A bench method name (``"rfc2"``): its registry entry and the knobs the name implies."""

    name: str
    entry: MethodEntry
    knobs: dict
    fitted: bool = False  # on the model's fitted profile for each budget (``name:fitted``)

    @property
    def adaptive(self) -> bool:
        """RCS: calibrate a threshold to the budget; else a fixed interval."""
        return self.entry.adaptive

    @property
    def family(self) -> str:
        """Legend label across budgets, e.g. "TaylorSeer m=2", "RFC m=2 scope=row"."""
        if "order" not in self.entry.knobs:
            return self.entry.label
        example = self.entry.example(**self.knobs)
        scope = getattr(example, "scope", "sample")
        extra = "" if scope == "sample" else f" scope={scope}"
        extra += " fitted" if self.fitted else ""
        return f"{self.entry.label} m={example.order}{extra}{example.unit}"


def bench_method(name: str) -> BenchMethod:
    """The bench method ``name`` (registry name, optional trailing order, optional ``:fitted``;
    ValueError lists the registered methods)."""
    fitted = name.endswith(FITTED)
    entry, knobs = parse_method(name.removesuffix(FITTED))
    if "warmup" in knobs:
        raise ValueError(
            f"bench method {name!r} sets warmup, but every bench method uses warmup={WARMUP} "
            "(the budgets are matched over the same warmup); drop warmup="
        )
    if fitted and ("full_steps" not in entry.knobs or {"interval", "first"} & set(knobs)):
        raise ValueError(
            f"bench method {name!r}: ':fitted' runs a fixed-schedule method (taylorseer2, rfe2, "
            "fora) on the schedule fitted for each budget, without interval= or first="
        )
    return BenchMethod(name, entry, knobs if fitted else {**knobs, "warmup": WARMUP}, fitted)


def calibrate_threshold(
    measure: Callable[[float], float],
    target_nfc: float,
    *,
    low: float = TAU_RANGE[0],
    high: float = TAU_RANGE[1],
    tolerance: float = 0.25,
    max_iter: int = 14,
) -> tuple[float, float]:
    """Bisect tau in log space; NFC does not increase with tau. Returns (tau, its NFC).

    ``measure(tau)`` runs the method and returns the mean NFC. Stops once within
    ``tolerance`` of the target, else returns the closest threshold seen.
    """
    if target_nfc <= 0:
        raise ValueError(f"target NFC must be positive, got {target_nfc}")
    best: tuple[float, float] | None = None
    lo, hi = math.log(low), math.log(high)
    for _ in range(max_iter):
        tau = math.exp((lo + hi) / 2)
        nfc = measure(tau)
        if best is None or abs(nfc - target_nfc) < abs(best[1] - target_nfc):
            best = (tau, nfc)
        if abs(nfc - target_nfc) <= tolerance:
            break
        if nfc > target_nfc:
            lo = math.log(tau)  # too many full steps: raise the threshold
        else:
            hi = math.log(tau)
    assert best is not None
    return best


def config_for_budget(
    name: str,
    budget: int,
    steps: int,
    measure_nfc: Callable[[CacheMethod], float],
    *,
    bracket: tuple[float, float] = TAU_RANGE,
    fitted_steps: Callable[[int], Sequence[int]] | None = None,
) -> tuple[CacheMethod, dict]:
    """Bench method ``name`` at ``budget``, and how it was chosen (interval, threshold or the
    fitted schedule).

    The registry's ``for_nfc`` picks the interval; for RCS methods this module's calibration
    finds the threshold: ``measure_nfc(config)`` gives the mean NFC on the calibration images;
    ``name:fitted`` takes ``fitted_steps(budget)``, the full steps fitted for the model.
    """
    spec = bench_method(name)
    if spec.fitted:
        if fitted_steps is None:
            raise ValueError(f"{name!r} needs the model's fitted schedules (fitted_steps=)")
        full = tuple(fitted_steps(budget))
        return spec.entry.make(**spec.knobs, full_steps=full), {"full_steps": list(full)}

    def calibrate(make: Callable[[float], CacheMethod], target: float) -> tuple[float, dict]:
        tau, cal_nfc = calibrate_threshold(
            lambda t: measure_nfc(make(t)), target, low=bracket[0], high=bracket[1]
        )
        return tau, {"calibration_nfc": cal_nfc}

    return spec.entry.for_nfc(budget, steps, calibrate=calibrate, **spec.knobs)


def analysis_configs(budget: int, steps: int, tau: float) -> tuple[int, dict[str, CacheMethod]]:
    """The prediction-error analysis' methods at ``budget`` (m = 2; RFC at threshold ``tau``)."""
    n = interval_for_nfc(budget, steps, WARMUP)
    return n, {
        f"FORA N={n}": FORA(interval=n),
        f"TaylorSeer N={n} m=2": TaylorSeer(interval=n, order=2),
        f"+RFE N={n} m=2": RFC(order=2, rcs=False, interval=n),
        f"RFC m=2 tau={tau:.3g}": RFC(order=2, threshold=tau),
    }


def diagnosis_configs(budget: int, steps: int, tau: float) -> dict[str, CacheMethod]:
    """The diagnosis' methods: the prediction-error analysis' and the recommended configuration."""
    entry, values = parse_method(RECOMMENDED)
    recommended = entry.for_nfc(budget, steps, **values)[0]
    configs = analysis_configs(budget, steps, tau)[1]
    return {**configs, f"recommended ({recommended.describe()})": recommended}
