"""TaylorSeer factor recursion and prediction (RFC_SPEC §2), as pure tensor functions.

Factors of one feature are stored per sample, orders before features: ``factors[b, r]`` is the
r-th finite difference of sample b, shape (B, m+1, N) with N the flattened feature size, so a full
step writes each order contiguously and the prediction is one batched vector-matrix product that
reads every factor once. Every batch row keeps its own history: rows may have had a different
number of full steps (``n_full``) and a different latest gap.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

HALF = (torch.bfloat16, torch.float16)  # model dtypes whose factors default to their own dtype


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation precision of a floating ``dtype``: float64 stays, the others float32
    (plain Python: no dispatched op on the hot path)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def accum(x: Tensor) -> Tensor:
    """x in the accumulation precision: at least float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def update_factors(old: Tensor | None, value: Tensor, gap: Tensor, n_full: Tensor) -> Tensor:
    """Official TaylorSeer update: f0 <- O(i); f_{r+1} <- (f_r(new) - f_r(old)) / d (§2).

    old: (B, m+1, N) or None; value: (B, ...); gap d: (B,); n_full: (B,) full steps seen before
    this one. Order r+1 is only formed while the old f_r exists (n_full > r); otherwise it is 0.
    Returns (B, m+1, N) (m = 0 without ``old``).
    """
    flat = value.reshape(value.shape[0], -1)  # (B, N)
    order = 0 if old is None else old.shape[1] - 1
    dtype = torch.promote_types(flat.dtype, torch.float32)  # fp32+, and the old factors'
    dtype = dtype if old is None else torch.promote_types(dtype, old.dtype)
    new = torch.empty((flat.shape[0], order + 1, flat.shape[1]), dtype=dtype, device=flat.device)
    new[:, 0].copy_(flat)  # f0 = O(i)
    for r in range(order):
        torch.sub(new[:, r], old[:, r], out=new[:, r + 1]).div_(_divisor(gap, n_full, r, dtype))
    return new  # (B, m+1, N)


def _divisor(gap: Tensor, n_full: Tensor, r: int, dtype: torch.dtype) -> Tensor:
    """The gap d that divides order r+1, or inf where f_r(old) does not exist yet (n_full <= r),
    which makes that order 0. (B, 1)"""
    return torch.where(n_full > r, gap.to(dtype), math.inf)[:, None]


