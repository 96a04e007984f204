"""diffusers' own caching hooks (``diffusers.hooks``, 0.42) as peers.

``DiTTransformer2DModel`` has no ``CacheMixin`` (no ``enable_cache``), so the peers call the same
``apply_*`` functions ``enable_cache`` calls and set the same per-call ``CacheContext`` a pipeline's
``transformer.cache_context(...)`` sets (name "cond": CFG runs as one batched call, as in the
project's sampler; step index, step count, timestep and sigma as diffusers' pipelines pass them).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from relcache.peers import Knob, Peer, StepInfo, register_peer

ATTENTION = r"transformer_blocks\.\d+\.attn1"
MLP = r"transformer_blocks\.\d+\.ff"


@dataclass
class DiffusersPeer(Peer):
    """A ``diffusers.hooks`` cache: its config class and ``apply_*`` function, by name."""

    library: str = "diffusers"
    config_name: str = ""  # e.g. "FirstBlockCacheConfig"
    apply_name: str = ""  # e.g. "apply_first_block_cache"
    base: dict[str, Any] = field(default_factory=dict)  # what this model needs beyond defaults
    needs_timestep: bool = False  # the config takes current_timestep_callback
    for_budget: dict[str, Any] = field(default_factory=dict)  # knobs set when tuned to a budget
    warmup_knob: str | None = None  # its forced-full first steps (set to relcache's warmup)
    _now: dict[str, Any] = field(default_factory=dict, repr=False)

    def budget_knobs(self, steps: int, warmup: int) -> dict[str, Any]:
        """``for_budget`` and, where it has one, its warmup set to ``warmup`` steps."""
        return {**self.for_budget, **self.warmup_knobs(steps, warmup)}

    def warmup_knobs(self, steps: int, warmup: int) -> dict[str, Any]:
        """``warmup_knob`` set to ``warmup`` steps (none without one)."""
        if self.warmup_knob == "retention_ratio":  # MagCache: int(ratio * steps + 0.5) steps
            return {"retention_ratio": warmup / steps}
        return {} if self.warmup_knob is None else {self.warmup_knob: warmup}

    def config(self, steps: int) -> Any:
        """The diffusers config: documented defaults, then ``base``, then ``knobs``."""
        import diffusers.hooks as hooks

        kwargs = {**self.base, **self.knobs}
        if self.needs_timestep:
            kwargs["current_timestep_callback"] = lambda: self._now["t"]
        if "num_inference_steps" in _fields(getattr(hooks, self.config_name)):
            kwargs.setdefault("num_inference_steps", steps)
        return getattr(hooks, self.config_name)(**kwargs)

    def apply(self, transformer: nn.Module, steps: int) -> None:
        """``diffusers.hooks.apply_*`` as ``enable_cache`` would call it."""
        import diffusers.hooks as hooks

        getattr(hooks, self.apply_name)(transformer, self.config(steps))
        _registry(transformer).invalidate_child_registries_cache()

    def remove(self, transformer: nn.Module) -> None:
        """Remove every hook this peer registered (``disable_cache`` does the same, by name)."""
        registry = _registry(transformer)
        names = {name for child in _registries(transformer) for name in child.hooks}
        for name in sorted(names):
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()

    def reset(self, transformer: nn.Module) -> None:
        """``reset_stateful_hooks``: what ``CacheMixin._reset_stateful_cache`` does."""
        _registry(transformer).reset_stateful_hooks(recurse=True)

    @contextlib.contextmanager
    def step(self, transformer: nn.Module, info: StepInfo) -> Iterator[None]:
        """The pipeline's ``cache_context("cond", step_index=..., sigma=...)`` around a call
        (``CacheMixin.cache_context``: the DiT model has no ``CacheMixin`` to call it on)."""
        from diffusers import CacheMixin

        self._now["t"] = info.timestep
        with CacheMixin.cache_context(transformer, "cond", step_index=info.index,
                                      num_inference_steps=info.steps, timestep=info.timestep,
                                      sigma=info.sigma):  # fmt: skip
            yield

    def cache_roots(self, transformer: nn.Module) -> list[Any]:
        """The hook registries (their states hold the cached tensors)."""
        return _registries(transformer)


@dataclass
class MagCachePeer(DiffusersPeer):
    """MagCache needs per-step magnitude ratios, measured by its own calibration run."""

    def calibrate(self, transformer: nn.Module, steps: int, generate: Any) -> DiffusersPeer:
        """One generation in MagCache's calibration mode; the peer with the measured ratios."""
        probe = self.with_knobs(calibrate=True)
        ratios = _capture_mag_ratios(lambda: generate(probe))
        return self.with_knobs(mag_ratios=ratios)


