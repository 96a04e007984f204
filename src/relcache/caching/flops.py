"""FLOPs of a whole generation, counted from shapes on the meta device (no weights, no data).

Convention (the official DiT/TaylorSeer counter's): matmul-class ops (linear, conv, attention
matmuls) at 2 FLOPs per multiply-add, inside the transformer blocks only; the model's own
elementwise ops (LayerNorm, modulate, residual adds) are not counted, for any method. On top, the
operations a caching method adds are counted: the Taylor sum (a batched matmul), the factor
update and, for RFC, the norm reductions of RFE and RCS (2 FLOPs per element read, 1 for a
subtraction).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import relcache
from relcache.caching.methods import CacheMethod

aten = torch.ops.aten


def _per_input_element(flops_per_element: int) -> Callable[..., int]:
    def count(x_shape, *args, **kwargs) -> int:
        return flops_per_element * math.prod(x_shape)

    return count


def _per_output_element(flops_per_element: int) -> Callable[..., int]:
    def count(*args, out_shape=None, **kwargs) -> int:
        return flops_per_element * math.prod(out_shape)

    return count


# the reductions and differences that caching adds at cached steps (see module docstring)
CACHE_OPS = {aten.linalg_vector_norm: _per_input_element(2), aten.sub: _per_output_element(1)}


@dataclass(frozen=True)
class StepCosts:
    """FLOPs of the first full step, a later full step, and a cached step."""

    first: float
    full: float
    cached: float

    def total(self, steps: int, nfc: float) -> float:
        """FLOPs of a ``steps``-step generation with ``nfc`` full steps (fractional for RCS)."""
        if not 1 <= nfc <= steps:
            raise ValueError(f"NFC must lie in [1, {steps}], got {nfc}")
        return self.first + (nfc - 1) * self.full + (steps - nfc) * self.cached


@dataclass(frozen=True)
class FlopsReport:
    """NFC and TFLOPs of one generation."""

    nfc: float
    tflops: float
    full_step_gflops: float
    cached_step_gflops: float
    steps: int
    method: str


def count_steps(model: nn.Module, call: Callable[[int], None], steps: int, scope: str) -> list[int]:
    """FLOPs of each of ``steps`` calls ``call(i)`` (step i), summed over modules ``scope``."""
    per_step = []
    for i in range(steps):
        counter = FlopCounterMode(display=False, custom_mapping=CACHE_OPS)
        with counter, relcache.at_step(model, i):  # meta tensors carry no timestep to read
            call(i)
        counts = counter.get_flop_counts()
        per_step.append(sum(sum(c.values()) for k, c in counts.items() if _in_scope(k, scope)))
    return per_step


def _in_scope(key: str, scope: str) -> bool:
    """FlopCounterMode keys are 'Global' or 'Cls.path.to.module'; match the path's prefix."""
    if scope == "Global":
        return key == "Global"
    path = key.split(".", 1)[1] if "." in key else ""
    parts = path.split(".")
    return len(parts) == len(scope.split(".")) and all(
        s == "*" or s == p for s, p in zip(scope.split("."), parts, strict=False)
    )


PROBE_STEPS = (0, 1, 2)  # steps 0-2 full (every order formed), step 3 cached


def step_costs(
    model: nn.Module,
    config: CacheMethod | None,
    call: Callable[[int], None],
    scope: str,
    rcs_input_shape: tuple[int, ...] | None = None,
) -> StepCosts:
    """Measure a method's full and cached step on ``model`` (build it on the meta device).

    The method's predictor runs on the fixed probe schedule; its scheduler declares what its
    decision adds at a cached step (RCS: the driver input's prediction and error).
    """
    probe = None if config is None else config.with_full_steps(PROBE_STEPS)
    with relcache.cached(model, probe):
        counts = count_steps(model, call, 4, scope)
    cached = counts[3] if probe is not None else counts[2]
    if config is not None and config.adaptive:
        if rcs_input_shape is None:
            raise ValueError("an adaptive schedule's FLOPs need the driver input's shape")
        cached += config.scheduler().cached_step_flops(rcs_input_shape)
    return StepCosts(first=counts[0], full=counts[2], cached=cached)


def dit_flops(
    preset: str,
    config: CacheMethod | None,
    *,
    steps: int = 50,
    nfc: float | None = None,
    batch: int = 2,
    input_size: int | None = None,
) -> FlopsReport:
    """TFLOPs of one ``steps``-step generation of a reference DiT preset (batch 2 = one CFG image).

    ``nfc`` is required for RCS (its schedule depends on the data); otherwise it is the
    method's own schedule length.
    """
    from relcache.models import create_dit

    overrides = {"input_size": input_size} if input_size else {}
    with torch.device("meta"):
        model = create_dit(preset, **overrides)
    cfg = model.config
    x = torch.empty(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    t = torch.zeros(batch, device="meta")

    def call(i: int) -> None:
        model(x, t, y)

    tokens = (cfg.input_size // cfg.patch_size) ** 2
    costs = step_costs(model, config, call, "blocks.*", (batch, tokens, cfg.hidden_size))
    nfc = resolve_nfc(config, steps, nfc)
    return FlopsReport(
        nfc=nfc,
        tflops=costs.total(steps, nfc) / 1e12,
        full_step_gflops=costs.full / 1e9,
        cached_step_gflops=costs.cached / 1e9,
        steps=steps,
        method="full compute" if config is None else config.describe(),
    )


def resolve_nfc(config: CacheMethod | None, steps: int, nfc: float | None) -> float:
    """The NFC to account for: the schedule's length, or the stated one for RCS."""
    if config is None:
        return float(steps)
    schedule = config.schedule(steps)
    if schedule is None:
        if nfc is None:
            raise ValueError(
                f"{config.describe()} decides its full steps from the data: state the budget "
                "with nfc= (--nfc), or pass full_steps=[...] with rcs=False"
            )
        return float(nfc)
    if nfc is not None and abs(nfc - len(schedule)) > 1e-9:
        raise ValueError(f"nfc={nfc} contradicts the schedule's {len(schedule)} full steps")
    return float(len(schedule))