def taylor_coefficients(
    k: Tensor,
    n_full: Tensor,
    order: int,
    dtype: torch.dtype = torch.float64,
    scale: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Coefficients k^r / r! of ``O_hat = sum_r f_r k^r / r!`` (§2); orders not yet formed get 0.

    k: (B,) steps since the last full step; n_full: (B,); ``scale``: :func:`coefficient_scale`
    of ``n_full`` if already known (it changes only at full steps). Returns (B, m+1).
    """
    exponents, factor = scale or coefficient_scale(n_full, order, dtype)  # (m+1,), (B, m+1)
    return k.to(dtype)[:, None] ** exponents * factor


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


def update_factors_(
    factors: Tensor, value: Tensor, gap: Tensor, n_full: Tensor, scratch: Scratch
) -> Tensor:
    """:func:`update_factors` of every row, written into ``factors`` (B, m+1, N) in place.

    Same values as :func:`update_factors` (the same subtraction and division), without a fresh
    (B, m+1, N) tensor: 2 kernels per order and one copy per order. Returns ``factors``.
    """
    cur = value.reshape(value.shape[0], -1)  # f_r(new), starting with f0 = O(i): (B, N)
    order = factors.shape[1] - 1
    for r in range(order):
        nxt = scratch.get(factors[:, 0], slot=r % 2)  # (B, N)
        torch.sub(cur, factors[:, r], out=nxt).div_(_divisor(gap, n_full, r, factors.dtype))
        factors[:, r].copy_(cur)  # f_r(old) is no longer needed
        cur = nxt
    factors[:, order].copy_(cur)
    return factors


def record_rows(
    factors: Tensor | None,
    value: Tensor,
    gap: Tensor,
    n_full: Tensor,
    rows: Tensor | None,
    order: int,
    scratch: Scratch,
    store: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """A full step of ``rows`` (None: all; ``gap`` / ``n_full`` are theirs) for factors of order m.

    Returns (the factors of every row (B, m+1, N), the updated rows' (b, m+1, N) in the
    arithmetic's fp32+). Once the factors exist they are updated in place (no allocation of the
    whole cache per full step), unless autograd is recording: a cached step's graph may hold
    them for its backward. ``store``: the factors' dtype when it is not the arithmetic's (e.g.
    bfloat16 factors: the update runs in float32, the result is rounded once when stored).
    """
    if store is not None and store != torch.promote_types(value.dtype, torch.float32):
        return _record_stored(factors, value, gap, n_full, rows, order, store)
    if factors is None:  # the trajectory's first full step
        new = pad_orders(update_factors(None, value, gap, n_full), order)
        return new, new
    if rows is None:
        if not torch.is_grad_enabled():
            return update_factors_(factors, value, gap, n_full, scratch), factors
        new = update_factors(factors, value, gap, n_full)
        return new, new
    new = update_factors(factors.index_select(0, rows), value, gap, n_full)  # (b, m+1, N)
    return put_rows_(factors, new, rows), new


def _record_stored(factors, value, gap, n_full, rows, order, store) -> tuple[Tensor, Tensor]:
    """:func:`record_rows` for factors kept in ``store`` (fp32 arithmetic, one rounding)."""
    if factors is None:
        new = pad_orders(update_factors(None, value, gap, n_full), order)  # (B, m+1, N) fp32
        return new.to(store), new
    old = factors if rows is None else factors.index_select(0, rows)
    new = update_factors(old, value, gap, n_full)  # promotes the stored factors to fp32
    if rows is None:
        if torch.is_grad_enabled():
            return new.to(store), new
        return factors.copy_(new), new
    return put_rows_(factors, new.to(store), rows), new


class Scratch:
    """Reusable work buffers for the per-module temporaries of caching (a fresh multi-MB tensor
    per call costs more than the arithmetic on a CPU); one set per predictor or scheduler."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, Tensor] = {}

    def get(self, like: Tensor, slot: int = 0) -> Tensor:
        """A buffer shaped and typed like ``like`` (contents undefined); ``slot`` tells apart
        buffers that are alive at the same time."""
        key = (slot, tuple(like.shape), like.dtype, like.device)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        return buf

    def tensors(self) -> list[Tensor]:
        """The buffers held (memory accounting)."""
        return list(self.buffers.values())


def select_rows(t: Tensor | None, rows: Tensor | None) -> Tensor | None:
    """The given batch rows of a per-row tensor (B, ...); all rows when ``rows`` is None."""
    if t is None or rows is None:
        return t
    return t.index_select(0, rows)


def put_rows(full: Tensor | None, part: Tensor, rows: Tensor | None) -> Tensor:
    """Write ``part`` into the given rows of ``full``; ``part`` itself for all rows."""
    return part if full is None or rows is None else full.index_copy(0, rows, part)


def put_rows_(full: Tensor, part: Tensor, rows: Tensor) -> Tensor:
    """:func:`put_rows` in place when autograd is not recording (the cache's own tensors)."""
    if torch.is_grad_enabled():
        return full.index_copy(0, rows, part)
    return full.index_copy_(0, rows, part)


def pad_orders(new: Tensor, order: int) -> Tensor:
    """Orders grow from 1 to m+1 factors as full steps arrive: zero-pad to m+1. (B, m+1, N)"""
    if new.shape[1] == order + 1:
        return new
    pad = new.new_zeros((new.shape[0], order + 1 - new.shape[1], *new.shape[2:]))
    return torch.cat([new, pad], dim=1)  # (B, m+1, N)
