"""The caching methods: one file per method (its config) plus one entry below in the registry.

A method is a frozen config that makes a scheduler (schedulers.py) and a predictor
(predictors.py) per branch; the registry says which knobs it takes and how to meet a budget.
"""

from __future__ import annotations

from torch import nn

from relcache.caching.methods.base import CacheMethod, Composed
from relcache.caching.methods.budget import Budget
from relcache.caching.methods.fora import FORA
from relcache.caching.methods.profile import (
    Profile,
    find_profile,
    from_profile,
    load_profile,
    save_profile,
    shipped_profiles,
    weights_hash,
)
from relcache.caching.methods.rcs import RCS
from relcache.caching.methods.rcs_all import RCSAll
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
from relcache.caching.methods.rfe import RFE
from relcache.caching.methods.taylorseer import TaylorSeer
from relcache.caching.methods.weighted import FixedWeight
from relcache.caching.schedulers import fixed_schedule, interval_for_nfc

FIXED = ("interval", "warmup", "full_steps", "first")
for _entry in (
    MethodEntry("fora", "FORA", FORA, FIXED, "reuse the last full output (TaylorSeer, m = 0)"),
    MethodEntry("taylorseer", "TaylorSeer", TaylorSeer, ("order", *FIXED), "Taylor extrapolation"),
    MethodEntry(
        "rfc",
        "RFC",
        RFC,
        ("order", "threshold", "nfc", "steps", "warmup", "scope", "clamp"),
        "RFE prediction + RCS schedule (the paper: threshold; or an exact budget: nfc)",
    ),
    MethodEntry(
        "rfe",
        "+RFE",
        RFE,
        ("order", *FIXED, "clamp"),
        "the paper's +RFE ablation: RFE on TaylorSeer's fixed schedule",
    ),
    MethodEntry(
        "rcs",
        "+RCS",
        RCS,
        ("order", "threshold", "warmup", "scope"),
        "the paper's +RCS ablation: Taylor prediction on the RCS schedule",
    ),
    MethodEntry(
        "budget",
        "RFC budget",
        Budget,
        ("order", "nfc", "steps", "warmup", "scope", "clamp"),
        "RFC with an exact budget of full steps per sample instead of a threshold",
    ),
    MethodEntry(
        "weighted",
        "Fixed w",
        FixedWeight,
        ("order", "weight", *FIXED),
        "the paper's ablation of RFE: Taylor's increment scaled by a fixed weight w",
    ),
    MethodEntry(
        "rcsall",
        "+RCS all",
        RCSAll,
        ("order", "threshold", "warmup", "scope"),
        "the paper's ablation of RCS: the error of every cached module's input, not the first's",
    ),
):
    register_method(_entry)

# relcache's recommended configuration (README "What to use"): RFE's relational magnitude, trusted
# within 5% of the Taylor increment's length, on TaylorSeer's fixed schedule. Chosen on calibration
# seeds (10000+, 20000+), reported on others: benchmarks/README.md.
RECOMMENDED = "rfe2:clamp=1.05"


def recommended(
    nfc: float, steps: int = 50, *, model: nn.Module | None = None, cfg_scale: float | None = None
) -> CacheMethod:
    """The recommended configuration for a budget of ``nfc`` full steps out of ``steps``.

    With ``model``: the shipped profile fitted on these weights for this budget and step count
    (and ``cfg_scale``, when given) when one exists (``profile.shipped_profiles()``: the shipped
    DiT-FM at NFC 8 and 14, 50 steps, CFG 3), else the rule above."""
    if model is not None:
        fitted = find_profile(model, nfc, steps, cfg_scale)
        if fitted is not None:
            return fitted.method()
    entry, values = parse_method(RECOMMENDED)
    return entry.for_nfc(nfc, steps, **values)[0]


__all__ = [
    "FORA",
    "RCS",
    "RCSAll",
    "RFE",
    "Budget",
    "KNOBS",
    "METHODS",
    "RFC",
    "CacheMethod",
    "FixedWeight",
    "Composed",
    "Knob",
    "MethodEntry",
    "RECOMMENDED",
    "TaylorSeer",
    "build_method",
    "fixed_schedule",
    "interval_for_nfc",
    "parse_method",
    "Profile",
    "find_profile",
    "from_profile",
    "load_profile",
    "recommended",
    "save_profile",
    "shipped_profiles",
    "weights_hash",
    "register_method",
]
