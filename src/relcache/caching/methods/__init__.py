"""The caching methods: one file per method (its config) plus one entry below in the registry.

A method is a frozen config that makes a scheduler (schedulers.py) and a predictor
(predictors.py) per branch; the registry says which knobs it takes and how to meet a budget.
"""

from __future__ import annotations

from relcache.caching.methods.base import CacheMethod, Composed
from relcache.caching.methods.fora import FORA
from relcache.caching.methods.registry import (
    KNOBS,
    METHODS,
    Knob,
    MethodEntry,
    build_method,
    parse_method,
    register_method,
)
from relcache.caching.methods.rfc import RFC
from relcache.caching.methods.taylorseer import TaylorSeer
from relcache.caching.schedulers import fixed_schedule, interval_for_nfc

FIXED = ("interval", "warmup", "full_steps")
for _entry in (
    MethodEntry("fora", "FORA", FORA, FIXED, "reuse the last full output (TaylorSeer, m = 0)"),
    MethodEntry("taylorseer", "TaylorSeer", TaylorSeer, ("order", *FIXED), "Taylor extrapolation"),
    MethodEntry(
        "rfc",
        "RFC",
        RFC,
        ("order", "threshold", "warmup", "scope"),
        "RFE prediction + RCS schedule",
    ),
    MethodEntry(
        "rfe",
        "+RFE",
        lambda **kw: RFC(rcs=False, **kw),
        ("order", *FIXED),
        "the paper's +RFE ablation: RFE on TaylorSeer's fixed schedule",
    ),
    MethodEntry(
        "rcs",
        "+RCS",
        lambda **kw: RFC(rfe=False, **kw),
        ("order", "threshold", "warmup", "scope"),
        "the paper's +RCS ablation: Taylor prediction on the RCS schedule",
    ),
):
    register_method(_entry)

__all__ = [
    "FORA",
    "KNOBS",
    "METHODS",
    "RFC",
    "CacheMethod",
    "Composed",
    "Knob",
    "MethodEntry",
    "TaylorSeer",
    "build_method",
    "fixed_schedule",
    "interval_for_nfc",
    "parse_method",
    "register_method",
]
