"""Context parallelism: the token reductions of RFE and RCS summed over the ranks (RFC_SPEC §3).

Under sequence (context) parallelism (diffusers' Ulysses or ring attention, xDiT) every rank holds
a shard of each row's tokens, so every quantity relcache reduces over tokens is a partial sum on
a rank: RFE's input and output change norms and Gram terms, RCS's L1 error and its normaliser.
The math functions (``caching/relational.py``) hand their per-row partial sums to
:func:`sum_rows`, which adds them over the sequence group in one ``all_reduce`` (sums of squares
and of absolute values, never means: exact on uneven shards), so every rank computes the same
ratios and takes the same decisions. Classifier-free guidance with the branches on different
ranks combines a pair's errors over the CFG group (:func:`max_over_cfg`, ``scope="sample"``).

The engine makes a call's groups active for the duration of the root call (:func:`enter`,
:func:`leave`); with no group nothing here communicates and the math is unchanged bit for bit.
Collectives are counted per kind in :data:`COLLECTIVES`.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

COLLECTIVES: Counter[str] = Counter()  # collectives issued by relcache in this process, by kind


@dataclass(frozen=True)
class Parallel:
    """The process groups relcache reduces over; ``relcache.apply(..., process_group=)``."""

    sequence: Any = None  # ProcessGroup of the ranks holding token shards of the same rows
    cfg: Any = None  # ProcessGroup of the ranks holding a sample's CFG branches (cond, uncond)
    check: bool = False  # debug: all-gather every decision and raise where ranks differ


_LOCAL = threading.local()  # .active: the Parallel of the root call in progress on this thread


def as_parallel(given: Any) -> Parallel | None:
    """``process_group=`` as a :class:`Parallel`: a ProcessGroup is the sequence group."""
    if given is None or isinstance(given, Parallel):
        return given
    if dist.is_available() and isinstance(given, dist.ProcessGroup):
        return Parallel(sequence=given)
    raise TypeError(
        f"process_group must be a torch.distributed ProcessGroup (the sequence-parallel ranks) "
        f"or relcache.Parallel(sequence=..., cfg=...), got {type(given).__name__}"
    )


def model_group(model: Any) -> Any:
    """The ranks of a diffusers model's context parallelism (ring x Ulysses), if enabled."""
    config = getattr(model, "_parallel_config", None)
    cp = getattr(config, "context_parallel_config", None)
    mesh = getattr(cp, "_flattened_mesh", None)
    return None if mesh is None else mesh.get_group()


def resolve(model: Any, given: Parallel | None) -> Parallel | None:
    """This call's groups: ``given``, its sequence group defaulting to the model's own."""
    found = model_group(model)
    if given is None:
        return None if found is None else Parallel(sequence=found)
    if given.sequence is None and found is not None:
        return Parallel(found, given.cfg, given.check)
    return given


def enter(model: Any, given: Parallel | None) -> None:
    """Make ``model``'s groups active on this thread for the root call that starts."""
    _LOCAL.active = resolve(model, given)


def leave() -> None:
    """The root call ended: nothing is reduced outside it (e.g. FLOP counting)."""
    _LOCAL.active = None


def active() -> Parallel | None:
    """The groups of the root call in progress, None without (or inside a compiled graph)."""
    if torch.compiler.is_compiling():
        return None
    return getattr(_LOCAL, "active", None)


def _group(kind: str) -> Any:
    """The active ``sequence`` or ``cfg`` group, when it has more than one rank."""
    par = active()
    group = None if par is None else getattr(par, kind)
    return group if group is not None and dist.get_world_size(group) > 1 else None


def _all_reduce(flat: Tensor, op: Any, group: Any, kind: str) -> None:
    """One counted in-place all_reduce (asynchronous on a GPU: no host sync)."""
    COLLECTIVES[kind] += 1
    dist.all_reduce(flat, op=op, group=group)


def sum_rows(*partials: Tensor) -> tuple[Tensor, ...]:
    """Per-row partial sums over this rank's tokens, summed over the sequence group in one
    all_reduce (§3: sums of |x| or x^2, exact on uneven shards); unchanged without a group."""
    group = _group("sequence")
    if group is None:
        return partials
    dtype = partials[0].dtype
    for p in partials[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    flat = torch.cat([p.reshape(-1).to(dtype) for p in partials])  # (sum of numel,)
    _all_reduce(flat, dist.ReduceOp.SUM, group, "sum")
    chunks = flat.split([p.numel() for p in partials])
    return tuple(c.view(p.shape).to(p.dtype) for c, p in zip(chunks, partials, strict=True))


def norm_rows(local: Tensor, *partials: Tensor) -> tuple[Tensor, ...]:
    """Per-row 2-norms over the sequence group from each rank's local 2-norms (the square root
    of the summed squares, §3 RFE), with further ``partials`` summed in the same collective."""
    if _group("sequence") is None:
        return (local, *partials)
    squares, *sums = sum_rows(local.square(), *partials)  # (B,), ...
    return (squares.sqrt(), *sums)


def cfg() -> bool:
    """Whether this call's CFG branches are on different ranks (a ``cfg`` group)."""
    return _group("cfg") is not None


def max_over_cfg(values: Tensor) -> Tensor | None:
    """Per-row values (B,) of this rank's CFG branch, the largest over the CFG group (the
    branches of a sample decide together, §3 RCS ``scope="sample"``); None without a group."""
    group = _group("cfg")
    if group is None:
        return None
    values = values.clone()
    _all_reduce(values, dist.ReduceOp.MAX, group, "max")
    return values


def any_rows(mask: Tensor) -> Tensor:
    """A (B,) bool mask true where it is true on some rank of the sequence group."""
    group = _group("sequence")
    if group is None:
        return mask
    flat = mask.to(torch.int32)  # (B,) gloo and NCCL reduce integers, not bools
    _all_reduce(flat, dist.ReduceOp.MAX, group, "any")
    return flat.bool()


def check_decision(decision: Any, step: int) -> None:
    """Debug (``Parallel(check=True)``): raise where the ranks of the sequence group took
    different decisions at this step (one all_gather_object per decision)."""
    par, group = active(), _group("sequence")
    if par is None or not par.check or group is None:
        return
    rows = None if decision is None or decision.rows is None else decision.rows.tolist()
    mine = (step, None if decision is None else decision.all_full, rows)
    seen: list[Any] = [None] * dist.get_world_size(group)
    COLLECTIVES["check"] += 1
    dist.all_gather_object(seen, mine, group=group)
    if any(s != mine for s in seen):
        raise RuntimeError(
            f"relcache: the ranks took different decisions (step, all full, full rows) per "
            f"rank: {seen}; their collectives would hang. Every rank must run the same method "
            "on the same rows, with its reductions over the same sequence group"
        )


def refuse_compile(model: Any, given: Parallel | None) -> None:
    """relcache.compile traces RFE's prediction, whose input-change norm needs a collective."""
    par = resolve(model, given)
    if par is not None and par.sequence is not None:
        raise ValueError(
            "relcache.compile is not supported under context parallelism yet (RFE's per-module "
            "reduction is not traced); run the cached model eagerly"
        )
