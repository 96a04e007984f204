"""float16 overflow: a cached step's rows whose prediction is not finite in the output dtype run
fully instead (RFC_SPEC's predictions are float32; float16 holds at most 65504)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from relcache.caching import parallel
from relcache.caching.schedulers import FULL, Decision
from relcache.caching.state import BranchState
from relcache.caching.structure import merge_rows, take_rows


def narrow(dtype: torch.dtype) -> bool:
    """Whether a finite float32 prediction can overflow ``dtype`` when cast to it (float16,
    float8; bfloat16 shares float32's exponent range)."""
    return dtype.is_floating_point and torch.finfo(dtype).max < 1e10


def note(br: BranchState, pred: list[Tensor]) -> None:
    """Cached step: note the rows whose float16 prediction is not finite (no host read;
    :func:`rerun` reads them once at the end of the step)."""
    for p in pred:
        if narrow(p.dtype):
            bad = ~torch.isfinite(p).flatten(1).all(1)  # (B,)
            rows = br.history.n_full.shape[0]
            bad = bad if bad.shape[0] == rows else bad.any().expand(rows)
            br.overflow = bad if br.overflow is None else br.overflow | bad


def rerun(br: BranchState, out: Any, run_rows: Callable[[Decision], Any]) -> Any:
    """End of a step: rows noted by :func:`note` run the step again fully (``run_rows``:
    the eager forward under the given decision, recorded as their full step) and their
    outputs replace the predicted ones. One host read per cached step of a float16 model."""
    bad, br.overflow = br.overflow, None
    if bad is None:
        return out
    prior = br.decision
    if prior.rows is not None:  # rows already full this step computed their outputs
        bad = bad.index_fill(0, prior.rows, False)
    rows = parallel.any_rows(bad).nonzero()[:, 0]  # (n,) the one host read; every rank's rows
    if rows.shape[0] == 0:
        return out
    br.nonfinite_predictions += rows.shape[0]
    redo = run_rows(Decision(False, rows))
    full = rows if prior.rows is None else torch.cat([prior.rows, rows]).unique()
    br.decision = FULL if full.shape[0] == bad.shape[0] else Decision(False, full)
    batch = bad.shape[0]
    return merge_rows(out, take_rows(redo, rows, batch), rows, batch)
