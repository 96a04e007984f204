"""The one method registry: names, knobs and budget rules that every entry point reads (the
Python API, ``relcache demo / bench / generate / flops``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from relcache.caching.methods.base import CacheMethod
from relcache.caching.schedulers import SCOPES, interval_for_nfc
from relcache.caching.units import DTYPES, GRANULARITIES


@dataclass(frozen=True)
class Knob:
    """One setting a method may take: its keyword, value type and a help line."""

    name: str
    type: type
    help: str
    choices: tuple[str, ...] = ()  # the allowed values of a str knob (empty: any)


KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("interval", int, "fixed schedule: one full step every N steps after the warmup"),
        Knob("order", int, "Taylor order m (the paper: 2 for DiT and FLUX, 1 for HunyuanVideo)"),
        Knob("warmup", int, "the first W steps are full (2 for DiT, 3 for FLUX)"),
        Knob("threshold", float, "RCS threshold tau on the accumulated input error"),
        Knob("full_steps", tuple, "explicit schedule, e.g. 0,1,5,9 (replaces the interval)"),
        Knob("nfc", int, "RCS budget mode: exactly this many full steps per sample"),
        Knob("steps", int, "RCS budget mode: the sampler's number of steps (default 50)"),
        Knob("clamp", float, "RFE magnitude within [1/c, c] x the Taylor increment's length"),
        Knob("weight", float, "fixed magnitude weight w on Taylor's increment (1: TaylorSeer)"),
        Knob(
            "first",
            int,
            "fixed schedule: the first refresh step after the warmup (then every "
            "N; default W - 1 + N, TaylorSeer's; W + 1 refreshes early)",
        ),
        Knob(
            "scope",
            str,
            "who decides together under RCS: sample (the default: the CFG branches of a sample "
            "share a schedule, samples stay independent), row (each batch row alone) or batch "
            "(all rows of a call: a full step when any row's accumulated error crosses tau)",
            SCOPES,
        ),
        Knob(
            "granularity",
            str,
            "what one cached unit is: module (each attention / MLP output, the paper), block "
            "(each transformer block's residual) or stack (the whole block stack's residual: "
            "fastest, smallest cache)",
            GRANULARITIES,
        ),
        Knob(
            "factors_dtype",
            str,
            "dtype of the stored Taylor factors (default: the model's dtype for bfloat16 / "
            "float16 models, float32 otherwise; the update runs in float32)",
            tuple(DTYPES),
        ),
    )
}
UNIT_KNOBS = ("granularity", "factors_dtype")  # every method takes them (CacheMethod's fields)

Calibrate = Callable[[Callable[[float], CacheMethod], float], tuple[float, dict]]
"""``calibrate(make, target_nfc) -> (threshold, info)``: finds the threshold for a budget."""


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: how to build it from knobs and how to reach a target NFC."""

    name: str  # lowercase identifier, e.g. "taylorseer"
    label: str  # family label in tables and plots
    build: Callable[..., CacheMethod]  # keyword knobs -> validated config
    knobs: tuple[str, ...]  # the knobs ``build`` takes
    help: str  # one line for --help

    @property
    def adaptive(self) -> bool:
        """The schedule depends on the data (its scheduler says so)."""
        return self.example().adaptive

    def make(self, **values: object) -> CacheMethod:
        """The config for these knob values (None = the method's default)."""
        unknown = sorted(set(values) - set(self.knobs))
        if unknown:
            raise ValueError(
                f"{self.name} does not take {', '.join(unknown)}; its knobs are "
                f"{', '.join(self.knobs)}"
            )
        for key, value in values.items():
            _check_finite(key, value, self.name)
        return self.build(**{k: v for k, v in values.items() if v is not None})

    def with_defaults(self, values: dict, defaults: dict) -> dict:
        """``values`` over ``defaults`` (a model family's knobs for this method, adapters'
        ``defaults``): only knobs it takes, and no default warm-up beside a ``full_steps``."""
        own = {k: v for k, v in defaults.items() if k in self.knobs and k not in values}
        if values.get("full_steps") is not None:
            own.pop("warmup", None)  # an explicit schedule is the whole schedule
        return {**own, **values}

    def example(self, **values: object) -> CacheMethod:
        """A valid config with these knobs and placeholders for the schedule's (inspection,
        FLOPs: a step's cost does not depend on the interval or the threshold)."""
        if "threshold" in self.knobs and values.get("nfc") is None:
            placeholder = {"threshold": 1.0}
        elif "nfc" in self.knobs:
            placeholder = {"nfc": 14, "steps": 50}
        elif "interval" in self.knobs and values.get("full_steps") is None:
            placeholder = {"interval": 4}
        else:
            placeholder = {}
        return self.make(**{**placeholder, **values})

    def for_nfc(
        self,
        target: float,
        steps: int,
        *,
        calibrate: Calibrate | None = None,
        **values: object,
    ) -> tuple[CacheMethod, dict]:
        """The config whose NFC is ``target`` at ``steps`` steps, and how it was found (§4).

        Fixed schedules take the interval with the closest NFC (ties: the smaller interval).
        Adaptive ones take the budget itself where they can (``nfc`` knob: exact, no
        calibration) unless a ``calibrate`` function is given for their threshold (the paper's
        protocol) or they have no budget mode.
        """
        if not 1 <= target <= steps:
            raise ValueError(
                f"a budget of NFC {target:g} is impossible at {steps} steps: pass 1 <= NFC <= "
                f"{steps} (or raise the step count)"
            )
        if values.get("full_steps") is not None:
            raise ValueError(
                "full_steps is already the whole schedule; drop it to meet an NFC budget, or "
                "drop the budget"
            )
        budget_mode = "nfc" in self.knobs and (calibrate is None or "threshold" not in self.knobs)
        self._check_budget_knobs(values, budget_mode)
        if not self.adaptive:
            return self._fixed_for_nfc(target, steps, values)
        if budget_mode:
            nfc = round(target)
            return self.make(**values, nfc=nfc, steps=steps), {"nfc": nfc}
        if calibrate is None:
            raise ValueError(
                f"{self.name} decides its full steps from the data: reaching NFC {target:g} "
                "needs a calibrated threshold (relcache bench / demo calibrate it); pass "
                "threshold= instead"
            )
        tau, info = calibrate(lambda t: self.make(**values, threshold=t), target)
        return self.make(**values, threshold=tau), {"threshold": tau, **info}

    def _check_budget_knobs(self, values: dict[str, object], budget_mode: bool) -> None:
        """Refuse knobs that a budget would set itself (two answers to one question)."""
        if not self.adaptive:
            own = ("interval",)
        else:
            own = ("nfc", "steps") if budget_mode else ("threshold",)
        given = [k for k in own if values.get(k) is not None]
        if given:
            raise ValueError(
                f"{self.name}: an NFC budget sets {', '.join(given)} itself; drop "
                f"{', '.join(f'{k}=' for k in given)} or the budget"
            )

    def _fixed_for_nfc(
        self, target: float, steps: int, values: dict[str, object]
    ) -> tuple[CacheMethod, dict]:
        """A fixed schedule's interval for ``target``; a target below its fewest full steps
        (an interval of ``steps``: the warmup only) is refused."""
        example = self.example(**values)
        fewest = len(self.make(**values, interval=steps).schedule(steps) or ())
        if target < fewest:
            why = f"warmup={example.warmup}"  # type: ignore[attr-defined]
            why += "" if example.first is None else f", first={example.first}"  # type: ignore
            raise ValueError(
                f"{self.name} cannot run NFC {target:g} at {steps} steps: its fixed schedule "
                f"has at least {fewest} full steps ({why}); pass NFC >= {fewest}"
            )
        n = interval_for_nfc(target, steps, example.warmup, example.first)  # type: ignore
        return self.make(**values, interval=n), {"interval": n}


