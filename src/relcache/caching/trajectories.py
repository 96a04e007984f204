"""A model's trajectories: its branches, the step board they share, the step tracker, one set
per thread (a server's worker threads may take turns on one model)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

from relcache.caching.schedulers import Decision
from relcache.caching.state import BranchState
from relcache.caching.steps import AUTO, FIRST, NAMED, CallPlace, StepTracker


class Trajectories:
    """One thread's branches of one model and the step in progress."""

    def __init__(self) -> None:
        self.branches: dict = {}  # BranchKey -> BranchState
        self.board: dict[int, tuple[BranchState, Decision, int]] = {}  # step -> first decision
        self.tracker = StepTracker()
        self.active: BranchState | None = None  # the branch whose step is running
        self.peak_bytes = 0

    def clear(self) -> None:
        """Forget everything (a new generation)."""
        self.branches.clear()
        self.board.clear()
        self.tracker.reset()
        self.active, self.peak_bytes = None, 0

    def steps(self) -> dict:
        """Each branch's next step."""
        return {k: b.history.step for k, b in self.branches.items()}

    def branch(self, place: CallPlace, sig: tuple, make: Callable[..., BranchState]) -> BranchState:
        """The branch this call continues, or a fresh one from ``make(key, sig)``."""
        br = None if place.restart else self.branches.get(place.branch)
        if br is not None and br.signature != sig:
            if br.history.calls > 0:
                _warn_changed(br, sig)
            br = None
        if br is None:
            if place.branch == FIRST:  # a new trajectory of the first branch ends the others'
                self.drop_automatic()
            br = self.branches[place.branch] = make(place.branch, sig)
        return br

    def open_step(self, br: BranchState, step: int | None) -> None:
        """Open a step of ``br``: its number (``step`` from relcache.at_step, else the next
        one), the scheduler's decision if it knows it before the model runs, or the decision
        another branch took at this step when the scheduler shares it."""
        if br.history.calls > 0 and not br.history.started:
            raise RuntimeError(
                f"no cached module ran during the first {br.history.calls} call(s) of this "
                "trajectory; relcache needs the matched modules to run at every step (check "
                "patterns=)"
            )
        if step is not None:
            br.history.step = step
        br.overflow = None
        step = br.history.step
        br.history.branches = sum(
            b.history.step in (step, step + 1) for b in self.branches.values()
        )
        br.decision = br.scheduler.begin(br.history)
        if br.decision is None and br.scheduler.shares_across_branches:
            lead = self.board.get(step)  # a branch that already decided this step leads
            if lead is not None and lead[0] is not br and lead[2] == br.batch:
                br.decision = lead[1]

    def post(self, br: BranchState) -> None:
        """A decision taken at the watched input: the step's other branches may follow it."""
        if br.scheduler.shares_across_branches:
            self.board.setdefault(br.history.step, (br, br.decision, br.batch))

    def drop_automatic(self) -> None:
        """Forget the automatic branches (call0, call1, ...), keeping named contexts."""
        self.board.clear()
        for key in [k for k in self.branches if k.kind == AUTO]:
            del self.branches[key]

    def discard_failed(self) -> None:
        """A call raised mid-step: its branch is half-updated, so forget it (and, unless it is
        a named context, the whole generation); the next call starts afresh."""
        br, self.active = self.active, None
        if br is None or br.key.kind != NAMED:
            self.drop_automatic()
            self.branches = {k: b for k, b in self.branches.items() if k.kind == NAMED}
            self.tracker.reset()
        else:
            del self.branches[br.key]

    def note_memory(self) -> None:
        """Keep the peak of the cache's bytes (after a step that recorded)."""
        self.peak_bytes = max(self.peak_bytes, sum(b.nbytes() for b in self.branches.values()))


def _warn_changed(br: BranchState, sig: tuple) -> None:
    """The root call's tensors changed mid-trajectory: a new trajectory starts."""
    same_shapes = [a[0] for a in br.signature] == [a[0] for a in sig]
    what = "dtypes or devices" if same_shapes else "shapes"
    warnings.warn(
        f"relcache: input {what} changed mid-trajectory in branch {br.key.label!r} "
        f"({br.signature} -> {sig}); starting a new trajectory. Call relcache.reset(model) "
        "between generations to silence this.",
        stacklevel=5,
    )


class PerThread:
    """Each thread's :class:`Trajectories`; a step started while another thread's runs is
    refused."""

    def __init__(self) -> None:
        self.owner: threading.Thread | None = threading.current_thread()
        self.current = Trajectories()
        self._parked: dict[threading.Thread, Trajectories] = {}
        self._guard = threading.Lock()

    def owns(self) -> bool:
        """Whether the calling thread's trajectories are the current ones."""
        return self.owner is threading.current_thread()

    def claim(self, model_name: str) -> Trajectories:
        """The calling thread's trajectories, swapped in (refused mid-step of another)."""
        me = threading.current_thread()
        with self._guard:
            owner = self.owner
            if owner is me:
                return self.current
            if self.current.active is not None and owner is not None and owner.is_alive():
                raise RuntimeError(
                    f"relcache: this {model_name} is running a step in thread {owner.name!r}; a "
                    "cached model runs one step at a time. Serialise the calls with a lock, or "
                    "give each thread its own model (copy.deepcopy and relcache.apply each). If "
                    "that step was interrupted, call relcache.reset(model)"
                )
            self._switch(me)
            return self.current

    def take_over(self) -> Trajectories:
        """The calling thread's trajectories, even over an interrupted step of another."""
        me = threading.current_thread()
        with self._guard:
            if self.owner is not me:
                self.current.active = None
                self._switch(me)
        return self.current

    def _switch(self, thread: threading.Thread) -> None:
        """Put the current thread's trajectories away and take ``thread``'s (fresh if none)."""
        if self.owner is not None and self.owner.is_alive():
            self._parked[self.owner] = self.current
        self._parked = {t: v for t, v in self._parked.items() if t.is_alive()}
        self.current = self._parked.pop(thread, None) or Trajectories()
        self.current.active, self.owner = None, thread
