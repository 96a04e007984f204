"""The one method registry: names, knobs and budget rules that every entry point reads (the
Python API, ``relcache demo / bench / generate / flops``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from relcache.caching.methods.base import CacheMethod
from relcache.caching.schedulers import interval_for_nfc


@dataclass(frozen=True)
class Knob:
    """One setting a method may take: its keyword, value type and a help line."""

    name: str
    type: type
    help: str


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
        Knob(
            "first",
            int,
            "fixed schedule: the first refresh step after the warmup (then every "
            "N; default W - 1 + N, TaylorSeer's; W + 1 refreshes early)",
        ),
        Knob(
            "scope",
            str,
            "who decides together under RCS: row (each batch row, the paper) or batch (all rows "
            "of a call: a full step when any row's accumulated error crosses tau)",
        ),
    )
}

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
        """The schedule depends on the data (a threshold or a budget decides it)."""
        return "threshold" in self.knobs or "nfc" in self.knobs

    def make(self, **values: object) -> CacheMethod:
        """The config for these knob values (None = the method's default)."""
        unknown = sorted(set(values) - set(self.knobs))
        if unknown:
            raise ValueError(
                f"{self.name} does not take {', '.join(unknown)}; its knobs are "
                f"{', '.join(self.knobs)}"
            )
        return self.build(**{k: v for k, v in values.items() if v is not None})

    def example(self, **values: object) -> CacheMethod:
        """A valid config with these knobs and placeholders for the schedule's (inspection,
        FLOPs: a step's cost does not depend on the interval or the threshold)."""
        if self.adaptive and "threshold" in self.knobs:
            placeholder = {"threshold": 1.0}
        elif self.adaptive:
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
        if not self.adaptive:
            example = self.example(**values)
            n = interval_for_nfc(target, steps, example.warmup, example.first)  # type: ignore
            return self.make(**values, interval=n), {"interval": n}
        budget_mode = "nfc" in self.knobs and (calibrate is None or "threshold" not in self.knobs)
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
        values[key] = _knob_value(KNOBS[key], text, spec)
    return entry, values


def _knob_value(knob: Knob, text: str, spec: str) -> object:
    """A knob's value from its text in a method spec."""
    try:
        if knob.type is tuple:
            return tuple(int(v) for v in text.split("/"))
        return knob.type(text)
    except ValueError as err:
        raise ValueError(f"{spec!r}: {knob.name} must be a {knob.type.__name__}") from err


def build_method(spec: str, **values: object) -> CacheMethod:
    """``build_method("rfc2", threshold=0.1)``: a config from a method name and knobs."""
    entry, implied = parse_method(spec)
    return entry.make(**{**implied, **values})
