"""FLOPs of a whole generation of a model with a method, counted from shapes on the meta device
(no weights, no data). The counting convention and the op table: ``relcache.caching.flops``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import relcache
from relcache.caching.flops import StepCosts, count_call
from relcache.caching.methods import CacheMethod

PROBE_STEPS = (0, 1, 2)  # steps 0-2 full (every order formed), step 3 cached


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
        with relcache.at_step(model, i):  # meta tensors carry no timestep to read
            per_step.append(count_call(functools.partial(call, i), scope))
    return per_step


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
        watched = len(relcache.api.cached_modules(model)) if probe is not None else 0
    cached = counts[3] if probe is not None else counts[2]
    if config is not None and config.adaptive:
        if rcs_input_shape is None:
            raise ValueError("an adaptive schedule's FLOPs need the driver input's shape")
        scheduler = config.scheduler()
        # RCS over every module predicts each cached module's input (DiT: all of the driver's size)
        inputs = watched if scheduler.watches_all_inputs else 1
        cached += inputs * scheduler.cached_step_flops(rcs_input_shape)
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
