"""The caching engine: routing only. It wraps the selected modules of any nn.Module, tells
branches and steps apart, asks the method's scheduler once per step which rows run fully, and
sends each module call to the method's predictor (record at full steps, predict at cached ones).
What to decide and how to predict live in schedulers.py and predictors.py (RFC_SPEC §2-§3).
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from relcache.caching import taylor
from relcache.caching.conflicts import refuse_foreign_caches
from relcache.caching.methods import CacheMethod
from relcache.caching.schedulers import CACHED, FULL, Decision
from relcache.caching.state import BranchState
from relcache.caching.steps import CallPlace, Reading, StepTracker, read_timestep
from relcache.caching.structure import (
    as_tensors,
    first_tensor,
    flatten_output,
    merge_rows,
    rebuild_output,
    signature,
    take_rows,
)

InputFn = Callable[[str, tuple, dict], Any]
TimestepFn = Callable[[tuple, dict], "Reading | None"]


def default_inputs(name: str, args: tuple, kwargs: dict) -> Tensor:
    """A cached module's input I: its first tensor argument."""
    x = first_tensor(args, kwargs)
    if x is None:
        raise TypeError(f"module {name!r} was called without a tensor argument")
    return x


@dataclass(frozen=True)
class Targets:
    """Which modules of a model to cache and how to read their inputs."""

    patterns: tuple[str, ...]
    driver: str | None = None  # RCS module name (regex); default: the first matched module
    inputs: InputFn = default_inputs
    timestep: TimestepFn = read_timestep
    slice_batch: bool = True  # run a partially-full step on the full rows only


@dataclass
class CacheStats:
    """What a generation computed: NFC, full steps, per-module calls, cache memory."""

    nfc: float
    nfc_per_sample: dict[str, list[float]]
    full_steps: dict[str, list[int]]
    steps: dict[str, int]
    module_calls: dict[str, dict[str, int]]
    peak_cache_bytes: int
    method: str = ""
    nonfinite_errors: int = 0  # RCS: row-steps whose error was NaN/inf (forced full steps)
    nonfinite_predictions: int = 0  # row-steps whose prediction overflowed (forced full steps)
    schedules: dict[str, list[list[int]]] = field(default_factory=dict)  # branch -> per row


