"""Other caching libraries run on the shipped model for comparison (``relcache bench --peers``).

A peer is one small class: how to apply another library's cache to a diffusers
``DiTTransformer2DModel`` (the shipped DiT converted exactly, ``models/diffusers_dit.py``), what
to tell it at each denoising step, how to forget a generation, which knob sets its compute (and
in which direction), which of its documented secondary knobs are searched (``space``,
``warmups``), and which cached tensors it holds. ``evaluation/peers.py`` runs them with the
project's sampler, seeds and CFG, counts their FLOPs the same way as relcache's, and searches the
grid of secondary knobs, tuning the knob to a compute budget at every point. Peers stay optional:
a missing library is reported, never imported at load.
"""

from __future__ import annotations

import contextlib
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["PEERS", "Peer", "PeerUnavailable", "StepInfo", "Knob", "get_peer", "register_peer"]


class PeerUnavailable(RuntimeError):
    """A peer cannot run here (library missing, or the library rejects this model): why."""


@dataclass(frozen=True)
class StepInfo:
    """Where the sampler is: what pipelines pass to their caches at each step."""

    index: int  # 0 .. steps - 1
    steps: int
    timestep: float  # the model's timestep (0 .. 999)
    sigma: float  # flow-matching equivalent in [0, 1]: x_t / (a + b) = (1 - sigma) x_0 + sigma eps
    # for x_t = a x_0 + b eps, a = sqrt(abar), b = sqrt(1 - abar): sigma = b / (a + b)


@dataclass(frozen=True)
class Knob:
    """The one knob tuned to a compute budget: its name, search range and direction."""

    name: str
    low: float
    high: float
    integer: bool = False  # an interval: searched over integers
    more_is_cheaper: bool = True  # a threshold / skip interval: larger -> fewer FLOPs
    log: bool = True  # bisect in log space


@dataclass
class Peer(ABC):
    """One configuration family of another library; ``knobs`` override its documented defaults."""

    name: str = ""
    label: str = ""  # legend, e.g. "diffusers FirstBlockCache"
    library: str = ""  # the pip package it needs
    knob: Knob | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # how its "defaults" and "tuned" runs depart from the documented defaults
    # documented secondary knobs searched with a budget, in the library's units; an axis's first
    # value is the one :meth:`tuned` starts from (its default, unless budget_knobs sets it)
    space: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    warmups: tuple[int, ...] = ()  # warm-up lengths (steps) searched besides relcache's

    def with_knobs(self, **knobs: Any) -> Peer:
        """The same peer with ``knobs`` set (the others stay at the defaults)."""
        return type(self)(**{**self.__dict__, "knobs": {**self.knobs, **knobs}})

    def describe(self) -> str:
        """E.g. ``diffusers FirstBlockCache(threshold=0.12)`` or ``... (defaults)``."""
        knobs = ", ".join(f"{k}={_short(v)}" for k, v in sorted(self.knobs.items()))
        return f"{self.label}({knobs or 'defaults'})"

    def tuned(self, steps: int, warmup: int) -> Peer:
        """The peer as tuned to a budget starts from: its defaults, with its forced-full warmup
        set to relcache's ``warmup`` steps and caps on consecutive cached steps lifted, so the
        knob alone sets the compute (a budget below the defaults' floor is then reachable)."""
        return self.with_knobs(**self.budget_knobs(steps, warmup))

    def budget_knobs(self, steps: int, warmup: int) -> dict[str, Any]:
        """The knobs :meth:`tuned` sets (by default: its warm-up, if it has one)."""
        return self.warmup_knobs(steps, warmup)

    def warmup_knobs(self, steps: int, warmup: int) -> dict[str, Any]:
        """The knob(s) that make the first ``warmup`` of ``steps`` steps full (none by default)."""
        return {}

    def search_space(self, steps: int, warmup: int) -> dict[str, tuple[Any, ...]]:
        """The secondary knobs searched and their values, in the library's units: ``space``, the
        ``warmups`` as the warm-up knob's values, and on each axis :meth:`tuned`'s value first."""
        axes = {name: list(values) for name, values in self.space.items()}
        for n in self.warmups:
            for name, value in self.warmup_knobs(steps, n).items():
                axes.setdefault(name, []).append(value)
        base = self.budget_knobs(steps, warmup)
        first = {name: [base[name]] if name in base else [] for name in axes}
        return {name: _unique(first[name] + values) for name, values in axes.items()}

    def grid(self, steps: int, warmup: int) -> list[dict[str, Any]]:
        """Every combination of :meth:`search_space`; the first is :meth:`tuned` itself (the knob
        alone)."""
        space = self.search_space(steps, warmup)
        return [
            dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())
        ]

    def check(self) -> None:
        """Raise :class:`PeerUnavailable` (with the pip command) if the library is missing."""
        try:
            __import__(self.library.replace("-", "_"))
        except ImportError as err:
            raise PeerUnavailable(
                f"{self.name} needs {self.library}: pip install 'relcache[peers]'"
            ) from err

    @abstractmethod
    def apply(self, transformer: nn.Module, steps: int) -> None:
        """Install the cache on ``transformer`` for ``steps``-step generations."""

    @abstractmethod
    def remove(self, transformer: nn.Module) -> None:
        """Uninstall it: the transformer computes exactly as before."""

    @abstractmethod
    def reset(self, transformer: nn.Module) -> None:
        """Forget the current generation (called before each batch)."""

    def step(self, transformer: nn.Module, info: StepInfo) -> contextlib.AbstractContextManager:
        """Wraps the model call of one step (a diffusers ``cache_context``, say)."""
        return contextlib.nullcontext()

    def calibrate(self, transformer: nn.Module, steps: int, generate: Any) -> Peer:
        """The peer after its own calibration procedure; ``generate(probe)`` installs ``probe``,
        generates the calibration images with it and removes it. Default: nothing to do."""
        return self

    def cache_roots(self, transformer: nn.Module) -> list[Any]:
        """Objects whose reachable tensors are the cache (for its memory)."""
        return []

    def summary(self, transformer: nn.Module) -> dict[str, Any]:
        """What the library reports about the last generation (cached steps ...), if anything."""
        return {}


PEERS: dict[str, Peer] = {}


def register_peer(peer: Peer) -> Peer:
    """Add a peer (its documented defaults) to the registry under ``peer.name``."""
    if peer.name in PEERS:
        raise ValueError(f"a peer named {peer.name!r} is already registered")
    PEERS[peer.name] = peer
    return peer


def get_peer(name: str) -> Peer:
    """The registered peer ``name``, or a ValueError listing them."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; registered peers: {', '.join(PEERS)}")
    return PEERS[name]


@contextlib.contextmanager
def applied(peer: Peer, transformer: nn.Module, steps: int) -> Iterator[Peer]:
    """``peer`` installed on ``transformer`` inside the block, removed after (also on errors)."""
    peer.check()
    peer.apply(transformer, steps)
    try:
        yield peer
    finally:
        peer.remove(transformer)


def _unique(values: list[Any]) -> tuple[Any, ...]:
    """``values`` without repeats, in order."""
    return tuple(v for i, v in enumerate(values) if v not in values[:i])


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)) and all(isinstance(v, float) for v in value):
        return f"<{len(value)} calibrated values>"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


from relcache.peers import cache_dit, diffusers_hooks  # noqa: E402,F401  (register the peers)
