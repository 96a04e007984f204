"""A run's result row, one builder for demo and bench: NFC, TFLOPs, time, memory and quality."""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from relcache.caching.flops import StepCosts
from relcache.caching.methods import CacheMethod
from relcache.evaluation.flops import step_costs
from relcache.evaluation.quality import Quality
from relcache.evaluation.runner import Generation


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


NONFINITE_NOTE = (
    "null in JSON where a number is not finite: the PSNR of full compute against itself "
    "(identical images, infinite PSNR)"
)


def json_safe(value: object) -> object:
    """``value`` with every non-finite float (inf, nan) replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def to_json(value: object, **kwargs: object) -> str:
    """Strict JSON (never ``Infinity`` / ``NaN``): non-finite numbers become null."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def finite(value: object) -> bool:
    """Whether a row value is a finite number (quality columns may be None or inf)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


class RowBuilder:
    """Rows of runs against one full-compute reference (quality statistics computed once)."""

    def __init__(
        self,
        model: nn.Module,
        ref: Generation,
        labels: torch.Tensor,
        classifier: nn.Module | None,
        steps: int,
    ) -> None:
        self.model, self.ref, self.steps = model, ref, steps
        self.quality = Quality(ref, labels, classifier)
        self.full_costs = method_costs(model, None)
        self.full_tflops = self.full_costs.total(steps, steps) / 1e12
        self._costs: dict[tuple, StepCosts] = {}

    def costs(self, config: CacheMethod | None) -> StepCosts:
        """Step FLOPs; they depend on the method's kind, not on its interval or threshold."""
        if config is None:
            return self.full_costs
        key = config.cost_key()
        if key not in self._costs:
            self._costs[key] = method_costs(self.model, config)
        return self._costs[key]

    def __call__(self, method: str, family: str, label: str, budget: int, target: float,
                 config: CacheMethod | None, gen: Generation,
                 memory: dict | None = None) -> dict:  # fmt: skip
        """The row of one run: identity, costs, speedups, memory, then quality."""
        nfc = gen.mean_nfc
        tflops = self.costs(config).total(self.steps, nfc) / 1e12
        seconds = gen.seconds
        row = {
            "method": method,
            "family": family,
            "label": label,
            "budget": budget,
            "target_nfc": target,
            "nfc": nfc,
            "nfc_std": float(gen.nfc_per_image.std(unbiased=False)),
            "config": repr(config),
            "tflops": tflops,
            "seconds": seconds,
            "ms_per_image": 1e3 * seconds / len(gen.images),
            "flops_speedup": self.full_tflops / tflops,
            "wall_speedup": self.ref.seconds / seconds if seconds > 0 else None,
            "peak_cache_mb": gen.peak_cache_bytes / 2**20,
            **(memory or {}),
        }
        share = gen.schedule_share(self.steps)
        if share is not None:
            row["schedule_share"] = share
        return {**row, **self.quality(gen.images)}