def match_modules(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the submodules whose full name matches one of ``patterns`` (re.fullmatch)."""
    compiled = [re.compile(p) for p in patterns]
    names = [n for n, _ in model.named_modules() if n and any(c.fullmatch(n) for c in compiled)]
    if not names:
        sample = [n for n, _ in model.named_modules() if n][:8]
        raise ValueError(
            f"no module of {type(model).__name__} matches the patterns {list(patterns)}; "
            f"patterns are re.fullmatch'ed against named_modules(), e.g. {sample}"
        )
    return names


def narrow(dtype: torch.dtype) -> bool:
    """Whether a finite float32 prediction can overflow ``dtype`` when cast to it (float16,
    float8; bfloat16 shares float32's exponent range)."""
    return dtype.is_floating_point and torch.finfo(dtype).max < 1e10


def _detached(tensors: list[Tensor]) -> list[Tensor]:
    """Cached state never keeps an autograd graph (a cached step's output then depends on the
    current input only through the predictor's own use of it, e.g. RFE's ||I - I(i)||)."""
    return [t.detach() for t in tensors]


class _DriverReached(BaseException):
    """Ends :meth:`CacheEngine._probe` at the driver module (a BaseException: a model's own
    ``except Exception`` does not swallow it)."""

    def __init__(self, inputs: list[Tensor]) -> None:
        super().__init__("the RCS driver was reached")
        self.inputs = inputs


class CacheEngine:
    """Holds a model's cache config, its wrapped modules and the per-branch state."""

    def __init__(self, model: nn.Module, config: CacheMethod, targets: Targets) -> None:
        if not isinstance(config, CacheMethod):
            raise TypeError(
                f"config must be a relcache method such as relcache.RFC(threshold=0.5), got "
                f"{type(config).__name__}"
            )
        self.model, self.config, self.targets = model, config, targets
        self.names = match_modules(model, targets.patterns)
        self.driver = self._pick_driver()
        self.branches: dict[str, BranchState] = {}
        self.active: BranchState | None = None
        self.tracker = StepTracker()
        self.board: dict[int, tuple[BranchState, Decision, int]] = {}  # step -> first decision
        self.peak_bytes = 0
        self._originals: dict[str, Any] = {}
        self._handles: list[Any] = []
        self.adapter: Any = None  # the ModelAdapter that chose the targets, if any
        self.observer: Callable[[dict], None] | None = None  # analysis hook, see observe()
        self.shadow = False  # analysis: also run the module at cached steps to measure error
        self.teacher_forced = False  # analysis (with shadow): return the actual outputs
        self.traceable = False  # wrappers torch.compile traces (relcache.compile), see below
        self.captured: dict[str, tuple] = {}  # traceable full step: outputs, inputs, template
        self.root_forward: tuple | None = None  # relcache.compile: the root's own forward, if any
        self.probing = False  # traceable RCS: running the model up to its driver (see _probe)
        self.probed = False  # traceable RCS: this call's driver input came from the probe
        self.rerunning = False  # a step rerun for rows whose prediction overflowed
        self.owner: threading.Thread | None = threading.current_thread()  # whose state is held
        self._parked: dict[threading.Thread, tuple] = {}  # other threads' trajectories
        self._guard = threading.Lock()
        self._local = threading.local()  # the calling thread's at_step / cache_context

    @property
    def eager_forward(self) -> Callable:
        """The model's uncompiled forward (its own instance forward, if it had one)."""
        own = self.root_forward[0] if self.root_forward else None
        return own or type(self.model).forward.__get__(self.model)

    def _pick_driver(self) -> str:
        if self.targets.driver is None:
            return self.names[0]
        hits = [n for n in self.names if re.fullmatch(self.targets.driver, n)]
        if not hits:
            raise ValueError(
                f"the RCS driver {self.targets.driver!r} is not among the cached modules; "
                f"pick one of {self.names[:4]} ..."
            )
        return hits[0]

    # ----- attach / detach ------------------------------------------------------------------
    def attach(self, traceable: bool = False) -> None:
        """Wrap every target module's forward and hook the root call (hooks run eagerly).
        ``traceable``: the wrappers torch.compile traces without a graph break
        (:meth:`_traced_wrapper`; relcache.compile)."""
        modules = dict(self.model.named_modules())
        self.traceable = traceable
        wrap = self._traced_wrapper if traceable else self._wrapper
        for name in self.names:
            if getattr(modules[name].__dict__.get("forward"), "_relcache_wrapped", False):
                raise ValueError(
                    f"module {name!r} of this {type(self.model).__name__} is already cached by "
                    "relcache through another model that shares it; a shared submodule can be "
                    "cached by one model only: relcache.remove() the other model first, or give "
                    "each model its own copy (copy.deepcopy)"
                )
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
        me = threading.current_thread()
        with self._guard:
            if self.owner is not me:  # also takes over from a step that was interrupted
                self.active = None
                self._switch(me)
        self.branches.clear()
        self.board.clear()
        self.captured.clear()
        self.tracker.reset()
        self.active, self.peak_bytes = None, 0

    # ----- step bookkeeping -----------------------------------------------------------------
    def _begin_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._claim()
        if self.active is not None:  # the previous call raised (e.g. KeyboardInterrupt)
            self._discard_failed()
        self.tracker.step, self.tracker.context = self._local_place()
        steps = {k: b.history.step for k, b in self.branches.items()}
        place = self.tracker.place(self.targets.timestep, args, kwargs, steps)
        if place.new_generation or not self.branches:
            refuse_foreign_caches(self.model, "relcache cannot run this generation")
        if place.new_generation:
            self._drop_branches()
        br = self._branch(place, signature(args, kwargs))
        self._start_step(br, place.step)
        self.active = br
        self.probed = self.traceable and br.scheduler.uses_driver and self._needs_probe(br)
        if self.probed:
            self._decide(br, self._probe(args, kwargs))

    def _claim(self) -> None:
        """Each thread keeps its own trajectories (a server's worker threads may take turns on
        one model); a step started while another thread's step runs is refused."""
        me = threading.current_thread()
        with self._guard:
            owner = self.owner
            if owner is me:
                return
            if self.active is not None and owner is not None and owner.is_alive():
                raise RuntimeError(
                    f"relcache: this {type(self.model).__name__} is running a step in thread "
                    f"{owner.name!r}; a cached model runs one step at a time. Serialise the "
                    "calls with a lock, or give each thread its own model (copy.deepcopy and "
                    "relcache.apply each). If that step was interrupted, call relcache.reset(model)"
                )
            self._switch(me)

    def _switch(self, thread: threading.Thread) -> None:
        """Put the current thread's trajectories away and take ``thread``'s (fresh if none)."""
        if self.owner is not None and self.owner.is_alive():
            self._parked[self.owner] = (self.branches, self.board, self.tracker, self.peak_bytes)
        self._parked = {t: v for t, v in self._parked.items() if t.is_alive()}
        state = self._parked.pop(thread, None) or ({}, {}, StepTracker(), 0)
        self.branches, self.board, self.tracker, self.peak_bytes = state
        self.active, self.owner = None, thread

    def _local_place(self) -> tuple[int | None, str | None]:
        """The calling thread's relcache.at_step step and cache_context name, if any."""
        return getattr(self._local, "step", None), getattr(self._local, "context", None)

    def _branch(self, place: CallPlace, sig: tuple) -> BranchState:
        """The branch this call continues, or a fresh one (steps.py has the rules)."""
        br = None if place.restart else self.branches.get(place.branch)
        if br is not None and br.signature != sig:
            if br.history.calls > 0:
                what = (
                    "shapes"
                    if [a[0] for a in br.signature] != [a[0] for a in sig]
                    else ("dtypes or devices")
                )
                warnings.warn(
                    f"relcache: input {what} changed mid-trajectory in branch {place.branch!r} "
                    f"({br.signature} -> {sig}); starting a new trajectory. Call "
                    "relcache.reset(model) between generations to silence this.",
                    stacklevel=4,
                )
            br = None
        if br is None:
            if place.branch == "call0":  # a new trajectory of the first branch ends the others'
                self._drop_branches()
            br = self.branches[place.branch] = self._new_branch(sig)
        return br

    def _new_branch(self, sig: tuple) -> BranchState:
        """A fresh trajectory: the method's scheduler and predictor, made for this branch."""
        return BranchState(self.config.scheduler(), self.config.predictor(), signature=sig)

    def _drop_branches(self) -> None:
        """Forget the automatic branches (call0, call1, ...), keeping named contexts."""
        self.board.clear()
        for key in [k for k in self.branches if k.startswith("call")]:
            del self.branches[key]

    def _start_step(self, br: BranchState, step: int | None = None) -> None:
        """Open a step of ``br``: its number (``step`` given by relcache.at_step, else the next
        one), the scheduler's decision if it knows it before the model runs."""
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
        self._prepare(br)

    @staticmethod
    def _prepare(br: BranchState) -> None:
        """Once the step's decision is known: the predictor's shared per-step work, eagerly."""
        if br.decision is not None and not br.decision.all_full:
            br.predictor.prepare(br.history)

    @staticmethod
    def _needs_probe(br: BranchState) -> bool:
        """Whether the scheduler must see this step's driver input before the compiled call:
        to decide, or to record the full rows of a partial step. A decision known to be all
        cached needs none; one known to be all full records from the captured inputs after
        the call (:meth:`_record_captured`)."""
        return br.decision is None or (br.decision.any_full and not br.decision.all_full)

    def _probe(self, args: tuple, kwargs: dict) -> list[Tensor]:
        """Traceable RCS: the driver module's inputs of this call, from an eager run of the
        model's forward that stops when the driver is reached (the blocks before it run twice;
        typically the embedders and the first block's modulation). The step's decision is then
        taken before the compiled forward runs, which compiles one graph per kind of step."""
        self.probing = True
        try:
            with torch.no_grad():
                self.eager_forward(*args, **kwargs)
        except _DriverReached as reached:
            return reached.inputs
        finally:
            self.probing = False
        self._driver_not_called()

    def _driver_not_called(self) -> None:
        """A compiled RCS step ended without its driver module being called."""
        self.captured.clear()
        raise RuntimeError(
            f"the RCS driver {self.driver!r} was not called by the model's forward; pass "
            "driver= a cached module the model calls at every step"
        )

    def compiled_step(self, compiled: Callable, eager: Callable, args: tuple, kwargs: dict) -> Any:
        """relcache.compile's forward: the step's compiled graph; a step where RCS sends only
        some rows to a full step runs as :meth:`_split_step` when the model's call has the
        driver's rows (rows independent, as ``slice_batch`` says), or else wholly eagerly."""
        br = self.active
        if br is None or br.decision is None or br.decision.rows is None:
            return compiled(*args, **kwargs)
        x = first_tensor(args, kwargs)
        if not self.targets.slice_batch or x is None or x.shape[0] != br.batch:
            return eager(*args, **kwargs)  # rows not separable at the model's call
        return self._split_step(compiled, eager, args, kwargs)

    def _split_step(self, compiled: Callable, eager: Callable, args: tuple, kwargs: dict) -> Any:
        """Some rows full, compiled: the cached graph for every row, then the full rows alone
        through the eager forward (a new sub-batch size would recompile), recorded for those
        rows; their outputs replace the cached ones."""
        br = self.active
        partial, rows = br.decision, br.decision.rows
        try:
            br.decision = CACHED
            predicted = compiled(*args, **kwargs)
            br.decision = FULL
            sub_args, sub_kwargs = take_rows((args, kwargs), rows, br.batch)
            computed = eager(*sub_args, **sub_kwargs)
        finally:
            br.decision = partial
        br.cached_calls.update(self.names)
        captured, self.captured = self.captured, {}
        for name, (outs, inputs, _) in captured.items():
            if inputs[0].shape[0] != rows.numel():
                raise RuntimeError(
                    f"module {name!r} saw {inputs[0].shape[0]} rows where the model's call had "
                    f"{rows.numel()}: its rows are not the call's; set slice_batch=False in the "
                    "model's adapter (relcache.compile then runs such steps eagerly)"
                )
            br.predictor.record(name, br.history, rows, _detached(outs), _detached(inputs))
        return merge_rows(predicted, computed, rows, br.batch)

    def _discard_failed(self) -> None:
        """A call raised mid-step: its branch is half-updated, so forget it (and, for an
        automatic branch, the whole generation); the next call starts afresh."""
        name = next((k for k, v in self.branches.items() if v is self.active), None)
        self.active = None
        self.captured.clear()
        if name is None or name.startswith("call") or name == "default":
            self._drop_branches()
            self.branches.pop("default", None)
            self.tracker.reset()
        else:
            del self.branches[name]

    def _end_call(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        if self.owner is not threading.current_thread():  # a call refused by _claim
            return None
        if out is None and sys.exc_info()[0] is not None:  # forward raised: always_call hook
            self._discard_failed()
            return None
        br = self.active
        if br is None:
            return None
        if self.traceable:
            self._record_captured(br)
        out = self._fix_overflow(br, args, kwargs, out)
        self.active = None
        decision = br.decision
        any_full = decision is not None and decision.any_full
        br.history.advance(None if decision is None else decision.rows, any_full)
        if any_full and br.history.started:
            self.peak_bytes = max(self.peak_bytes, sum(b.nbytes() for b in self.branches.values()))
        return out

    def _fix_overflow(self, br: BranchState, args: tuple, kwargs: dict, out: Any) -> Any:
        """Rows whose prediction overflowed the output dtype (float16) this step run fully: the
        step is run again for them (recorded as their full step) and their outputs replaced.
        One host read per cached step of a float16 model; nothing otherwise."""
        bad, br.overflow = br.overflow, None
        if bad is None:
            return out
        prior = br.decision
        if prior.rows is not None:  # rows already full this step computed their outputs
            bad = bad.index_fill(0, prior.rows, False)
        rows = bad.nonzero()[:, 0]  # (n,) the one host read
        if rows.shape[0] == 0:
            return out
        br.nonfinite_predictions += rows.shape[0]
        br.decision, self.rerunning, self.probed = Decision(False, rows), True, False
        try:
            if self.traceable and br.scheduler.uses_driver:
                self._decide(br, self._probe(args, kwargs))  # records the driver's new rows
            redo = self.eager_forward(*args, **kwargs)
        finally:
            self.rerunning = False
        full = rows if prior.rows is None else torch.cat([prior.rows, rows]).unique()
        br.decision = FULL if full.shape[0] == bad.shape[0] else Decision(False, full)
        batch = bad.shape[0]
        return merge_rows(out, take_rows(redo, rows, batch), rows, batch)

    def _watch(self, br: BranchState, pred: list[Tensor]) -> None:
        """Cached step: note the rows whose float16 prediction is not finite (no host read;
        :meth:`_fix_overflow` reads them once at the end of the step)."""
        if self.rerunning:
            return
        for p in pred:
            if narrow(p.dtype):
                bad = ~torch.isfinite(p).flatten(1).all(1)  # (B,)
                rows = br.history.n_full.shape[0]
                bad = bad if bad.shape[0] == rows else bad.any().expand(rows)
                br.overflow = bad if br.overflow is None else br.overflow | bad

    def _record_captured(self, br: BranchState) -> None:
        """Traceable mode, after the call: record the full step's captured outputs (in call
        order, as the eager path does), or count the cached step's predictions (a partial
        step ran eagerly: recorded and counted already)."""
        if br.decision.rows is not None:
            return
        if not br.decision.all_full:
            br.cached_calls.update(self.names)
            return
        if br.scheduler.uses_driver and not self.probed:  # a full step known in advance
            if self.driver not in self.captured:
                self._driver_not_called()
            self._decide(br, self.captured[self.driver][1])
        for name, (outs, inputs, template) in self.captured.items():
            if not br.history.started:
                br.history.start_rows(inputs[0].shape[0], inputs[0].device)
            br.templates[name] = template
            br.predictor.record(name, br.history, None, _detached(outs), _detached(inputs))
            br.full_calls[name] += 1
        self.captured.clear()

    # ----- module routing -------------------------------------------------------------------
    def _traced_wrapper(self, name: str, forward: Callable) -> Callable:
        """A cached module as torch.compile can trace it: it reads only the step's decision
        (all full or none: two graphs) and tensors; everything that reads a step counter
        (recording, coefficients, counters) runs eagerly in the root hooks, outside the graph.
        RCS decides in the root hook too, from :meth:`_probe`; a step where only some rows run
        fully runs the uncompiled forward (relcache.compile), whose modules route eagerly."""

        def traced_forward(*args: Any, **kwargs: Any) -> Any:
            br = self.active
            if br is None:
                return forward(*args, **kwargs)
            inputs = as_tensors(self.targets.inputs(name, args, kwargs))
            if self.probing and name == self.driver:
                raise _DriverReached(inputs)
            if self.probing or br.decision is None:  # a cached module before the driver
                self._driver_missing(name)
            if br.decision.rows is not None:  # RCS per row, some rows full: eagerly
                return route(br, name, forward, inputs, args, kwargs)
            if br.decision.all_full:
                out = forward(*args, **kwargs)
                outs, template = flatten_output(out)
                self.captured[name] = (outs, inputs, template)  # recorded after the call
                return out
            pred = br.predictor.predict(name, br.history, inputs)
            self._watch(br, pred)
            return rebuild_output(pred, br.templates[name])

        route = torch.compiler.disable(self._route)
        return traced_forward

    def _wrapper(self, name: str, forward: Callable) -> Callable:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            br = self.active
            if br is None:
                return forward(*args, **kwargs)
            inputs = as_tensors(self.targets.inputs(name, args, kwargs))
            if not br.history.started:
                br.history.start_rows(inputs[0].shape[0], inputs[0].device)
            if name == self.driver and br.scheduler.uses_driver:
                self._decide(br, inputs)
            elif br.decision is None:
                self._driver_missing(name)
            return self._route(br, name, forward, inputs, args, kwargs)

        # Under torch.compile a cached module runs eagerly (a graph break around it): the step
        # counters it reads would otherwise be guarded and recompile the graph every step.
        return torch.compiler.disable(cached_forward)

    def _driver_missing(self, name: str) -> None:
        """A cached module ran before RCS's driver decided the step."""
        raise RuntimeError(
            f"RCS needs its driver {self.driver!r} to run before {name!r} in each step; "
            "pass driver= the first cached module called by the model"
        )

    def _decide(self, br: BranchState, inputs: list[Tensor]) -> None:
        """The driver module's call: the scheduler decides this step (RCS)."""
        if not br.history.started:
            br.history.start_rows(inputs[0].shape[0], inputs[0].device)
        detached = [x.detach() for x in inputs]  # a decision has no gradient
        br.batch = inputs[0].shape[0]
        br.decision = br.scheduler.at_driver(br.history, br.decision, detached)
        if br.scheduler.shares_across_branches:
            self.board.setdefault(br.history.step, (br, br.decision, br.batch))
        self._prepare(br)

    def _route(
        self,
        br: BranchState,
        name: str,
        forward: Callable,
        inputs: list[Tensor],
        args: tuple,
        kwargs: dict,
    ) -> Any:
        """Full step: run and record; cached: predict; some rows full: both, merged."""
        decision = br.decision
        if decision.all_full:
            out = forward(*args, **kwargs)
            outs, br.templates[name] = flatten_output(out)
            br.predictor.record(name, br.history, None, _detached(outs), _detached(inputs))
            br.full_calls[name] += 1
            if self.observer is not None:
                self._observe(br, name, inputs, outs, None)
            return out
        if not br.predictor.ready(name):
            raise RuntimeError(
                f"module {name!r} has no cached value at step {br.history.step}: it was not "
                "called at the previous full steps; cache only modules that run at every step"
            )
        pred = br.predictor.predict(name, br.history, inputs)
        br.cached_calls[name] += 1
        self._watch(br, pred)
        if decision.rows is None:
            if self.observer is not None:
                actual = flatten_output(forward(*args, **kwargs))[0] if self.shadow else None
                self._observe(br, name, inputs, pred, actual)
                if self.teacher_forced and actual is not None:  # the trajectory stays exact
                    return rebuild_output(actual, br.templates[name])
            return rebuild_output(pred, br.templates[name])
        return self._partial(br, name, forward, pred, inputs, args, kwargs)

    def _partial(
        self,
        br: BranchState,
        name: str,
        forward: Callable,
        pred: list[Tensor],
        inputs: list[Tensor],
        args: tuple,
        kwargs: dict,
    ) -> Any:
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
        br.predictor.record(name, br.history, rows, _detached(outs), _detached(sub_inputs))
        pairs = zip(pred, outs, strict=False)
        merged = [taylor.put_rows_(p, o.to(p.dtype), rows) for p, o in pairs]  # p: a fresh tensor
        return rebuild_output(merged, br.templates[name])

    def _observe(
        self,
        br: BranchState,
        name: str,
        inputs: list[Tensor],
        outputs: list[Tensor],
        actual: list[Tensor] | None,
    ) -> None:
        """Report one module call to the analysis observer (full: actual is None)."""
        branch = next(k for k, v in self.branches.items() if v is br)
        self.observer(
            {
                "name": name,
                "step": br.history.step,
                "branch": branch,
                "full": actual is None and br.decision.all_full,
                "inputs": inputs,
                "outputs": outputs,
                "actual": actual,
                "anchor": br.predictor.anchor(name),
            }
        )

    # ----- reporting ------------------------------------------------------------------------
    def stats(self) -> CacheStats:
        """NFC (mean over rows and branches), full steps, per-module calls, peak cache bytes."""
        per_sample = {
            k: (b.history.n_full.float().tolist() if b.history.started else [])
            for k, b in self.branches.items()
        }
        flat = [v for vs in per_sample.values() for v in vs]
        calls: dict[str, dict[str, int]] = {n: {"full": 0, "cached": 0} for n in self.names}
        for b in self.branches.values():
            for n, c in b.full_calls.items():
                calls[n]["full"] += c
            for n, c in b.cached_calls.items():
                calls[n]["cached"] += c
        return CacheStats(
            nfc=sum(flat) / len(flat) if flat else 0.0,
            nfc_per_sample=per_sample,
            full_steps={k: list(b.history.full_steps) for k, b in self.branches.items()},
            steps={k: b.history.step for k, b in self.branches.items()},
            module_calls=calls,
            peak_cache_bytes=self.peak_bytes,
            method=self.config.describe(),
            schedules={k: b.history.schedules() for k, b in self.branches.items()},
            nonfinite_errors=sum(
                b.scheduler.report().get("nonfinite_errors", 0) for b in self.branches.values()
            ),
            nonfinite_predictions=sum(b.nonfinite_predictions for b in self.branches.values()),
        )

    @contextlib.contextmanager
    def branch(self, name: str) -> Iterator[None]:
        """Route the calls inside to the named branch (e.g. "cond" / "uncond")."""
        previous = getattr(self._local, "context", None)
        self._local.context = name
        try:
            yield
        finally:
            self._local.context = previous

    @contextlib.contextmanager
    def at_step(self, step: int) -> Iterator[None]:
        """The calls inside are denoising step ``step`` (no timestep is read)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"the step must be an integer >= 0, got {step!r}")
        previous = getattr(self._local, "step", None)
        self._local.step = step
        try:
            yield
        finally:
            self._local.step = previous