METHODS: dict[str, MethodEntry] = {}


def register_method(entry: MethodEntry) -> MethodEntry:
    """Add ``entry`` to ``METHODS``; names are unique lowercase identifiers without digits at
    the end (a trailing number selects the order, see :func:`parse_method`)."""
    if not re.fullmatch(r"[a-z][a-z_+-]*[a-z_+-]|[a-z]", entry.name):
        raise ValueError(
            f"method names are lowercase letters (no trailing digits), got {entry.name!r}"
        )
    if entry.name in METHODS or entry.name in ("none", "full"):
        raise ValueError(f"method {entry.name!r} is already registered")
    entry = replace(entry, knobs=(*entry.knobs, *(k for k in UNIT_KNOBS if k not in entry.knobs)))
    unknown = [k for k in entry.knobs if k not in KNOBS]
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown}; knobs are {', '.join(KNOBS)}")
    METHODS[entry.name] = entry
    return entry


def parse_method(spec: str) -> tuple[MethodEntry, dict[str, object]]:
    """``"taylorseer"``, ``"rfc2"`` (a trailing number is the order) or ``"rfc2:scope=batch"``
    (knob values after colons) -> (entry, knob values)."""
    head, *assignments = spec.strip().lower().split(":")
    m = re.fullmatch(r"(.*?)(\d*)", head)
    name, digits = m.group(1), m.group(2)
    if name not in METHODS:
        raise ValueError(
            f"unknown method {spec!r}; choose from {', '.join(METHODS)} (a trailing number "
            "sets the order, e.g. taylorseer1, rfc2)"
        )
    entry = METHODS[name]
    if digits and "order" not in entry.knobs:
        raise ValueError(f"{name} has no order to set; use {name!r} without a number")
    values: dict[str, object] = {"order": int(digits)} if digits else {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or key not in entry.knobs:
            raise ValueError(
                f"{spec!r}: expected name:knob=value with a knob of {name} "
                f"({', '.join(entry.knobs)}), got {item!r}"
            )
        if key in values:
            was = f"the trailing {digits}" if key == "order" and digits else f"{key}={values[key]}"
            raise ValueError(f"{spec!r} sets {key} twice ({was} and {item}); keep one")
        values[key] = _knob_value(KNOBS[key], text, spec)
    return entry, values


def merge_knobs(spec: str, implied: dict[str, object], given: dict[str, object]) -> dict:
    """The spec's knob values and the ones given beside it (keywords, flags); a knob set by
    both is refused, not silently overridden."""
    both = [k for k in given if k in implied and given[k] is not None]
    if both:
        raise ValueError(
            f"{spec!r} already sets {', '.join(f'{k}={implied[k]}' for k in both)}; set "
            f"{', '.join(both)} in the method name or beside it, not both"
        )
    return {**implied, **given}


def _check_finite(key: str, value: object, method: str) -> None:
    """A float knob must be a finite number (nan and inf pass most range checks)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{method}: {key} must be a finite number, got {value}")


def _knob_value(knob: Knob, text: str, spec: str) -> object:
    """A knob's value from its text in a method spec."""
    try:
        value = tuple(int(v) for v in text.split("/")) if knob.type is tuple else knob.type(text)
    except ValueError as err:
        raise ValueError(f"{spec!r}: {knob.name} must be a {knob.type.__name__}") from err
    if knob.choices and value not in knob.choices:
        raise ValueError(f"{spec!r}: {knob.name} must be one of {', '.join(knob.choices)}")
    _check_finite(knob.name, value, repr(spec))
    return value


def build_method(spec: str, **values: object) -> CacheMethod:
    """``build_method("rfc2", threshold=0.1)``: a config from a method name and knobs."""
    entry, implied = parse_method(spec)
    return entry.make(**merge_knobs(spec, implied, values))
