"""The compiled path (``relcache.compile``): wrappers torch.compile traces, a probe that shows a
scheduler its watched input before the compiled call, and split steps (docs/architecture.md).

The graph depends on one Python value, the step's decision (all full or none), so a model
compiles two graphs. Everything that reads a step counter (recording, coefficients, counters)
runs eagerly in the engine's root hooks, outside the graph: at a full step each cached module
hands its outputs and inputs to :attr:`CompiledPath.captured`, recorded after the call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from relcache.caching.schedulers import CACHED, FULL
from relcache.caching.state import BranchState
from relcache.caching.structure import (
    as_tensors,
    first_tensor,
    flatten_output,
    merge_rows,
    rebuild_output,
    take_rows,
)

if TYPE_CHECKING:
    from relcache.caching.engine import CacheEngine


class _Reached(BaseException):
    """Ends :meth:`CompiledPath.probe` at the watched module (a BaseException: a model's own
    ``except Exception`` does not swallow it)."""

    def __init__(self, inputs: list[Tensor]) -> None:
        super().__init__("the watched module was reached")
        self.inputs = inputs


def detached(tensors: list[Tensor]) -> list[Tensor]:
    """Cached state never keeps an autograd graph."""
    return [t.detach() for t in tensors]


class CompiledPath:
    """The engine's compiled mode: traced wrappers, probe, captured outputs, split steps."""

    def __init__(self, engine: CacheEngine, own_forward: Callable | None) -> None:
        self.engine = engine
        self.own_forward = own_forward  # the root's instance forward, if it had one
        self.captured: dict[str, tuple] = {}  # full step: outputs, inputs, template per module
        self.probing = False  # running the model up to its watched module (see probe)
        self.probed = False  # this call's watched input came from the probe

    def wrapper(self, name: str, forward: Callable) -> Callable:
        """A cached module as torch.compile traces it: it reads only the step's decision and
        tensors; a step where only some rows run fully routes eagerly."""
        engine = self.engine
        route = torch.compiler.disable(engine.route)

        def traced_forward(*args: Any, **kwargs: Any) -> Any:
            br = engine.now.active
            if br is None:
                return forward(*args, **kwargs)
            inputs = as_tensors(engine.targets.inputs(name, args, kwargs))
            if self.probing and name == engine.watched:
                raise _Reached(engine.targets.shown(forward, inputs, args, kwargs))
            if self.probing or br.decision is None:  # a cached module before the watched one
                engine.undecided(name)
            if br.decision.rows is not None:  # some rows full: eagerly
                return route(br, name, forward, inputs, args, kwargs)
            if br.decision.all_full:
                out = forward(*args, **kwargs)
                outs, template = flatten_output(out)
                self.captured[name] = (outs, inputs, template)  # recorded after the call
                return out
            pred = br.predictor.predict(name, br.history, inputs)
            engine.note_overflow(br, pred)
            return rebuild_output(pred, br.templates[name])

        return traced_forward

    def begin(self, br: BranchState, args: tuple, kwargs: dict) -> None:
        """Root pre-hook: a scheduler that watches an input and has not decided sees it now,
        from :meth:`probe` (also to record the full rows of a partial step). A step known to
        be all cached needs none; one known all full records the captured input afterwards."""
        d = br.decision
        self.probed = br.scheduler.watches_input and (d is None or d.any_full and not d.all_full)
        if self.probed:
            self.engine.see(br, self.probe(args, kwargs))

    def probe(self, args: tuple, kwargs: dict) -> list[Tensor]:
        """The watched module's inputs of this call, from an eager run of the model's forward
        stopped when the module is reached (the blocks before it run twice)."""
        self.probing = True
        try:
            with torch.no_grad():
                self.engine.eager_forward(*args, **kwargs)
        except _Reached as reached:
            return reached.inputs
        finally:
            self.probing = False
        self._not_called()

    def _not_called(self) -> None:
        self.captured.clear()
        raise RuntimeError(
            f"the watched module {self.engine.watched!r} was not called by the model's "
            "forward; pass relcache.apply(..., driver=) a cached module it calls at every step"
        )

    def end(self, br: BranchState) -> None:
        """Root hook, after the call: record the full step's captured outputs (in call order),
        or count the cached step's predictions (a partial step ran eagerly: done already)."""
        if br.decision.rows is not None:
            return
        if not br.decision.all_full:
            br.cached_calls.update(self.engine.names)
            return
        if br.scheduler.watches_input and not self.probed:  # a full step known in advance
            if self.engine.watched not in self.captured:
                self._not_called()
            self.engine.see(br, self.captured[self.engine.watched][1])
        for name, (outs, inputs, template) in self.captured.items():
            if not br.history.started:
                br.history.start_rows(inputs[0].shape[0], inputs[0].device)
            br.templates[name] = template
            br.predictor.record(name, br.history, None, detached(outs), detached(inputs))
            br.full_calls[name] += 1
        self.captured.clear()

    def step(self, compiled: Callable, args: tuple, kwargs: dict) -> Any:
        """relcache.compile's forward: the step's graph; a step where only some rows run fully
        runs as :meth:`_split` when the model's call has the decided rows, else eagerly."""
        br, eager = self.engine.now.active, self.engine.eager_forward
        if br is None or br.decision is None or br.decision.rows is None:
            return compiled(*args, **kwargs)
        x = first_tensor(args, kwargs)
        if not self.engine.targets.slice_batch or x is None or x.shape[0] != br.batch:
            return eager(*args, **kwargs)  # rows not separable at the model's call
        return self._split(br, compiled, eager, args, kwargs)

    def _split(
        self, br: BranchState, compiled: Callable, eager: Callable, args: tuple, kwargs: dict
    ) -> Any:
        """Some rows full: the cached graph for every row, then the full rows alone through
        the eager forward, recorded for those rows; their outputs replace the cached ones."""
        partial, rows = br.decision, br.decision.rows
        try:
            br.decision = CACHED
            predicted = compiled(*args, **kwargs)
            br.decision = FULL
            sub_args, sub_kwargs = take_rows((args, kwargs), rows, br.batch)
            computed = eager(*sub_args, **sub_kwargs)
        finally:
            br.decision = partial
        br.cached_calls.update(self.engine.names)
        captured, self.captured = self.captured, {}
        for name, (outs, inputs, _) in captured.items():
            if inputs[0].shape[0] != rows.numel():
                raise RuntimeError(
                    f"module {name!r} saw {inputs[0].shape[0]} rows where the model's call had "
                    f"{rows.numel()}: its rows are not the call's; set slice_batch=False in the "
                    "model's adapter (relcache.compile then runs such steps eagerly)"
                )
            br.predictor.record(name, br.history, rows, detached(outs), detached(inputs))
        return merge_rows(predicted, computed, rows, br.batch)
