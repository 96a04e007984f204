"""Which branch, step and generation a root model call belongs to: the engine's rules, in one place.

1. **Explicit step** (``with relcache.at_step(model, i):``, used by relcache's own samplers): the
   calls inside are step ``i``. The j-th call at the same step is branch ``call{j}`` (sequential
   CFG: cond, then uncond). Step 0, or a step below the branch's current one, starts a new
   generation. Nothing is read from the device.
2. **Named branch** (``with relcache.cache_context(model, "uncond"):``): the calls inside go to that
   branch; with an explicit step it takes that step, otherwise each call is its next step and a
   timestep moving against the branch's direction starts a new trajectory.
3. **Timestep** (the fallback for bare models and pipelines): the timestep is read from the call
   (keyword ``timestep`` / ``timesteps`` / ``t`` / ``sigma`` / ``sigmas``, else a scalar or
   per-sample second positional argument; Python and NumPy numbers, 0-d, (B,) and (B, 1) tensors;
   one host read per call). The same reading as the previous call is another branch of the same
   step (``call1``, ``call2`` …); a different one is the next step of ``call0``. The direction of
   the trajectory (timesteps counting down for DDPM/DDIM, up for some flow-matching samplers) is
   set by its first two distinct readings; a reading that moves against it starts a new
   generation. More than ``MAX_BRANCHES`` identical readings in a row also start one (with a
   warning). A repeated reading is another branch only if the call's first tensor (the
   latents) is, or equals, call0's at that step (CFG's branches share their latents; one
   comparison, one host read): otherwise it is the next step, whose timestep rounded to the same
   value (bfloat16 timesteps do), or, at the trajectory's first step, a new generation (the
   previous one stopped after one step).
4. **No timestep** (none of the above can be read): every call is the next step of branch
   ``default``; a warning (once) says to call ``relcache.reset(model)`` between generations or to
   pass the step with ``relcache.at_step``.

Pipelines applied with ``relcache.apply(pipe, ...)`` also reset at every pipeline call.
"""

from __future__ import annotations

import contextlib
import numbers
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from relcache.caching.structure import first_tensor

MAX_BRANCHES = 8  # automatic branches per step (CFG needs 2; a few more for guidance variants)
TIMESTEP_KEYS = ("timestep", "timesteps", "t", "sigma", "sigmas")

Reading = tuple[float, ...]


def read_timestep(args: tuple, kwargs: dict) -> Reading | None:
    """The timestep of a root call as a tuple of floats (one per sample, or one), or None."""
    value = next((kwargs[k] for k in TIMESTEP_KEYS if k in kwargs), None)
    if value is None and len(args) > 1:
        value = args[1]
    if isinstance(value, Tensor):
        if value.is_meta or value.numel() == 0:
            return None
        if value.dim() > 2 or (value.dim() == 2 and value.shape[1] != 1):
            return None  # not a timestep: an image, tokens, a class embedding ...
        return tuple(float(v) for v in value.reshape(-1).tolist())  # the one host read
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (float(value),)
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # NumPy scalars
        return (float(value),)
    return None


@dataclass
class Clock:
    """The readings of one trajectory: the last one and the direction they move in."""

    last: Reading | None = None
    direction: int = 0  # -1 counting down, +1 up, 0 not known yet

    def went_back(self, reading: Reading) -> bool:
        """Whether ``reading`` moves against the trajectory (a new generation)."""
        if self.last is None or self.direction == 0:
            return False
        return _sign(reading, self.last) == -self.direction

    def advance(self, reading: Reading) -> None:
        """Record ``reading``; the first move sets the direction."""
        if self.last is not None and self.direction == 0:
            self.direction = _sign(reading, self.last)
        self.last = reading


def _sign(a: Reading, b: Reading) -> int:
    diff = sum(a) / len(a) - sum(b) / len(b)
    return (diff > 0) - (diff < 0)


AUTO, NAMED, DEFAULT = "auto", "named", "default"  # the kinds of branch


@dataclass(frozen=True)
class BranchKey:
    """A branch: an automatic one (the ``index``-th call of a step: CFG's cond, uncond ...), a
    named context (``relcache.cache_context``) or the default one (no timestep readable)."""

    kind: str
    index: int = 0
    name: str = ""

    @property
    def label(self) -> str:
        """How stats and messages show it: ``call0``, ``call1`` ..., the context's name,
        ``default``."""
        return {AUTO: f"call{self.index}", NAMED: self.name}.get(self.kind, DEFAULT)


FIRST = BranchKey(AUTO)  # the first call of each step


def auto(index: int) -> BranchKey:
    """The ``index``-th automatic branch of a step."""
    return BranchKey(AUTO, index)


@dataclass(frozen=True)
class CallPlace:
    """Where a root call belongs: its branch, whether it starts a new generation (every
    automatic branch is dropped), whether its branch restarts, and its explicit step if any."""

    branch: BranchKey
    new_generation: bool = False
    restart: bool = False
    step: int | None = None


