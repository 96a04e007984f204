"""FORA: reuse the last full-step output (TaylorSeer's schedule with order 0, §2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from relcache.caching.methods.taylorseer import TaylorSeer


@dataclass(frozen=True)
class FORA(TaylorSeer):
    """Full step every ``interval`` steps after ``warmup`` full steps; cached steps reuse."""

    order: int = field(default=0, init=False)

    name = "fora"

    def describe(self) -> str:
        if self.full_steps is not None:
            return "FORA"
        first = "" if self.first is None else f" first {self.first}"
        return f"FORA N={self.interval}{first}{self.unit}"
