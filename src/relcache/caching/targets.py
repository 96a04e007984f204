"""Which modules of a model are cached, which one an input-watching scheduler sees, and how a
module's input and a call's timestep are read."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from relcache.caching.steps import Reading, read_timestep
from relcache.caching.structure import as_tensors, first_tensor

InputFn = Callable[[str, tuple, dict], Any]
TimestepFn = Callable[[tuple, dict], "Reading | None"]
ProbeFn = Callable[[Callable, tuple, dict], list[Tensor]]  # (a unit's forward, its args) -> I0


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
    watch: str | None = None  # the module a scheduler sees before deciding; None: the first
    inputs: InputFn = default_inputs
    timestep: TimestepFn = read_timestep
    slice_batch: bool = True  # run a partially-full step on the full rows only
    probe: ProbeFn | None = None  # block / stack units: the driver module's input, probed

    def shown(self, forward: Callable, inputs: list[Tensor], args: tuple, kwargs: dict):
        """What the watched unit shows a scheduler: its own inputs, or (a unit holding the
        driver module) that module's input, running the unit's forward up to it."""
        return inputs if self.probe is None else self.probe(forward, args, kwargs)


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


def watched_module(names: list[str], watch: str | None) -> str:
    """The cached module whose input a scheduler may see first: ``watch`` or the first."""
    if watch is None:
        return names[0]
    hits = [n for n in names if re.fullmatch(watch, n)]
    if not hits:
        raise ValueError(
            f"the driver {watch!r} is not among the cached modules; pick one of {names[:4]} ..."
        )
    return hits[0]


def ran_before_watched(watched: str, name: str) -> str:
    """The message when ``name`` ran before the watched module in a step."""
    return (
        f"the method decides each step at {watched!r}'s input, but {name!r} ran before it; "
        "pass relcache.apply(..., driver=) the first cached module the model calls"
    )


class _Driven(BaseException):
    """Stops a unit's forward at its driver module (a BaseException: not swallowed)."""

    def __init__(self, inputs: list[Tensor]) -> None:
        super().__init__("the driver module was reached")
        self.inputs = inputs


def driver_probe(model: nn.Module, driver: str, inputs: InputFn) -> ProbeFn:
    """A probe for the unit that holds the module ``driver`` (re.fullmatch'ed): it runs the
    unit's forward until that module is called and returns its input, as ``inputs`` reads it
    (RCS keeps the first module's input as its signal at every granularity, RFC_SPEC §3)."""
    name = next((n for n, _ in model.named_modules() if n and re.fullmatch(driver, n)), None)
    if name is None:
        raise ValueError(f"the driver {driver!r} matches no module of {type(model).__name__}")
    module = model.get_submodule(name)

    def stop(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        raise _Driven(as_tensors(inputs(name, args, kwargs)))

    def probe(forward: Callable, args: tuple, kwargs: dict) -> list[Tensor]:
        handle = module.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            forward(*args, **kwargs)
        except _Driven as reached:
            return reached.inputs
        finally:
            handle.remove()
        raise RuntimeError(f"the watched block never called its driver module {name!r}")

    return probe
