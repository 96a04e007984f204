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


_LAZY = {  # name -> the evaluation module it is loaded from on first use
    "fit_schedule": "relcache.evaluation.fitting",
    "plan": "relcache.evaluation.memory_plan",
}


def __getattr__(name: str) -> object:
    """``relcache.fit_schedule`` (``evaluation/fitting.py``: it runs generations) and
    ``relcache.plan`` (``evaluation/memory_plan.py``: a memory plan on the meta device), loaded
    on first use so that ``import relcache`` loads no evaluation code."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
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
    "plan",
    "recommended",
    "register_method",
    "remove",
    "reset",
    "stats",
]
