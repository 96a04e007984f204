"""Registry of model adapters: which modules each model family caches, and which drives RCS.

A new model is one small file that calls :func:`register_adapter`, plus its import below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from relcache.caching.steps import read_timestep
from relcache.caching.targets import InputFn, Targets, TimestepFn, default_inputs


@dataclass(frozen=True)
class ModelAdapter:
    """How to cache one model class: module patterns (re.fullmatch), RCS driver, input reader;
    for the block and stack granularities its transformer blocks (in call order) and their
    carried streams (caching/units.py)."""

    name: str
    class_names: tuple[str, ...]  # matched against type(model).__name__ and its bases
    patterns: tuple[str, ...]
    driver: str | None = None
    inputs: InputFn = default_inputs
    timestep: TimestepFn = read_timestep
    slice_batch: bool = True
    prepare: Callable[[nn.Module], None] | None = None  # reversible surgery before wrapping
    restore: Callable[[nn.Module], None] | None = None
    # per method name, knob defaults as the paper ran the family (RFC_SPEC §2 "Per family");
    # relcache.method_for applies them under the user's knobs
    defaults: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    blocks: tuple[str, ...] = ()  # the transformer blocks, in the order the model calls them
    block_inputs: InputFn = default_inputs  # a block's carried streams, in its output order

    def targets(self, granularity: str = "module") -> Targets:
        """The engine's view of this adapter: its modules, or its blocks (block, stack)."""
        if granularity == "module":
            return Targets(self.patterns, self.driver, self.inputs, self.timestep, self.slice_batch)
        if not self.blocks:
            raise ValueError(
                f"the {self.name} adapter declares no blocks, so granularity={granularity!r} "
                "is not available; use granularity='module'"
            )
        return Targets(self.blocks, None, self.block_inputs, self.timestep, self.slice_batch)


ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Add an adapter to the registry; names and classes must be new, patterns non-empty."""
    if not adapter.patterns:
        raise ValueError(f"adapter {adapter.name!r} needs at least one module pattern")
    if adapter.name in ADAPTERS:
        raise ValueError(f"an adapter named {adapter.name!r} is already registered")
    ADAPTERS[adapter.name] = adapter
    return adapter


def find_adapter(model: nn.Module) -> ModelAdapter | None:
    """The adapter registered for ``type(model)`` (or one of its bases), if any."""
    lineage = [c.__name__ for c in type(model).__mro__]
    for cls_name in lineage:
        for adapter in ADAPTERS.values():
            if cls_name in adapter.class_names:
                return adapter
    return None


def supported_classes() -> list[str]:
    """Every model class name with a registered adapter."""
    return sorted({c for a in ADAPTERS.values() for c in a.class_names})


from relcache.adapters import reference  # noqa: E402,F401  (registers the reference DiT)

try:  # diffusers is an optional extra; its adapters register only when it is importable
    from relcache.adapters import diffusers_models  # noqa: E402,F401
except ImportError:  # pragma: no cover - exercised only without the extra
    pass
