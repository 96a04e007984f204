"""Matching methods to a full-step budget: fixed-schedule intervals and per-image FLOPs."""

from __future__ import annotations

import torch
from torch import nn

from relcache.caching.methods import CacheMethod, fixed_schedule
from relcache.flops import StepCosts, step_costs


def interval_for_nfc(target: float, steps: int, warmup: int = 2) -> int:
    """The fixed-schedule interval N whose NFC is closest to ``target``.

    Ties go to the smallest N, as in the paper's table (NFC 8 at 50 steps is N = 7, not 8).
    """
    return min(
        range(1, steps + 1), key=lambda n: (abs(len(fixed_schedule(steps, n, warmup)) - target), n)
    )


def method_costs(model: nn.Module, config: CacheMethod | None, batch: int = 2) -> StepCosts:
    """Full and cached step FLOPs of ``model`` for one CFG image, counted on the meta device."""
    from relcache.models import create_dit

    with torch.device("meta"):
        probe = create_dit(model.config)
    c = model.config
    x = torch.empty(batch, c.in_channels, c.input_size, c.input_size, device="meta")
    t, y = torch.zeros(batch, device="meta"), torch.zeros(batch, dtype=torch.long, device="meta")
    tokens = (c.input_size // c.patch_size) ** 2
    return step_costs(
        probe, config, lambda i: probe(x, t, y), "blocks.*", (batch, tokens, c.hidden_size)
    )
