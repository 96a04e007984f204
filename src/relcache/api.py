"""Public entry points: apply / remove / reset / stats / cache_context."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from relcache.adapters import ModelAdapter, find_adapter, supported_classes
from relcache.caching import parallel
from relcache.caching.compiled import CompiledPath
from relcache.caching.conflicts import (
    allow_enable_cache,
    refuse_enable_cache,
    refuse_foreign_caches,
)
from relcache.caching.engine import CacheEngine
from relcache.caching.methods import CacheMethod, parse_method
from relcache.caching.methods.base import check_method
from relcache.caching.methods.registry import merge_knobs
from relcache.caching.stats import CacheStats
from relcache.caching.taps import Observer, Tap
from relcache.caching.targets import Targets, driver_probe
from relcache.sampling.hooks import register_run_hook, register_step_hook

_ENGINE_ATTR = "_relcache_engine"


def resolve_model(target: Any) -> nn.Module:
    """The nn.Module to cache: the model itself, or a pipeline's ``transformer``."""
    if isinstance(target, nn.Module):
        return target
    inner = getattr(target, "transformer", None)
    if isinstance(inner, nn.Module):
        return inner
    raise TypeError(
        f"relcache.apply takes an nn.Module or a diffusers pipeline with a .transformer, got "
        f"{type(target).__name__}"
    )


def _check_regex(what: str, pattern: object) -> None:
    """A module pattern must be a valid regular expression string."""
    if not isinstance(pattern, str):
        raise ValueError(
            f"{what} must be a regex string such as r'blocks\\.\\d+\\.attn', got {pattern!r}"
        )
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(
            f"{what} {pattern!r} is not a valid regular expression ({err}); fix it, e.g. escape "
            "literal brackets and dots: r'blocks\\[0\\]' or r'blocks\\.\\d+\\.attn'"
        ) from None


def _targets(
    model: nn.Module, patterns, driver, granularity: str = "module"
) -> tuple[Targets, ModelAdapter | None]:
    """The modules to cache: ``patterns`` (at block / stack granularity: the blocks, whose
    first tensor argument is the carried stream), else the model's adapter's."""
    if driver is not None:
        _check_regex("driver", driver)
    if patterns is not None:
        pats = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        if not pats:
            raise ValueError(
                "patterns is empty; pass the modules to cache, e.g. [r'blocks\\.\\d+\\.attn']"
            )
        for p in pats:
            _check_regex("pattern", p)
        return Targets(pats, driver), None
    adapter = find_adapter(model)
    if adapter is None:
        raise ValueError(
            f"relcache has no adapter for {type(model).__name__}; supported: "
            f"{', '.join(supported_classes())}. For another model pass the modules to cache, "
            "e.g. relcache.apply(model, cfg, patterns=[r'blocks\\.\\d+\\.attn', "
            "r'blocks\\.\\d+\\.mlp'])"
        )
    targets = adapter.targets(granularity)
    if granularity != "module":  # RCS keeps its driver: the first module's input, probed
        probe = driver_probe(model, driver or adapter.driver or adapter.patterns[0], adapter.inputs)
        return dataclasses.replace(targets, probe=probe), adapter
    return (dataclasses.replace(targets, watch=driver) if driver else targets), adapter


def apply(
    target: Any,
    config: CacheMethod,
    *,
    patterns: str | list[str] | tuple[str, ...] | None = None,
    driver: str | None = None,
    process_group: Any = None,
) -> Any:
    """Cache ``target`` (a model or a diffusers pipeline) with ``config``; returns ``target``.

    ``process_group``: the ranks that split each sample's tokens (context parallelism), whose
    partial sums relcache adds up so every rank decides alike, or a ``relcache.Parallel``; by
    default the model's diffusers context-parallel group, if any (README "Several GPUs").
    """
    group = parallel.as_parallel(process_group)
    model = resolve_model(target)
    if hasattr(model, _ENGINE_ATTR):
        raise ValueError(
            f"relcache is already applied to this {type(model).__name__}; call "
            "relcache.remove(model) first to change the method"
        )
    refuse_foreign_caches(model, "relcache.apply")
    check_method(config)
    targets, adapter = _targets(model, patterns, driver, config.granularity)
    if config.granularity != "module":  # blocks run their own forward: no module surgery
        adapter = adapter and dataclasses.replace(adapter, prepare=None, restore=None)
    if adapter is not None and adapter.prepare is not None:
        adapter.prepare(model)
    engine = CacheEngine(model, config, targets)
    engine.adapter = adapter
    engine.process_group = group
    try:
        engine.attach()
    except ValueError:
        if adapter is not None and adapter.restore is not None:
            adapter.restore(model)
        raise
    refuse_enable_cache(model)
    setattr(model, _ENGINE_ATTR, engine)
    if model is not target:
        _hook_pipeline(target, engine)
    return target


