"""+RCS over every module: Taylor prediction on an RCS schedule whose error is the mean over
every cached module's input error, not the first's only (the paper's ablation, RFC_SPEC §3).

The rule is causal: step i + k is decided at the first module's input, before the others run, so
e(k) = (e_0(k) + sum_{m>0} e_m(k-1)) / M, the first module's relative L1 input error at this step
and every other module's at the previous step (0 where that step was full), M cached modules;
A += e(k), A > tau -> full (schedulers.RCSAllSchedule). One cached module: RCS exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from relcache.caching.methods.base import scope_label
from relcache.caching.methods.rcs import RCS
from relcache.caching.schedulers import RCSAllSchedule, Scheduler


@dataclass(frozen=True)
class RCSAll(RCS):
    """Full step when the mean over every cached module's accumulated relative L1 input
    error exceeds ``threshold``; cached steps predict with TaylorSeer's series of ``order``.
    Eager only (``relcache.compile`` does not show the modules' inputs)."""

    name = "rcsall"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.granularity != "module":
            raise ValueError(
                f"rcsall watches every cached module's input, so it needs granularity='module' "
                f"(got {self.granularity!r}); at block or stack granularity use rcs, which "
                "watches the first module's input"
            )

    def scheduler(self) -> Scheduler:
        return RCSAllSchedule(self.threshold, self.order, self.warmup, self.scope)

    def describe(self) -> str:
        return f"+RCS all m={self.order}{scope_label(self.scope)}{self.unit}"
