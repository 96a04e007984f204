"""FLOPs accounting's lowest floor: the op table of what caching adds, one call counted per
module scope, and a generation's total from its step costs (no model, no method: counting a
method on a model lives in ``relcache.evaluation.flops``).

Convention (the official DiT/TaylorSeer counter's): matmul-class ops (linear, conv, attention
matmuls) at 2 FLOPs per multiply-add, inside the transformer blocks only; the model's own
elementwise ops (LayerNorm, modulate, residual adds) are not counted, for any method. On top, the
operations a caching method adds are counted: the Taylor sum (a batched matmul), the factor
update and, for RFC, the norm reductions of RFE and RCS (2 FLOPs per element read, 1 for a
subtraction).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _per_input_element(flops_per_element: int) -> Callable[..., int]:
    def count(x_shape, *args, **kwargs) -> int:
        return flops_per_element * math.prod(x_shape)

    return count


def _per_output_element(flops_per_element: int) -> Callable[..., int]:
    def count(*args, out_shape=None, **kwargs) -> int:
        return flops_per_element * math.prod(out_shape)

    return count


# the reductions and differences that caching adds at cached steps (see module docstring)
CACHE_OPS = {
    aten.linalg_vector_norm: _per_input_element(2),
    aten.sub: _per_output_element(1),
    aten._cdist_forward: _per_input_element(3),  # p=1: a subtraction, then a norm's 2
}


@dataclass(frozen=True)
class StepCosts:
    """FLOPs of the first full step, a later full step, and a cached step."""

    first: float
    full: float
    cached: float

    def total(self, steps: int, nfc: float) -> float:
        """FLOPs of a ``steps``-step generation with ``nfc`` full steps (fractional for RCS)."""
        if not 1 <= nfc <= steps:
            raise ValueError(f"NFC must lie in [1, {steps}], got {nfc}")
        return self.first + (nfc - 1) * self.full + (steps - nfc) * self.cached


def count_call(call: Callable[[], object], scope: str) -> int:
    """FLOPs of ``call()`` (matmul-class ops and ``CACHE_OPS``), summed over modules ``scope``."""
    counter = FlopCounterMode(display=False, custom_mapping=CACHE_OPS)
    with counter:
        call()
    counts = counter.get_flop_counts()
    return sum(sum(c.values()) for k, c in counts.items() if _in_scope(k, scope))


def _in_scope(key: str, scope: str) -> bool:
    """FlopCounterMode keys are 'Global' or 'Cls.path.to.module'; match the path's prefix."""
    if scope == "Global":
        return key == "Global"
    path = key.split(".", 1)[1] if "." in key else ""
    parts = path.split(".")
    return len(parts) == len(scope.split(".")) and all(
        s == "*" or s == p for s, p in zip(scope.split("."), parts, strict=False)
    )