def family_defaults(target: Any) -> dict:
    """Knob defaults per method name as the paper ran ``target``'s model family (its adapter's
    ``defaults``: FLUX W = 3, HunyuanVideo W = 1 and m = 1 ...; empty for other families)."""
    adapter = find_adapter(resolve_model(target))
    return {k: dict(v) for k, v in adapter.defaults.items()} if adapter is not None else {}


def method_for(
    target: Any, spec: str, *, nfc: float | None = None, steps: int = 50, **knobs: object
) -> CacheMethod:
    """The method ``spec`` (a registry name such as ``"taylorseer2"``) with the model family's
    defaults as the paper ran them (warm-up, order: FLUX W = 3 and FORA on i mod N, HunyuanVideo
    W = 1 and m = 1; RFC_SPEC §2) under the knobs given; with ``nfc``, the config meeting that
    budget at ``steps`` steps."""
    entry, implied = parse_method(spec)
    values = merge_knobs(spec, implied, {k: v for k, v in knobs.items() if v is not None})
    values = entry.with_defaults(values, family_defaults(target).get(entry.name, {}))
    if nfc is None:
        return entry.make(**values)
    return entry.for_nfc(nfc, steps, **values)[0]


def compile(  # noqa: A001 - relcache.compile mirrors torch.compile
    target: Any,
    *,
    fullgraph: bool = True,
    mode: str | None = None,
    dynamic: bool | None = False,
    **options: Any,
) -> Any:
    """``torch.compile`` a cached model's forward; returns ``target``.

    The step's choice (full or cached) is made in the engine's hooks around the compiled
    forward, so ``fullgraph=True`` (the default) compiles two graphs (a full step, a cached step)
    that never recompile over a trajectory or across generations; ``mode="reduce-overhead"``
    gives CUDA graphs on a GPU. RCS decides in that hook too, from its driver module's input:
    the model's forward runs eagerly up to the driver and is cut off there (what runs before
    the driver, e.g. the embedders and the first block's modulation, runs twice: it must not
    draw random numbers or count calls), then the step's compiled graph runs. A step where RCS
    sends only some rows to a full step (``scope="row"`` or ``"sample"``) runs the cached graph
    for every row and the full rows alone through the eager forward (a sub-batch); with
    ``slice_batch=False`` (FLUX, HunyuanVideo) the whole step runs eagerly. :func:`remove`
    restores the uncompiled forward.
    """
    import torch

    model = resolve_model(target)
    engine = _engine(model)
    parallel.refuse_compile(model, engine.process_group)
    if engine.taps:
        raise ValueError("relcache.observe runs eagerly; leave the observe() block first")
    if engine.compiled is None:  # the instance's own forward, if any: remove() restores it
        engine.detach()
        engine.attach(CompiledPath(engine, model.__dict__.get("forward")))
    path = engine.compiled
    compiled = torch.compile(
        engine.eager_forward, fullgraph=fullgraph, mode=mode, dynamic=dynamic, **options
    )

    def forward(*args: Any, **kwargs: Any) -> Any:
        """The step's compiled graph (its decision was taken in the root hook)."""
        return path.step(compiled, args, kwargs)

    model.forward = forward
    return target


def remove(target: Any) -> Any:
    """Undo :func:`apply` (and :func:`compile`): every original forward is restored exactly."""
    model = resolve_model(target)
    engine = _engine(model)
    if engine.compiled is not None:
        del model.forward
        if engine.compiled.own_forward is not None:
            model.forward = engine.compiled.own_forward
    engine.detach()
    if engine.adapter is not None and engine.adapter.restore is not None:
        engine.adapter.restore(model)
    allow_enable_cache(model)
    delattr(model, _ENGINE_ATTR)
    if model is not target:
        _unhook_pipeline(target)
    return target


@contextlib.contextmanager
def cached(
    target: Any,
    config: CacheMethod | None,
    *,
    patterns: str | list[str] | tuple[str, ...] | None = None,
    driver: str | None = None,
    process_group: Any = None,
) -> Iterator[Any]:
    """``with relcache.cached(model, cfg):`` apply, run the block, remove (None: no caching)."""
    if config is None:
        yield target
        return
    apply(target, config, patterns=patterns, driver=driver, process_group=process_group)
    try:
        yield target
    except BaseException:
        if is_applied(target):  # the body's error is the one to see
            remove(target)
        raise
    if not is_applied(target):
        raise RuntimeError(
            "relcache.cached: the model was already removed inside the with block; leave the "
            "removal to the block (or use relcache.apply / relcache.remove directly)"
        )
    remove(target)


