"""Normalise module inputs and outputs (tensor or tuple of tensors) once, at the boundary."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def first_tensor(args: tuple, kwargs: dict) -> Tensor | None:
    """The first tensor argument, positional before keyword; None if there is none."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor):
            return v
    return None


def flatten_output(out: Any) -> tuple[list[Tensor], tuple]:
    """Split a module output into its tensors and a template to rebuild it from predictions."""
    if isinstance(out, Tensor):
        return [out], ("tensor",)
    if isinstance(out, (tuple, list)):
        slots = tuple(isinstance(v, Tensor) for v in out)
        consts = tuple(None if s else v for s, v in zip(slots, out, strict=False))
        return [v for v in out if isinstance(v, Tensor)], (type(out), slots, consts)
    raise TypeError(
        f"relcache can cache modules returning a tensor or a tuple of tensors, got "
        f"{type(out).__name__}; pass patterns that select such modules"
    )


def rebuild_output(tensors: list[Tensor], template: tuple) -> Any:
    """Inverse of :func:`flatten_output`."""
    if template[0] == "tensor":
        return tensors[0]
    kind, slots, consts = template
    it = iter(tensors)
    values = [next(it) if s else c for s, c in zip(slots, consts, strict=False)]
    return kind(values)


def signature(args: tuple, kwargs: dict) -> tuple:
    """Shape of every tensor argument, and dtype and device of the feature tensors (2-D and up;
    not the timestep, which pipelines cast after the first step): a change means a new
    trajectory."""
    return tuple(
        (tuple(v.shape), v.dtype, v.device.type) if v.dim() >= 2 else (tuple(v.shape),)
        for v in (*args, *kwargs.values())
        if isinstance(v, Tensor)
    )


def cfg_doubled(args: tuple, kwargs: dict) -> bool:
    """Whether the call's first tensor (the latents) is two equal halves: batched CFG, rows j
    and j + B/2 are one sample's two branches (one comparison, one host read)."""
    x = first_tensor(args, kwargs)
    if x is None or x.is_meta or x.dim() == 0 or x.shape[0] < 2 or x.shape[0] % 2:
        return False
    half = x.shape[0] // 2
    return bool(torch.equal(x[:half], x[half:]))


def take_rows(value: Any, rows: Tensor, batch: int, taken: dict[int, Tensor] | None = None) -> Any:
    """Select batch rows of every tensor argument whose leading size is the batch size;
    ``taken`` (id of a tensor -> its rows) selects each tensor once and tells the caller."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        if taken is None:
            return value.index_select(0, rows)
        if id(value) not in taken:
            taken[id(value)] = value.index_select(0, rows)
        return taken[id(value)]
    if isinstance(value, (tuple, list)):
        return type(value)(take_rows(v, rows, batch, taken) for v in value)
    if isinstance(value, dict):
        return {k: take_rows(v, rows, batch, taken) for k, v in value.items()}
    return value


def merge_rows(whole: Any, part: Any, rows: Tensor, batch: int) -> Any:
    """``whole`` (a model output: tensors in tuples, lists, dicts or dict-like outputs) with the
    given batch rows of each batch-sized tensor replaced by ``part``'s, out of place."""
    if isinstance(whole, Tensor):
        if whole.dim() == 0 or whole.shape[0] != batch:
            return whole
        return whole.index_copy(0, rows, part.to(whole.dtype))  # (B, ...)
    if isinstance(whole, (tuple, list)):
        values = [merge_rows(w, p, rows, batch) for w, p in zip(whole, part, strict=True)]
        return type(whole)(*values) if hasattr(whole, "_fields") else type(whole)(values)
    if isinstance(whole, dict):  # diffusers' BaseOutput is a dict too, built from keywords
        return type(whole)(**{k: merge_rows(v, part[k], rows, batch) for k, v in whole.items()})
    if isinstance(whole, (str, bytes, int, float, bool, type(None))):
        return whole
    raise TypeError(
        f"relcache cannot merge batch rows of a {type(whole).__name__} model output; return "
        "tensors, tuples, lists or dicts, or set slice_batch=False in the model's adapter"
    )


def as_tensors(value: Tensor | tuple | list) -> list[Tensor]:
    """A module's selected input(s) as a list of tensors."""
    return [value] if isinstance(value, Tensor) else [v for v in value if v is not None]
