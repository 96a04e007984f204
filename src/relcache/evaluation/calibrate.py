"""Find the RCS threshold whose average NFC matches a budget (the paper's protocol, §3)."""

from __future__ import annotations

import math
from collections.abc import Callable


def calibrate_threshold(
    measure: Callable[[float], float],
    target_nfc: float,
    *,
    low: float = 1e-3,
    high: float = 10.0,
    tolerance: float = 0.25,
    max_iter: int = 14,
) -> tuple[float, float]:
    """Bisect tau in log space; NFC does not increase with tau. Returns (tau, its NFC).

    ``measure(tau)`` runs the method and returns the mean NFC. Stops once within
    ``tolerance`` of the target, else returns the closest threshold seen.
    """
    if target_nfc <= 0:
        raise ValueError(f"target NFC must be positive, got {target_nfc}")
    best: tuple[float, float] | None = None
    lo, hi = math.log(low), math.log(high)
    for _ in range(max_iter):
        tau = math.exp((lo + hi) / 2)
        nfc = measure(tau)
        if best is None or abs(nfc - target_nfc) < abs(best[1] - target_nfc):
            best = (tau, nfc)
        if abs(nfc - target_nfc) <= tolerance:
            break
        if nfc > target_nfc:
            lo = math.log(tau)  # too many full steps: raise the threshold
        else:
            hi = math.log(tau)
    assert best is not None
    return best