def _engine(target: Any) -> CacheEngine:
    engine = getattr(resolve_model(target), _ENGINE_ATTR, None)
    if engine is None:
        raise ValueError("relcache is not applied to this model; call relcache.apply first")
    return engine


def reset(target: Any) -> None:
    """Forget all cached state; the next call starts a new trajectory."""
    _engine(target).reset()


def stats(target: Any) -> CacheStats:
    """NFC, full steps, per-module counts and peak cache bytes of the last generation."""
    return _engine(target).stats()


def is_applied(target: Any) -> bool:
    """Whether relcache currently wraps this model or pipeline."""
    return hasattr(resolve_model(target), _ENGINE_ATTR)


@contextlib.contextmanager
def cache_context(target: Any, name: str) -> Iterator[None]:
    """Route the model calls inside to a named branch (e.g. "cond" / "uncond" passes)."""
    with _engine(target).caller.branch(name):
        yield


@contextlib.contextmanager
def at_step(target: Any, step: int) -> Iterator[None]:
    """The model calls inside are denoising step ``step`` (0 = a new generation).

    Samplers that know their step should say it: the engine then reads no timestep (no host
    sync on a GPU) and never guesses branches or generations (rules: ``relcache.caching.steps``).
    ``target`` may also wrap the cached model as ``.transformer``. A no-op when relcache is not
    applied.
    """
    engine = _find_engine(target)
    if engine is None:
        yield
        return
    with engine.caller.at_step(step):
        yield


@contextlib.contextmanager
def generation(target: Any) -> Iterator[None]:
    """The model calls inside are one generation: the cache starts afresh when it is entered,
    so a generation that stopped early (one step, a callback that raised) leaves nothing behind.
    Samplers that know where a generation starts should use it. A no-op when relcache is not
    applied."""
    engine = _find_engine(target)
    if engine is not None:
        engine.reset()
    yield


# the samplers (relcache.sampling) enter these around each generation and each step
register_run_hook(generation)
register_step_hook(at_step)


def _find_engine(target: Any) -> CacheEngine | None:
    """The engine of ``target`` or of the cached model it wraps as ``.transformer``, if any."""
    model = resolve_model(target)
    engine = getattr(model, _ENGINE_ATTR, None)
    inner = getattr(model, "transformer", None)
    if engine is None and isinstance(inner, nn.Module):
        engine = getattr(inner, _ENGINE_ATTR, None)
    return engine


@contextlib.contextmanager
def observe(
    target: Any, fn: Callable[[dict], None], *, shadow: bool = False, teacher_forced: bool = False
) -> Iterator[None]:
    """Call ``fn(record)`` at every cached-module call (analysis; slows sampling down).

    A record holds name, step, branch, full, inputs, outputs and, with ``shadow=True`` at cached
    steps, the ``actual`` outputs of running the module too (the prediction is still returned:
    free-running), and ``anchor``, the module's outputs at its last full step. With
    ``teacher_forced=True`` (needs shadow) the actual outputs are returned instead, so the
    trajectory stays the full-compute one and errors measure the predictor alone.
    """
    if teacher_forced and not shadow:
        raise ValueError("teacher_forced=True needs shadow=True (the actual outputs)")
    with tap(target, Observer(fn, shadow, teacher_forced)):
        yield


@contextlib.contextmanager
def tap(target: Any, hooks: Tap) -> Iterator[None]:
    """Show ``hooks`` (a :class:`relcache.caching.taps.Tap`) the engine's work while the block
    runs: every module call, and the phases of a step (analysis, counters; eager only)."""
    engine = _engine(target)
    if engine.compiled is not None:
        raise ValueError("taps see the eager engine; call relcache.tap before relcache.compile")
    engine.taps.append(hooks)
    try:
        yield
    finally:
        engine.taps.remove(hooks)


def cached_modules(target: Any) -> list[str]:
    """The names of the modules relcache caches in ``target``."""
    return list(_engine(target).names)


def _hook_pipeline(pipe: Any, engine: CacheEngine) -> None:
    """Reset the cache at every pipeline call, via a per-instance subclass (undone by remove)."""
    base = type(pipe)

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
        engine.reset()
        return base.__call__(self, *args, **kwargs)

    pipe.__class__ = type(base.__name__, (base,), {"__call__": __call__, "_relcache_base": base})


def _unhook_pipeline(pipe: Any) -> None:
    base = type(pipe).__dict__.get("_relcache_base")
    if base is not None:
        pipe.__class__ = base