class StepTracker:
    """Applies the rules above to each root call; holds only readings and counters."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every reading (a new generation follows)."""
        self.clock = Clock()
        self.clocks: dict[str, Clock] = {}  # named branches' own clocks
        self.repeats = 0
        self.explicit_last: int | None = None
        self.origin: tuple[Tensor, int] | None = None  # call0's latents at this step, version
        self.origin_step: int | None = None  # the generation's first explicit step
        self._warned: set[str] = set()

    def place(
        self,
        reading_fn,
        args: tuple,
        kwargs: dict,
        steps: dict[BranchKey, int],
        step: int | None = None,
        context: str | None = None,
    ) -> CallPlace:
        """Classify one root call; ``steps`` holds each existing branch's next step, ``step``
        and ``context`` the caller's ``at_step`` / ``cache_context``, if any."""
        named = None if context is None else BranchKey(NAMED, name=context)
        if step is not None:
            return self._explicit(step, named, steps, args, kwargs)
        reading = reading_fn(args, kwargs)
        if named is not None:
            clock = self.clocks.setdefault(context, Clock())
            back = reading is not None and clock.went_back(reading)
            if reading is not None:
                clock.advance(reading)
            return CallPlace(named, restart=back)
        if reading is None:
            self._warn_once(
                "unreadable",
                "relcache cannot read a timestep from this model call, so it cannot tell steps "
                "and generations apart: every call is counted as the next step of one "
                "trajectory. Call relcache.reset(model) between generations, or wrap each step "
                "in `with relcache.at_step(model, i):`",
            )
            return CallPlace(BranchKey(DEFAULT))
        return self._from_reading(reading, args, kwargs)

    def _from_reading(self, reading: Reading, args: tuple, kwargs: dict) -> CallPlace:
        first = self.clock.last is None
        if reading == self.clock.last and not self._same_origin(args, kwargs):
            self.repeats = 0
            self._keep_origin(args, kwargs)
            if self.clock.direction == 0:  # the first step again, other latents: a new one
                self.clock = Clock()
                self.clock.advance(reading)
                return CallPlace(FIRST, new_generation=True)
            return CallPlace(FIRST)  # the next step: its timestep rounded to the same value
        if reading == self.clock.last:
            self.repeats += 1
            if self.repeats < MAX_BRANCHES:
                return CallPlace(auto(self.repeats))
            self._warn_once(
                "repeats",
                f"relcache read the same timestep {MAX_BRANCHES} times in a row and starts a new "
                "generation; if these calls are branches of one step, name them with "
                "relcache.cache_context, and between generations call relcache.reset(model)",
            )
            self.repeats = 0
            self._keep_origin(args, kwargs)
            return CallPlace(FIRST, new_generation=True)
        back = self.clock.went_back(reading)
        if back or first:
            self.clock = Clock()
        self._keep_origin(args, kwargs)
        self.clock.advance(reading)
        self.repeats = 0
        return CallPlace(FIRST, new_generation=back)

    def _explicit(
        self,
        step: int,
        named: BranchKey | None,
        steps: dict[BranchKey, int],
        args: tuple,
        kwargs: dict,
    ) -> CallPlace:
        if named is not None:
            current = steps.get(named)
            return CallPlace(named, restart=_went_back(step, current), step=step)
        again = step == self.explicit_last
        if again and steps.get(FIRST) == step + 1 and self.origin_step == step:
            again = self._same_origin(args, kwargs)  # else: the last generation had one step
        self.repeats = self.repeats + 1 if again else 0
        self.explicit_last = step
        current = steps.get(FIRST)
        new = self.repeats == 0 and _went_back(step, current)
        if self.repeats == 0:
            self._keep_origin(args, kwargs)
            if new or current is None:
                self.origin_step = step
        return CallPlace(auto(self.repeats), new_generation=new, step=step)

    def _keep_origin(self, args: tuple, kwargs: dict) -> None:
        """Remember the first tensor (the latents) of the step's first call (call0): a reference
        and its version counter, no copy."""
        x = first_tensor(args, kwargs)
        self.origin = None if x is None or x.is_meta else (x, x._version)

    def _same_origin(self, args: tuple, kwargs: dict) -> bool:
        """Whether this call's latents are call0's of this step (another branch of the step) or
        not (a new step or generation); True when it cannot tell."""
        x = first_tensor(args, kwargs)
        if self.origin is None or x is None or x.is_meta:
            return True
        ref, version = self.origin
        if x is ref and ref._version == version:
            return True
        if ref._version != version or x.shape != ref.shape or x.dtype != ref.dtype:
            return False  # call0's latents were updated in place: a new step
        return bool(torch.equal(x.detach(), ref.detach().to(x.device)))  # one host read

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)


def _went_back(step: int, current: int | None) -> bool:
    """An explicit step before a branch's next one starts it over (``current``: its next)."""
    return current is not None and step < current


class CallerPlace:
    """What the calling thread says about its calls: ``relcache.at_step``'s step and
    ``relcache.cache_context``'s branch name (thread-local: threads take turns on one model)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def step(self) -> int | None:
        return getattr(self._local, "step", None)

    @property
    def context(self) -> str | None:
        return getattr(self._local, "context", None)

    def at_step(self, step: int) -> contextlib.AbstractContextManager:
        """The calls inside are denoising step ``step`` (no timestep is read)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"the step must be an integer >= 0, got {step!r}")
        return self._setting("step", step)

    def branch(self, name: str) -> contextlib.AbstractContextManager:
        """Route the calls inside to the named branch (e.g. "cond" / "uncond")."""
        return self._setting("context", name)

    @contextlib.contextmanager
    def _setting(self, what: str, value: object) -> Iterator[None]:
        previous = getattr(self._local, what, None)
        setattr(self._local, what, value)
        try:
            yield
        finally:
            setattr(self._local, what, previous)
