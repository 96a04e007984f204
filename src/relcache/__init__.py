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
    TaylorSeer,
    build_method,
    recommended,
    register_method,
)
from relcache.caching.parallel import Parallel
from relcache.caching.stats import CacheStats

__version__ = "0.1.0"

__all__ = [
    "FORA",
    "METHODS",
    "Parallel",
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
    "generation",
    "is_applied",
    "observe",
    "recommended",
    "register_method",
    "remove",
    "reset",
    "stats",
]
