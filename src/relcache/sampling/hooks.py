"""What a sampler tells the outside world: where a generation runs and which step a model call
is. Code that needs to know (relcache's cache, say) registers a context factory; the samplers
enter every registered one, so they import none of it (as k-diffusion's samplers report through
``callback``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from torch import nn

RunHook = Callable[[nn.Module], AbstractContextManager]
StepHook = Callable[[nn.Module, int], AbstractContextManager]

RUN_HOOKS: list[RunHook] = []  # each entered around one generation: hook(model)
STEP_HOOKS: list[StepHook] = []  # each entered around step i's model calls: hook(model, i)


def register_run_hook(hook: RunHook) -> RunHook:
    """Enter ``hook(model)`` around every generation a sampler runs (once, however often given)."""
    if hook not in RUN_HOOKS:
        RUN_HOOKS.append(hook)
    return hook


def register_step_hook(hook: StepHook) -> StepHook:
    """Enter ``hook(model, i)`` around the model calls of every step i (once, however often)."""
    if hook not in STEP_HOOKS:
        STEP_HOOKS.append(hook)
    return hook


@contextlib.contextmanager
def run_hooks(model: nn.Module) -> Iterator[None]:
    """Every registered run hook, entered in registration order, for one generation."""
    with contextlib.ExitStack() as stack:
        for hook in RUN_HOOKS:
            stack.enter_context(hook(model))
        yield


@contextlib.contextmanager
def step_hooks(model: nn.Module, i: int) -> Iterator[None]:
    """Every registered step hook, entered in registration order, for step ``i``."""
    with contextlib.ExitStack() as stack:
        for hook in STEP_HOOKS:
            stack.enter_context(hook(model, i))
        yield
