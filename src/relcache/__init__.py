"""relcache: relational feature caching (RFC, ICLR 2026) for diffusion transformers.

import relcache
relcache.apply(model_or_pipeline, relcache.RFC(order=2, threshold=0.5))

Packages: ``caching`` (the math, schedulers, predictors, methods and their registry, the engine,
FLOPs accounting), ``adapters`` (which modules each model family caches), ``models`` (the
reference DiT), ``sampling`` (DDIM, CFG), ``shipped`` (the models that ship with the package, their
training and loading), ``evaluation`` (the demo and bench harness), ``commands`` (the CLI).
"""

from relcache.api import (
    apply,
    at_step,
    cache_context,
    cached,
    compile,
    generation,
    is_applied,
    method_for,
    observe,
    remove,
    reset,
    stats,
)
from relcache.caching.methods import (
    FORA,
    METHODS,
    RCS,
    RFC,
    RFE,
    Budget,
    CacheMethod,
    Profile,
    TaylorSeer,
    build_method,
    from_profile,
    load_profile,
    recommended,
    register_method,
)
from relcache.caching.parallel import Parallel
from relcache.caching.stats import CacheStats

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``relcache.fit_schedule``: loaded on first use from ``evaluation/fitting.py`` (it runs
    generations, so it lives in evaluation; ``import relcache`` stays light)."""
    if name == "fit_schedule":
        import importlib

        return importlib.import_module("relcache.evaluation.fitting").fit_schedule
    raise AttributeError(f"module 'relcache' has no attribute {name!r}")


__all__ = [
    "FORA",
    "METHODS",
    "Parallel",
    "Profile",
    "RCS",
    "RFC",
    "RFE",
    "Budget",
    "CacheMethod",
    "CacheStats",
    "TaylorSeer",
    "apply",
    "at_step",
    "build_method",
    "cache_context",
    "cached",
    "compile",
    "fit_schedule",
    "from_profile",
    "generation",
    "is_applied",
    "method_for",
    "load_profile",
    "observe",
    "recommended",
    "register_method",
    "remove",
    "reset",
    "stats",
]
