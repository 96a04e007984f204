"""Relational feature estimation (RFE) and relational cache scheduling (RCS), RFC_SPEC §3.

Everything that depends only on full steps (the ratio s, the Gram matrix of the Taylor factors)
is computed once at the full step; a cached step then needs one norm of the input change and a
handful of (B,)-sized operations per module.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from relcache.caching import parallel
from relcache.caching.taylor import accum


def row_norm(x: Tensor, p: int = 2) -> Tensor:
    """Per-sample norm over all non-batch axes (tokens x channels): (B, ...) -> (B,) fp32."""
    return torch.linalg.vector_norm(accum(x).reshape(x.shape[0], -1), ord=p, dim=1)


def increment_gram(factors: Tensor) -> Tensor:
    """Inner products <f_r, f_q> of the orders r, q >= 1, so ||D(k)||^2 = c^T G c (§3 RFE).

    factors: (B, m+1, N) -> (B, m, m) fp64. One bmm in the factors' precision (fp32 accumulates
    N products with ~1e-6 relative error: far below what RFE's magnitude needs) read in place.
    """
    inc = factors[:, 1:]  # (B, m, N) a view
    return torch.bmm(inc, inc.transpose(1, 2)).double()  # (B, m, m)


def full_step_terms(in_delta: Tensor, factors: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """A full step's ||I(i) - I(j)|| and the Gram matrix of each output over every token: under
    context parallelism from this rank's norm and Gram terms, in one collective (§3 RFE).

    in_delta: (B,) this rank's norm; factors: per output (B, m+1, N). Returns (B,), [(B, m, m)].
    """
    in_delta, *grams = parallel.norm_rows(in_delta, *map(increment_gram, factors))
    return in_delta, grams


def global_norm(local: Tensor) -> Tensor:
    """Per-row 2-norm over every token from this rank's (§3 RFE, e.g. ||I - I(i)||). (B,)"""
    return parallel.norm_rows(local)[0]


def relational_ratio(out_delta: Tensor, in_delta: Tensor) -> Tensor:
    """s = ||O(i) - O(j)|| / ||I(i) - I(j)|| per sample (§3); NaN marks an unusable ratio. (B,)"""
    ok = in_delta > 0
    return torch.where(ok, out_delta / torch.where(ok, in_delta, 1.0), float("nan"))


def rfe_plan(taylor: Tensor, gram: Tensor, ratio: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """RFE's coefficients for all slots at once, up to the input change n = ||I - I(i)|| (§3).

    taylor: (B, m+1) coefficients k^r/r!; gram: (S, B, m, m); ratio s: (S, B). Returns
    (base, unit, inc): the coefficients are ``base + n * unit * inc`` (S, B, m+1): where
    ||D|| > 0 and s is usable, [c_0, n s c_1 / ||D||, ...] (O(i) + s n D / ||D||); elsewhere the
    Taylor coefficients unchanged (inc = 0). unit = s / ||D|| (S, B), the RFE increment's length
    over the Taylor one per unit of input change. About 12 kernels per step, for all slots.
    """
    head = taylor * _first_order(taylor)  # (B, m+1): [c_0, 0, ...]
    inc = taylor - head  # (B, m+1): [0, c_1, ..., c_m]
    outer = inc[:, 1:, None] * inc[:, None, 1:]  # (B, m, m)
    d_norm = (gram * outer).sum((-2, -1)).sqrt()  # (S, B) ||D||; NaN if round-off made it < 0
    unit = ratio / d_norm  # (S, B) s / ||D||: inf or NaN where RFE does not apply
    ok = unit.abs() < math.inf  # (S, B)
    unit = torch.where(ok, unit, 0.0)  # (S, B)
    inc = torch.where(ok[..., None], inc, 0.0)  # (S, B, m+1)
    base = torch.where(ok[..., None], head, taylor)  # (S, B, m+1)
    return base, unit, inc


def _first_order(taylor: Tensor) -> Tensor:
    """[1, 0, ..., 0] like one row of ``taylor``. (m+1,)"""
    return (torch.arange(taylor.shape[1], device=taylor.device) == 0).to(taylor.dtype)


def l1_error_terms(actual: Tensor, predicted: Tensor) -> tuple[Tensor, Tensor]:
    """RCS's error as its two sums per sample, ||I0 - I0_hat||_1 and ||I0||_1 (§3), in the
    prediction's precision (fp32+ whatever the model's dtype); under context parallelism both
    sums run over every rank's tokens (one collective). (B, ...), (B, N) -> (B,), (B,)"""
    flat = actual.reshape(actual.shape[0], -1).to(predicted.dtype)  # (B, N)
    num = torch.cdist(flat[:, None], predicted[:, None], p=1)[:, 0, 0]  # (B,) one kernel
    den = torch.linalg.vector_norm(flat, ord=1, dim=1)  # (B,)
    return parallel.sum_rows(num, den)  # over the sequence group's tokens (context parallelism)


def relative_l1_error(actual: Tensor, predicted: Tensor) -> Tensor:
    """e = ||I0 - I0_hat||_1 / ||I0||_1 per sample (§3 RCS); NaN / inf where ||I0||_1 = 0.
    (B, ...), (B, N) -> (B,)"""
    num, den = l1_error_terms(actual, predicted)
    return num / den
