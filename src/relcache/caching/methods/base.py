"""What every caching method declares: its schedule and how cached outputs are predicted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


def fixed_schedule_is_full(step: int, interval: int, warmup: int) -> bool:
    """Official TaylorSeer/FORA schedule (§2): full if i < W or (i - (W-1)) mod N == 0."""
    return step < warmup or (step - (warmup - 1)) % interval == 0


def fixed_schedule(steps: int, interval: int, warmup: int) -> list[int]:
    """All full steps of the fixed schedule over ``steps`` steps; NFC = its length."""
    return [i for i in range(steps) if fixed_schedule_is_full(i, interval, warmup)]


def check_positive_int(name: str, value: object, hint: str) -> None:
    """Raise a ValueError that says how to fix a non-positive or non-integer setting."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}; {hint}")


def check_full_steps(full_steps: tuple[int, ...] | None) -> None:
    """An explicit schedule must be sorted, unique, non-negative and start at step 0."""
    if full_steps is None:
        return
    steps = list(full_steps)
    if not steps or steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(
            f"full_steps must be a strictly increasing list of step indices starting at 0 "
            f"(step 0 has nothing cached yet), got {steps!r}"
        )
    if any(isinstance(s, bool) or not isinstance(s, int) for s in steps):
        raise ValueError(f"full_steps must hold integers, got {steps!r}")


@dataclass(frozen=True)
class CacheMethod:
    """Base config: subclasses are frozen dataclasses validated in ``__post_init__``."""

    name: ClassVar[str] = "base"
    relational: ClassVar[bool] = False  # RFE magnitude (§3) instead of the plain Taylor sum

    @property
    def order(self) -> int:
        """Highest Taylor order m kept per module."""
        raise NotImplementedError

    @property
    def warmup_steps(self) -> int:
        """Steps that are always full at the start of a trajectory."""
        raise NotImplementedError

    @property
    def threshold(self) -> float | None:
        """RCS threshold tau, or None for a fixed schedule."""
        return None

    def is_full(self, step: int) -> bool | None:
        """Whether ``step`` is full; None when RCS decides it from the first module's input."""
        raise NotImplementedError

    def schedule(self, steps: int) -> list[int] | None:
        """The full steps of a ``steps``-step trajectory, or None if adaptive."""
        if self.threshold is not None:
            return None
        return [i for i in range(steps) if self.is_full(i)]

    def describe(self) -> str:
        """Short human-readable label used in tables and plots."""
        return self.name
