"""Registry of caching methods: a new method is one file here plus one entry below."""

from __future__ import annotations

from relcache.caching.methods.base import CacheMethod, fixed_schedule
from relcache.caching.methods.fora import FORA
from relcache.caching.methods.rfc import RFC
from relcache.caching.methods.taylorseer import TaylorSeer

METHODS: dict[str, type[CacheMethod]] = {"fora": FORA, "taylorseer": TaylorSeer, "rfc": RFC}

__all__ = ["METHODS", "CacheMethod", "FORA", "RFC", "TaylorSeer", "fixed_schedule"]
