"""TaylorSeer: extrapolate each module's output with a Taylor series over steps (§2)."""

from __future__ import annotations

from dataclasses import dataclass

from relcache.caching.methods.base import (
    CacheMethod,
    check_full_steps,
    check_positive_int,
    fixed_schedule_is_full,
)


def check_order(order: object, minimum: int = 0) -> None:
    """The Taylor order m must be an integer >= ``minimum``."""
    if isinstance(order, bool) or not isinstance(order, int) or order < minimum:
        raise ValueError(
            f"order must be an integer >= {minimum}, got {order!r}; the paper uses 2 for DiT "
            "and FLUX, 1 for HunyuanVideo"
        )


@dataclass(frozen=True)
class TaylorSeer(CacheMethod):
    """Full step every ``interval`` steps after ``warmup``; cached steps predict
    sum_r f_r k^r / r! with orders up to ``order`` (or use an explicit ``full_steps`` list)."""

    interval: int = 4
    order: int = 2  # type: ignore[assignment]
    warmup: int = 2
    full_steps: tuple[int, ...] | None = None

    name = "taylorseer"

    def __post_init__(self) -> None:
        if self.full_steps is not None:
            object.__setattr__(self, "full_steps", tuple(self.full_steps))
        check_order(self.order)
        check_positive_int("interval", self.interval, "use 1 for full compute, 4 for NFC 14/50")
        check_positive_int("warmup", self.warmup, "the official value is 2 for DiT, 3 for FLUX")
        check_full_steps(self.full_steps)

    @property
    def warmup_steps(self) -> int:
        return self.warmup

    def is_full(self, step: int) -> bool:
        if self.full_steps is not None:
            return step in self.full_steps
        return fixed_schedule_is_full(step, self.interval, self.warmup)

    def describe(self) -> str:
        sched = "" if self.full_steps is not None else f" N={self.interval}"
        return f"TaylorSeer{sched} m={self.order}"
