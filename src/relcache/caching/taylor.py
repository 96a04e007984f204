"""TaylorSeer factor recursion and prediction (RFC_SPEC §2), as pure tensor functions.

Factors of one feature are stored per sample, orders before features: ``factors[b, r]`` is the
r-th finite difference of sample b, shape (B, m+1, N) with N the flattened feature size, so a full
step writes each order contiguously and the prediction is one batched vector-matrix product that
reads every factor once. Every batch row
keeps its own history: rows may have had a different number of full steps (``n_full``) and a
different latest gap.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def accum(x: Tensor) -> Tensor:
    """x in the accumulation precision: at least float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def update_factors(old: Tensor | None, value: Tensor, gap: Tensor, n_full: Tensor) -> Tensor:
    """Official TaylorSeer update: f0 <- O(i); f_{r+1} <- (f_r(new) - f_r(old)) / d (§2).

    old: (B, m+1, N) or None; value: (B, ...); gap d: (B,); n_full: (B,) full steps seen before
    this one. Order r+1 is only formed while the old f_r exists (n_full > r); otherwise it is 0.
    Returns (B, m+1, N) (m = 0 without ``old``).
    """
    new = [accum(value).reshape(value.shape[0], -1)]  # f0: (B, N)
    order = 0 if old is None else old.shape[1] - 1
    for r in range(order):
        exists = (n_full > r)[:, None]  # (B, 1)
        diff = (new[r] - old[:, r]) / gap.to(new[r].dtype)[:, None]  # (B, N)
        new.append(torch.where(exists, diff, torch.zeros_like(diff)))
    return torch.stack(new, dim=1)  # (B, m+1, N)


def taylor_coefficients(
    k: Tensor, n_full: Tensor, order: int, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Coefficients k^r / r! of ``O_hat = sum_r f_r k^r / r!`` (§2); orders not yet formed get 0.

    k: (B,) steps since the last full step; n_full: (B,). Returns (B, m+1).
    """
    exponents, scale = coefficient_scale(n_full, order, dtype)  # (m+1,), (B, m+1)
    return k.to(dtype)[:, None] ** exponents * scale


def coefficient_scale(n_full: Tensor, order: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The exponents r = 0..m (m+1,) and [r < n_full] / r! per row (B, m+1): orders not yet
    formed get 0 (§2). Both change only at full steps."""
    dev = n_full.device
    inv_fact = torch.tensor([1.0 / math.factorial(i) for i in range(order + 1)], dtype=dtype)
    r = torch.arange(order + 1, device=dev)  # (m+1,)
    scale = (r[None, :] < n_full[:, None]) * inv_fact.to(dev)  # (B, m+1)
    return r.to(dtype), scale


def combine(factors: Tensor, coeff: Tensor) -> Tensor:
    """sum_r coeff[b, r] * factors[b, r]: one pass, (B, m+1, N), (B, m+1) -> (B, N)."""
    return torch.bmm(coeff.to(factors.dtype)[:, None, :], factors)[:, 0]  # (B, N)


def select_rows(t: Tensor | None, rows: Tensor | None) -> Tensor | None:
    """The given batch rows of a per-row tensor (B, ...); all rows when ``rows`` is None."""
    if t is None or rows is None:
        return t
    return t.index_select(0, rows)


def put_rows(full: Tensor | None, part: Tensor, rows: Tensor | None) -> Tensor:
    """Write ``part`` into the given rows of ``full``; ``part`` itself for all rows."""
    return part if full is None or rows is None else full.index_copy(0, rows, part)


def pad_orders(new: Tensor, order: int) -> Tensor:
    """Orders grow from 1 to m+1 factors as full steps arrive: zero-pad to m+1. (B, m+1, N)"""
    if new.shape[1] == order + 1:
        return new
    pad = new.new_zeros((new.shape[0], order + 1 - new.shape[1], *new.shape[2:]))
    return torch.cat([new, pad], dim=1)  # (B, m+1, N)


def store_rows(full: Tensor | None, new: Tensor, rows: Tensor | None, order: int) -> Tensor:
    """Write updated factors (n, <=m+1, N) back into the given rows of ``full`` (B, m+1, N)."""
    return put_rows(full, pad_orders(new, order), rows)
