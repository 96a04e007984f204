"""Mutable cache state: per branch (CFG pass / context) and per cached module, resettable."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ModuleState:
    """What one module keeps between full steps (§2-§3), for one branch."""

    factors: list[Tensor] | None = None  # per output: (B, N, m+1) fp32 Taylor factors
    last_input: list[Tensor] | None = None  # RFE: I(i) at the last full step, per input tensor
    ratio: list[Tensor] | None = None  # RFE: s per output, (B,), NaN where unusable
    gram: list[Tensor] | None = None  # RFE: <f_r, f_q> per output, (B, m, m)
    template: tuple | None = None  # output structure: container type and tensor slots
    dtypes: list[torch.dtype] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # per output, without batch

    def tensors(self) -> list[Tensor]:
        """Every tensor held, for memory accounting."""
        groups = (self.factors, self.last_input, self.ratio, self.gram)
        return [t for g in groups if g for t in g]


@dataclass
class BranchState:
    """One trajectory of one branch (e.g. the uncond pass of sequential CFG)."""

    step: int = 0
    signature: tuple | None = None  # shapes of the root call's tensors; a change resets
    last_t: float | None = None
    n_full: Tensor | None = None  # (B,) full steps seen per row
    last_full: Tensor | None = None  # (B,) step index of each row's last full step
    rcs_factors: Tensor | None = None  # (B, N, m+1) Taylor factors of the driver input I0
    rcs_acc: Tensor | None = None  # (B,) accumulated relative L1 error A
    modules: dict[str, ModuleState] = field(default_factory=dict)
    full_steps: list[int] = field(default_factory=list)
    # this step's decision: True (all rows full), False (all cached) or a (n,) row index
    full: bool | Tensor | None = None
    coeff: Tensor | None = None  # (B, m+1) Taylor coefficients k^r / r! for this step
    full_calls: dict[str, int] = field(default_factory=dict)
    cached_calls: dict[str, int] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes held by this branch's cache state."""
        extra = [t for t in (self.rcs_factors, self.rcs_acc) if t is not None]
        held = [t for m in self.modules.values() for t in m.tensors()] + extra
        return sum(t.numel() * t.element_size() for t in held)
