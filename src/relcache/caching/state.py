"""Per-branch state (one CFG pass or named context): history, scheduler, predictor, counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch import Tensor

from relcache.caching.history import History
from relcache.caching.predictors import Predictor
from relcache.caching.schedulers import Decision, Scheduler
from relcache.caching.steps import BranchKey


@dataclass
class BranchState:
    """One trajectory of one branch (e.g. the uncond pass of sequential CFG)."""

    key: BranchKey
    scheduler: Scheduler
    predictor: Predictor
    signature: tuple | None = None  # shapes of the root call's tensors; a change resets
    history: History = field(default_factory=History)
    decision: Decision | None = None  # this step's; None until the scheduler decides
    batch: int = 0  # rows the scheduler saw (decisions are shared only between equal batches)
    templates: dict[str, tuple] = field(default_factory=dict)  # per module: output structure
    full_calls: Counter[str] = field(default_factory=Counter)  # per module
    cached_calls: Counter[str] = field(default_factory=Counter)
    overflow: Tensor | None = None  # (B,) this step's rows whose float16 prediction overflowed
    nonfinite_predictions: int = 0  # row-steps forced full because their prediction overflowed

    def nbytes(self) -> int:
        """Bytes held by this branch's cache state."""
        held = self.predictor.tensors() + self.scheduler.tensors()
        return sum(t.numel() * t.element_size() for t in held)
