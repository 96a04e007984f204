"""Taps: how analysis sees the engine's work without patching it (``relcache.observe``, the
hot-path counter). An engine with no taps pays nothing for them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from torch import Tensor

PHASES = ("engine", "step_work")  # the root hooks' own work; the predictor's per-step work


@dataclass
class ModuleCall:
    """One cached module call as a tap sees it."""

    name: str
    step: int
    branch: str  # the branch's label
    full: bool  # a full step (the module ran)
    inputs: list[Tensor]
    outputs: list[Tensor]  # what the module returned, or the prediction at a cached step
    anchor: Callable[[], list[Tensor] | None]  # the outputs at the last full step, if kept
    run: Callable[[], list[Tensor]] | None = None  # cached step: run the module for real


def module_call(br: Any, name: str, inputs, outs, run=None) -> ModuleCall:
    """A call of module ``name`` in branch ``br`` (a BranchState) as taps see it."""
    full = run is None and br.decision.all_full
    anchor = lambda: br.predictor.anchor(name)  # noqa: E731
    return ModuleCall(name, br.history.step, br.key.label, full, inputs, outs, anchor, run)


class Tap:
    """Override what you need; every method is called eagerly, outside compiled graphs."""

    def full(self, call: ModuleCall) -> None:
        """A module ran at a full step."""

    def cached(self, call: ModuleCall) -> list[Tensor] | None:
        """A module was predicted; return tensors to use instead of the prediction."""
        return None

    def phase(self, name: str) -> AbstractContextManager:
        """Wraps the engine's work of one of :data:`PHASES`."""
        return contextlib.nullcontext()


class Observer(Tap):
    """``relcache.observe``: a record per module call to ``fn``; ``shadow`` also runs the
    module at cached steps (``actual``); ``teacher_forced`` returns the actual outputs."""

    def __init__(self, fn: Callable[[dict], None], shadow: bool, teacher_forced: bool) -> None:
        self.fn, self.shadow, self.teacher_forced = fn, shadow, teacher_forced

    def full(self, call: ModuleCall) -> None:
        self.fn(self._record(call, None))

    def cached(self, call: ModuleCall) -> list[Tensor] | None:
        actual = call.run() if self.shadow else None
        self.fn(self._record(call, actual))
        return actual if self.teacher_forced else None

    @staticmethod
    def _record(call: ModuleCall, actual: list[Tensor] | None) -> dict:
        return {
            "name": call.name,
            "step": call.step,
            "branch": call.branch,
            "full": call.full,
            "inputs": call.inputs,
            "outputs": call.outputs,
            "actual": actual,
            "anchor": call.anchor(),
        }


def phase(taps: list[Tap], name: str) -> AbstractContextManager:
    """Every tap's context for phase ``name`` (nothing without taps)."""
    if not taps:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for tap in taps:
        stack.enter_context(tap.phase(name))
    return stack
