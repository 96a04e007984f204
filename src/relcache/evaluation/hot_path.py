"""The hot path, counted: aten ops that launch a kernel and host syncs per step, inside the
cached modules and outside them (device-independent measures of launch overhead)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from relcache.caching.taps import Tap

aten = torch.ops.aten
# ops that allocate or read metadata but launch no kernel
NO_KERNEL = {
    aten.empty.memory_format,
    aten.empty_strided.default,
    aten.empty_like.default,
    aten.lift_fresh.default,
    aten.lift_fresh_copy.default,
    aten.sym_size.int,
    aten.sym_stride.int,
    aten.sym_numel.default,
    aten.is_same_size.default,
}
ENGINE = "<engine hooks>"
STEP_WORK = "<per-step prediction work>"  # predictor.prepare: shared by the step's modules
SYNCS = {aten._local_scalar_dense.default, aten.nonzero.default}  # device -> host reads


@dataclass
class StepCount:
    """Kernel ops and host syncs of one model call, split by where they ran."""

    inside: int = 0  # in the cached modules (their own compute, or the prediction)
    outside: int = 0  # everything else: the model's glue and the engine's step hooks
    engine: int = 0  # of ``outside``: in the engine's step hooks (begin / end of a call)
    syncs: int = 0
    per_module: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)  # op name -> count, for diagnosis

    @property
    def total(self) -> int:
        """All kernel ops of the call."""
        return self.inside + self.outside


class OpCounter(TorchDispatchMode):
    """Counts kernel-launching aten ops (views and allocations excluded) and scalar reads."""

    def __init__(self) -> None:
        super().__init__()
        self.count = StepCount()
        self.module: str | None = None  # the cached module currently running, if any

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCS:
            self.count.syncs += 1
        if (
            func is not aten._local_scalar_dense.default
            and not func.is_view
            and func not in NO_KERNEL
        ):
            self.count.ops[str(func.overloadpacket.__name__)] += 1
            if self.module is None or self.module == ENGINE:
                self.count.outside += 1
                self.count.engine += self.module == ENGINE
            else:
                self.count.inside += 1
                self.count.per_module[self.module] += 1
        return func(*args, **(kwargs or {}))


def mark_modules(model: nn.Module, names: list[str], counter: OpCounter) -> list:
    """Forward hooks that tell ``counter`` which cached module is running; returns handles."""
    modules = dict(model.named_modules())
    handles = []
    for name in names:

        def enter(mod, args, name=name):
            counter.module = name

        def leave(mod, args, out):
            counter.module = None

        handles += [
            modules[name].register_forward_pre_hook(enter),
            modules[name].register_forward_hook(leave),
        ]
    return handles


def count_calls(
    model: nn.Module, names: list[str], call: Callable[[int], object], steps: int
) -> list[StepCount]:
    """One :class:`StepCount` per call ``call(i)``, i = 0 .. steps-1."""
    counts = []
    for i in range(steps):
        counter = OpCounter()
        handles = mark_modules(model, names, counter)
        try:
            with counter, counting_tolist(counter), marking_engine(model, counter):
                with torch.no_grad():
                    call(i)
        finally:
            for h in handles:
                h.remove()
        counts.append(counter.count)
    return counts


@contextlib.contextmanager
def marking_engine(model: nn.Module, counter: OpCounter) -> Iterator[None]:
    """Attribute the ops of relcache's root hooks to the engine while the block runs, except
    the predictor's per-step work they trigger (``predictor.prepare``: this step's coefficients,
    RFE's plan), which is the cached modules' prediction, computed once for all of them."""
    import relcache  # the API, imported here: evaluation modules load before it is complete

    if not relcache.is_applied(model):
        yield
        return
    with relcache.api.tap(model, _PhaseMarker(counter)):
        yield


class _PhaseMarker(Tap):
    """Labels the counter with the engine's phase while it runs."""

    def __init__(self, counter: OpCounter) -> None:
        self.counter = counter

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        label = ENGINE if name == "engine" else STEP_WORK
        previous, self.counter.module = self.counter.module, label
        try:
            yield
        finally:
            self.counter.module = previous


@contextlib.contextmanager
def counting_tolist(counter: OpCounter) -> Iterator[None]:
    """``Tensor.tolist`` reads values without dispatching an op (on a GPU it is a device read):
    count it as a sync while the block runs; the original method is restored after."""
    original = torch.Tensor.tolist

    def tolist(self: torch.Tensor):
        counter.count.syncs += 1
        return original(self)

    torch.Tensor.tolist = tolist
    try:
        yield
    finally:
        torch.Tensor.tolist = original


def time_calls(call: Callable[[int], object], steps: int, device: torch.device) -> list[float]:
    """Milliseconds of each call ``call(i)`` (CUDA events on a GPU)."""
    times = []
    with torch.no_grad():
        for i in range(steps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
                call(i)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                call(i)
                times.append((time.perf_counter() - t0) * 1e3)
    return times


def _never_full(config):
    """The adaptive ``config`` with a threshold no error crosses, or a budget spent at warm-up."""
    fields = {f.name for f in dataclasses.fields(config)}
    if getattr(config, "nfc", None) is not None:
        return dataclasses.replace(config, nfc=config.warmup)
    if "threshold" in fields:
        return dataclasses.replace(config, threshold=math.inf)
    raise ValueError(f"cannot keep {config.describe()} cached to count its step")


def step_counts(model: nn.Module, config, full_steps: int = 3) -> dict:
    """Kernel ops and syncs of one cached step of ``config`` on a reference DiT (2 rows, every
    call wrapped in ``at_step``): per cached module, in the engine's hooks, and device reads.

    Fixed schedules run ``full_steps`` full steps first; RCS its warm-up, then a threshold
    that keeps the next steps cached (the decision is counted, its outcome does not matter).
    """
    import relcache  # the API, imported here: evaluation modules load before it is complete

    c = model.config
    dev = next(model.parameters()).device
    x = torch.zeros(2, c.in_channels, c.input_size, c.input_size, device=dev)
    y = torch.zeros(2, dtype=torch.long, device=dev)
    probe = config.with_full_steps(tuple(range(full_steps)))
    if config.adaptive:  # keep the decision, force its outcome: cached after the warm-up
        probe = _never_full(config)

    def call(i: int):
        with relcache.at_step(model, i):
            return model(x, torch.full((2,), 999.0 - i, device=dev), y)

    with relcache.cached(model, probe):
        names = relcache.api.cached_modules(model)
        last = count_calls(model, names, call, full_steps + 2)[-1]
    return {
        "kernels_per_cached_module": round(last.inside / len(names), 2),
        "engine_kernels_per_cached_step": last.engine,
        "syncs_per_cached_step": last.syncs,
    }
