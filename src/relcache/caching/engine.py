"""The caching engine: routing only. It wraps the selected modules of any nn.Module, places each
root call in a branch and step, asks the method's scheduler once per step which rows run fully
(showing it the watched module's input first if it asks), and sends each module call to the
method's predictor: record at full steps, predict at cached ones (RFC_SPEC §2-§3). What to decide
and how to predict live in schedulers.py and predictors.py; the compiled path in compiled.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from relcache.caching import overflow, parallel, taylor
from relcache.caching.compiled import CompiledPath, detached
from relcache.caching.conflicts import refuse_foreign_caches, refuse_shared_modules
from relcache.caching.methods.base import CacheMethod, check_method
from relcache.caching.schedulers import Decision
from relcache.caching.state import BranchState
from relcache.caching.stats import CacheStats, collect
from relcache.caching.steps import CallerPlace
from relcache.caching.structure import (
    as_tensors,
    cfg_doubled,
    flatten_output,
    rebuild_output,
    signature,
    take_rows,
)
from relcache.caching.taps import Tap, module_call, phase
from relcache.caching.targets import Targets, match_modules, ran_before_watched, watched_module
from relcache.caching.trajectories import PerThread, Trajectories
from relcache.caching.units import unit_predictor


class CacheEngine:
    """Holds a model's cache config, its wrapped modules and each thread's trajectories."""

    def __init__(self, model: nn.Module, config: CacheMethod, targets: Targets) -> None:
        check_method(config)
        self.model, self.config, self.targets = model, config, targets
        self.names = match_modules(model, targets.patterns)
        self.watched = watched_module(self.names, targets.watch)
        self.threads = PerThread()
        self.taps: list[Tap] = []  # analysis (relcache.observe, the hot-path counter)
        self.compiled: CompiledPath | None = None  # relcache.compile's mode
        self.adapter: Any = None  # the ModelAdapter that chose the targets, if any
        self.process_group: parallel.Parallel | None = None  # apply(process_group=)
        self.rerunning = False  # a step rerun for rows whose prediction overflowed
        self._originals, self._handles = {}, []  # the modules' own forwards, the root hooks
        self.caller = CallerPlace()  # the calling thread's at_step / cache_context

    @property
    def now(self) -> Trajectories:
        """The trajectories of the thread whose step runs."""
        return self.threads.current

    @property
    def eager_forward(self) -> Callable:
        """The model's uncompiled forward (its own instance forward, if it had one)."""
        own = self.compiled.own_forward if self.compiled else None
        return own or type(self.model).forward.__get__(self.model)

    # ----- attach / detach ------------------------------------------------------------------
    def attach(self, compiled: CompiledPath | None = None) -> None:
        """Wrap every target module's forward and hook the root call (hooks run eagerly);
        with ``compiled`` the wrappers are the ones torch.compile traces."""
        modules = dict(self.model.named_modules())
        refuse_shared_modules(self.model, modules, self.names)
        self.compiled = compiled
        wrap = compiled.wrapper if compiled else self._wrapper
        for name in self.names:
            mod = modules[name]
            self._originals[name] = mod.__dict__.get("forward")
            mod.forward = wrap(name, mod.forward)
            mod.forward._relcache_wrapped = True
        begin = torch.compiler.disable(self._begin_call)
        end = torch.compiler.disable(self._end_call)
        self._handles = [
            self.model.register_forward_pre_hook(begin, with_kwargs=True),
            self.model.register_forward_hook(end, with_kwargs=True, always_call=True),
        ]

    def detach(self) -> None:
        """Restore every original forward exactly."""
        modules = dict(self.model.named_modules())
        for name, original in self._originals.items():
            del modules[name].forward
            if original is not None:
                modules[name].forward = original
        for h in self._handles:
            h.remove()
        self._originals.clear()

    def reset(self) -> None:
        """Forget the calling thread's trajectories (called at the start of each generation)."""
        self.threads.take_over().clear()
        if self.compiled:
            self.compiled.captured.clear()

    # ----- a root call: its branch and step -------------------------------------------------
    def _begin_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        now = self.threads.claim(type(self.model).__name__)
        parallel.enter(self.model, self.process_group)  # this call's reductions, until the end
        with phase(self.taps, "engine"):
            if now.active is not None:  # the previous call raised (e.g. KeyboardInterrupt)
                self._discard(now)
            at, context = self.caller.step, self.caller.context
            place = now.tracker.place(self.targets.timestep, args, kwargs, now.steps(), at, context)
            if place.new_generation or not now.branches:
                refuse_foreign_caches(self.model, "relcache cannot run this generation")
            if place.new_generation:
                now.drop_automatic()
            br = now.branch(place, signature(args, kwargs), self._new_branch)
            if br.history.calls == 0 and br.scheduler.shares_across_branches:
                br.history.paired = cfg_doubled(args, kwargs)  # one read per trajectory
            now.open_step(br, place.step)
            self._prepare(br)
            now.active = br
            if self.compiled:
                self.compiled.begin(br, args, kwargs)

    def _new_branch(self, key: Any, sig: tuple) -> BranchState:
        """A fresh trajectory: the method's scheduler and predictor (at its granularity)."""
        predictor = unit_predictor(self.config, self.names)
        return BranchState(key, self.config.scheduler(), predictor, signature=sig)

    def _prepare(self, br: BranchState) -> None:
        """Once the step's decision is known: the predictor's shared per-step work, eagerly."""
        parallel.check_decision(br.decision, br.history.step)  # debug: the same on every rank
        if br.decision is not None and not br.decision.all_full:
            with phase(self.taps, "step_work"):
                br.predictor.prepare(br.history)

    def see(self, br: BranchState, inputs: list[Tensor]) -> None:
        """The watched module's input of this step, shown to a scheduler that asks for it."""
        if not br.history.started:
            br.history.start_rows(inputs[0].shape[0], inputs[0].device)
        br.batch = inputs[0].shape[0]
        br.decision = br.scheduler.at_input(br.history, br.decision, detached(inputs))
        self.now.post(br)
        self._prepare(br)

    def _discard(self, now: Trajectories) -> None:
        now.discard_failed()
        parallel.leave()
        if self.compiled:
            self.compiled.captured.clear()

    def _end_call(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        if not self.threads.owns():  # a call refused by PerThread.claim
            return None
        now = self.now
        if out is None and sys.exc_info()[0] is not None:  # forward raised: always_call hook
            self._discard(now)
            return None
        br = now.active
        if br is None:
            return None
        with phase(self.taps, "engine"):
            if self.compiled:
                self.compiled.end(br)
            out = overflow.rerun(br, out, lambda d: self._rerun(br, d, args, kwargs))
            now.active = None
            parallel.leave()
            decision = br.decision
            any_full = decision is not None and decision.any_full
            br.history.advance(None if decision is None else decision.rows, any_full)
            if any_full and br.history.started:
                now.note_memory()
        return out

    def _rerun(self, br: BranchState, decision: Decision, args: tuple, kwargs: dict) -> Any:
        """The step again, eagerly, with ``decision``'s rows full (float16 overflow)."""
        br.decision, self.rerunning = decision, True
        try:
            if self.compiled:
                self.compiled.probed = False
                if br.scheduler.watches_input:
                    self.see(br, self.compiled.probe(args, kwargs))
            return self.eager_forward(*args, **kwargs)
        finally:
            self.rerunning = False

    def note_overflow(self, br: BranchState, pred: list[Tensor]) -> None:
        """A cached step's prediction: note its non-finite float16 rows (not when rerunning)."""
        if not self.rerunning:
            overflow.note(br, pred)

    # ----- module routing -------------------------------------------------------------------
    def _wrapper(self, name: str, forward: Callable) -> Callable:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            br = self.now.active
            if br is None:
                return forward(*args, **kwargs)
            inputs = as_tensors(self.targets.inputs(name, args, kwargs))
            if not br.history.started:
                br.history.start_rows(inputs[0].shape[0], inputs[0].device)
            if name == self.watched and br.scheduler.watches_input:
                self.see(br, self.targets.shown(forward, inputs, args, kwargs))
            elif br.decision is None:
                self.undecided(name)
            if br.scheduler.watches_all_inputs:  # every cached module's input, once decided
                br.scheduler.at_module_input(name, br.history, br.decision, detached(inputs))
            return self.route(br, name, forward, inputs, args, kwargs)

        # Under torch.compile a cached module runs eagerly (a graph break around it): the step
        # counters it reads would otherwise be guarded and recompile the graph every step.
        return torch.compiler.disable(cached_forward)

    def undecided(self, name: str) -> None:
        """A cached module ran before the scheduler saw the watched module's input."""
        raise RuntimeError(ran_before_watched(self.watched, name))

    def route(
        self, br: BranchState, name: str, forward: Callable, inputs: list[Tensor], args, kwargs
    ) -> Any:
        """Full step: run and record; cached: predict; some rows full: both, merged."""
        if br.decision.all_full:
            out = forward(*args, **kwargs)
            outs, br.templates[name] = flatten_output(out)
            br.predictor.record(name, br.history, None, detached(outs), detached(inputs))
            br.full_calls[name] += 1
            for tap in self.taps:
                tap.full(module_call(br, name, inputs, outs))
            return out
        if not br.predictor.ready(name):
            raise RuntimeError(
                f"module {name!r} has no cached value at step {br.history.step}: it was not "
                "called at the previous full steps; cache only modules that run at every step"
            )
        pred = br.predictor.predict(name, br.history, inputs)
        br.cached_calls[name] += 1
        self.note_overflow(br, pred)
        if br.decision.rows is not None:
            return self._partial(br, name, forward, pred, inputs, args, kwargs)
        for tap in self.taps:
            run = lambda: flatten_output(forward(*args, **kwargs))[0]  # noqa: E731
            pred = tap.cached(module_call(br, name, inputs, pred, run)) or pred
        return rebuild_output(pred, br.templates[name])

    def _partial(self, br, name, forward, pred, inputs, args, kwargs) -> Any:
        """Some rows are full: run them (alone if slicing is allowed) and merge."""
        rows, batch = br.decision.rows, inputs[0].shape[0]
        taken: dict[int, Tensor] = {}  # id of an argument -> its selected rows
        if self.targets.slice_batch:
            sub_args, sub_kwargs = take_rows((args, kwargs), rows, batch, taken)
            outs, _ = flatten_output(forward(*sub_args, **sub_kwargs))
        else:
            outs, _ = flatten_output(forward(*args, **kwargs))
            outs = [o.index_select(0, rows) for o in outs]
        sub_inputs = [take_rows(x, rows, batch, taken) for x in inputs]  # arguments: once
        br.predictor.record(name, br.history, rows, detached(outs), detached(sub_inputs))
        pairs = zip(pred, outs, strict=False)
        merged = [taylor.put_rows_(p, o.to(p.dtype), rows) for p, o in pairs]  # p: a fresh tensor
        return rebuild_output(merged, br.templates[name])

    # ----- reporting ------------------------------------------------------------------------
    def stats(self) -> CacheStats:
        """NFC (mean over rows and branches), full steps, per-module calls, peak cache bytes."""
        return collect(self.now, self.names, self.config.describe())
