"""relcache: relational feature caching (RFC, ICLR 2026) for diffusion transformers.

import relcache
relcache.apply(model_or_pipeline, relcache.RFC(order=2, threshold=0.5))
"""

from relcache.api import apply, cache_context, cached, is_applied, observe, remove, reset, stats
from relcache.caching.engine import CacheStats
from relcache.caching.methods import FORA, METHODS, RFC, CacheMethod, TaylorSeer

__version__ = "0.1.0"

__all__ = [
    "FORA",
    "METHODS",
    "RFC",
    "CacheMethod",
    "CacheStats",
    "TaylorSeer",
    "apply",
    "cache_context",
    "cached",
    "is_applied",
    "observe",
    "remove",
    "reset",
    "stats",
]
