"""TaylorSeer factor recursion and prediction (RFC_SPEC §2), as pure tensor functions.

Factors of one feature are stacked along a leading axis: ``factors[r]`` is the r-th finite
difference, shape (m+1, B, ...). Every batch row keeps its own history, so rows may have had a
different number of full steps (``n_full``) and a different latest gap ``gap``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def row_view(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-row vector (B,) so it broadcasts against ``like`` (B, ...)."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def accum(x: Tensor) -> Tensor:
    """x in the accumulation precision: at least float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def update_factors(old: Tensor | None, value: Tensor, gap: Tensor, n_full: Tensor) -> Tensor:
    """Official TaylorSeer update: f0 <- O(i); f_{r+1} <- (f_r(new) - f_r(old)) / d (§2).

    old: (m+1, B, ...) fp32 or None; value: (B, ...); gap d: (B,); n_full: (B,) full steps seen
    before this one. Order r+1 is only formed while the old f_r exists (n_full > r); otherwise 0.
    """
    order = 0 if old is None else old.shape[0] - 1
    new = [accum(value)]  # f0: (B, ...)
    for r in range(order):
        exists = row_view(n_full > r, value)  # (B, 1, ...)
        diff = (new[r] - old[r]) / row_view(gap.to(new[r].dtype), value)  # (B, ...)
        new.append(torch.where(exists, diff, torch.zeros_like(diff)))
    return torch.stack(new)  # (m+1, B, ...)


def taylor_coefficients(k: Tensor, n_full: Tensor, order: int) -> Tensor:
    """Coefficients k^r / r! of ``O_hat = sum_r f_r k^r / r!`` (§2); orders not yet formed get 0.

    k: (B,) steps since the last full step; n_full: (B,). Returns (B, m+1) fp64 (tiny).
    """
    r = torch.arange(order + 1, device=k.device)  # (m+1,)
    fact = torch.tensor([math.factorial(i) for i in range(order + 1)], device=k.device)
    coeff = k.double()[:, None] ** r / fact  # (B, m+1)
    return coeff * (r[None, :] < n_full[:, None])


def combine(factors: Tensor, coeff: Tensor) -> Tensor:
    """sum_r coeff[b, r] * factors[r, b], one contraction: (m+1, B, ...), (B, m+1) -> (B, ...)."""
    m1, b = factors.shape[:2]
    flat = factors.reshape(m1, b, -1)  # (m+1, B, N)
    out = torch.einsum("rbn,br->bn", flat, coeff.to(flat.dtype))  # (B, N)
    return out.reshape(factors.shape[1:])
