"""Fixed magnitude weight: TaylorSeer's increment scaled by a constant w instead of RFE's
s * ||dI|| / ||D|| (the paper's ablation, RFC_SPEC §4: w = 0.8 / 1.0 / 1.2 all worse than RFE)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from relcache.caching.methods.base import check_order
from relcache.caching.methods.taylorseer import TaylorSeer
from relcache.caching.predictors import WeightedPredictor


def check_weight(weight: object) -> None:
    """The magnitude weight w > 0 (finite)."""
    w = weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (w > 0 and math.isfinite(w)):
        raise ValueError(
            f"weight must be a finite number > 0, got {w!r}; the paper's ablation uses 0.8, "
            "1.0 (TaylorSeer itself) and 1.2"
        )


@dataclass(frozen=True)
class FixedWeight(TaylorSeer):
    """TaylorSeer's schedule (``interval``, ``warmup``, ``first`` or ``full_steps``); cached
    steps predict O_hat = f0 + w sum_{r>=1} f_r k^r / r! with a constant ``weight`` w."""

    weight: float = 1.0  # w; 1.0 is TaylorSeer bit for bit

    name = "weighted"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order(self.order, minimum=1)  # order 0 (FORA) has no increment to weigh
        check_weight(self.weight)

    def predictor(self) -> WeightedPredictor:
        return WeightedPredictor(self.order, self.weight, self.warmup)

    def describe(self) -> str:
        first = "" if self.first is None else f" first {self.first}"
        return f"+w={self.weight:g} m={self.order}{first}{self.unit}"