def _capture_mag_ratios(run: Any) -> list[float]:
    """MagCache logs its calibration result at INFO on its logger: read it from there."""
    logger = logging.getLogger("diffusers.hooks.mag_cache")
    found: list[list[float]] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = re.search(r"Calibration Results: \[(.*)\]", record.getMessage())
            if match:
                found.append([float(v) for v in match.group(1).split(",")])

    handler, level = Grab(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(None):  # it also prints them
            run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    if not found:
        raise RuntimeError("MagCache's calibration run logged no ratios")
    return found[-1]


def _image_latents(module: nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """SeaCache's ``raw_vision_callback`` for images: each sample's latent as (C, 1, H, W)."""
    x = kwargs.get("hidden_states", args[0] if args else None)  # (N, C, H, W)
    return [sample.unsqueeze(1) for sample in x]  # N x (C, 1, H, W)


def _registry(transformer: nn.Module) -> Any:
    from diffusers.hooks import HookRegistry

    return HookRegistry.check_if_exists_or_initialize(transformer)


def _registries(transformer: nn.Module) -> list[Any]:
    """The ``HookRegistry`` of every module that has one, found by type, not attribute name."""
    from diffusers.hooks import HookRegistry

    found = (v for m in transformer.modules() for v in vars(m).values())
    return [v for v in found if isinstance(v, HookRegistry)]


def _fields(cls: type) -> set[str]:
    return set(getattr(cls, "__dataclass_fields__", {}))


THRESHOLD = Knob("threshold", 1e-3, 4.0)

register_peer(
    DiffusersPeer(
        name="diffusers-taylorseer",
        label="diffusers TaylorSeer",
        config_name="TaylorSeerCacheConfig",
        apply_name="apply_taylorseer_cache",
        # its default module patterns ("^transformer_blocks.*attn", re.fullmatch) match no module
        # of DiTTransformer2DModel (the attention is "attn1"): name the attention modules it means
        base={"cache_identifiers": [ATTENTION]},
        # tuned: the modules and order relcache's TaylorSeer m=2 uses, float32 factors
        for_budget={
            "cache_identifiers": [ATTENTION, MLP],
            "max_order": 2,
            "taylor_factors_dtype": torch.float32,
        },  # fmt: skip
        warmup_knob="disable_cache_before_step",
        knob=Knob("cache_interval", 1, 25, integer=True, log=False),
        space={"max_order": (1,)},  # 2 (relcache's m=2) first, then its default 1
        warmups=(4,),
        note="defaults: its default module patterns match no module of DiTTransformer2DModel, "
        "so the attention modules (attn1) are named; tuned: attention and MLP (the modules "
        "relcache caches), float32 factors; searched: order 2 or 1 (its default) x 2 or 4 "
        "warmup steps, the interval tuned at each point",
    )
)
register_peer(
    DiffusersPeer(
        name="diffusers-fbc",
        label="diffusers FirstBlockCache",
        config_name="FirstBlockCacheConfig",
        apply_name="apply_first_block_cache",
        knob=THRESHOLD,
        note="defaults as documented; tuned: the threshold alone (FirstBlockCacheConfig "
        "documents no other knob, so its search space is that one point)",
    )
)
register_peer(
    MagCachePeer(
        name="diffusers-magcache",
        label="diffusers MagCache",
        config_name="MagCacheConfig",
        apply_name="apply_mag_cache",
        for_budget={"max_skip_steps": 1000},
        warmup_knob="retention_ratio",
        knob=THRESHOLD,
        space={"max_skip_steps": (3, 6)},  # no cap (1000) first, then its default 3, and 6
        warmups=(4,),
        note="mag_ratios from its own calibration mode on the calibration seeds (both rows); "
        "searched: 2 or 4 retained steps x no cap, 3 (its default) or 6 consecutive skips, the "
        "threshold tuned at each point",
    )
)
register_peer(
    DiffusersPeer(
        name="diffusers-pab",
        label="diffusers PAB",
        config_name="PyramidAttentionBroadcastConfig",
        apply_name="apply_pyramid_attention_broadcast",
        # no skip range by default means no caching: 2 is the value of diffusers' own example
        base={"spatial_attention_block_skip_range": 2},
        needs_timestep=True,
        knob=Knob("spatial_attention_block_skip_range", 2, 25, integer=True, log=False),
        # the timestep window where attention may be skipped: as documented, then widened to the
        # last steps, to the first ones, to all (DiT has no temporal or cross attention)
        space={
            "spatial_attention_timestep_skip_range": (
                (100, 800),
                (-1, 800),
                (100, 1000),
                (-1, 1000),
            )
        },  # fmt: skip
        note="defaults: skip range 2 (without one PAB caches nothing; 2 is diffusers' own "
        "example), timestep window (100, 800); searched: the window (100, 800), (-1, 800), "
        "(100, 1000) or (-1, 1000), the skip range tuned at each point (attention only: the "
        "MLPs always run, so low budgets are out of its reach)",
    )
)
register_peer(
    DiffusersPeer(
        name="diffusers-fastercache",
        label="diffusers FasterCache",
        config_name="FasterCacheConfig",
        apply_name="apply_faster_cache",
        needs_timestep=True,
        knob=Knob("spatial_attention_block_skip_range", 2, 25, integer=True, log=False),
        note="video models only: its CFG-branch approximation permutes 5-D latents",
    )
)
register_peer(
    DiffusersPeer(
        name="diffusers-seacache",
        label="diffusers SeaCache",
        config_name="SeaCacheConfig",
        apply_name="apply_sea_cache",
        base={"raw_vision_callback": _image_latents},  # built-in adapters: Cosmos / Wan only
        for_budget={"max_consecutive_cached": 0},  # 0: no cap
        warmup_knob="retention_steps",
        knob=THRESHOLD,
        space={"max_consecutive_cached": (3, 6)},  # no cap (0) first
        warmups=(4,),
        note="its built-in latent adapters are for Cosmos / Wan: the image latents are passed as "
        "one-frame videos (raw_vision_callback); sigma: the DDPM noise level as a flow-matching "
        "sigma; searched: 2 or 4 retained steps x no cap, 3 or 6 consecutive cached steps (its "
        "default 2 computes every third step at least), the threshold tuned at each point",
    )
)
