"""The paper's analyses (Fig. 1), measured with ``relcache.observe`` on a few samples.

- :func:`prediction_errors` (Fig. 1c): per-module relative L1 error of each method's prediction at
  cached steps, ||O_hat - O||_1 / ||O||_1, against the module actually run on the same input.
- :func:`feature_dynamics` (Fig. 1a-b, §3 RFE): per-step L2 change of every module's input and
  output along a full-compute trajectory, and the RFE ratio s = ||dO||_2 / ||dI||_2 per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

import relcache
from relcache.caching.methods import CacheMethod, TaylorSeer
from relcache.evaluation.runner import per_sample_noise, sample_batch


def _sample(
    model: nn.Module, seeds: Sequence[int], labels: torch.Tensor, steps: int, cfg_scale: float
) -> None:
    """One CFG generation of the given seeds and labels (the records are what matters)."""
    c = model.config
    noise = per_sample_noise(seeds, (c.in_channels, c.input_size, c.input_size))
    sample_batch(model, noise, labels, steps=steps, cfg_scale=cfg_scale)


def relative_l1(pred: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Per-row ||pred - actual||_1 / ||actual||_1 over all but the batch dim. (B,)"""
    diff = (pred.float() - actual.float()).flatten(1).abs().sum(1)  # (B,)
    return diff / actual.float().flatten(1).abs().sum(1).clamp_min(1e-12)


def prediction_errors(
    model: nn.Module,
    configs: dict[str, CacheMethod],
    seeds: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """label -> module -> mean relative L1 prediction error over cached steps and rows.

    Uses ``observe(shadow=True)``; steps where only some rows are full (RCS) are not observed.
    """
    return {
        label: _module_errors(model, config, seeds, labels, steps, cfg_scale)
        for label, config in tqdm(configs.items(), desc="prediction error", disable=not progress)
    }


def _module_errors(
    model: nn.Module,
    config: CacheMethod,
    seeds: Sequence[int],
    labels: torch.Tensor,
    steps: int,
    cfg_scale: float,
) -> dict[str, float]:
    """module -> mean relative L1 error of ``config``'s predictions (shadow-observed)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def record(r: dict) -> None:
        if r["actual"] is None:
            return
        err = relative_l1(r["outputs"][0], r["actual"][0])  # (B,)
        sums[r["name"]] = sums.get(r["name"], 0.0) + float(err.sum())
        counts[r["name"]] = counts.get(r["name"], 0) + err.numel()

    with relcache.cached(model, config), relcache.observe(model, record, shadow=True):
        _sample(model, seeds, labels, steps, cfg_scale)
    return {name: sums[name] / counts[name] for name in sums}


def feature_dynamics(
    model: nn.Module,
    seeds: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
) -> dict[str, dict[str, list[float]]]:
    """module -> {"d_in", "d_out", "ratio"}: per step i >= 1, the mean over rows of
    ||I(i) - I(i-1)||_2, ||O(i) - O(i-1)||_2 and their ratio s (RFE, §3), full compute."""
    prev: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    out: dict[str, dict[str, list[float]]] = {}

    def record(r: dict) -> None:
        key = (r["branch"], r["name"])
        x, y = r["inputs"][0].float(), r["outputs"][0].float()  # (B, T, D) each
        if key in prev:
            d_in = (x - prev[key][0]).flatten(1).norm(dim=1)  # (B,)
            d_out = (y - prev[key][1]).flatten(1).norm(dim=1)  # (B,)
            ratio = d_out / d_in.clamp_min(1e-12)  # (B,)
            entry = out.setdefault(r["name"], {"d_in": [], "d_out": [], "ratio": []})
            entry["d_in"].append(float(d_in.mean()))
            entry["d_out"].append(float(d_out.mean()))
            entry["ratio"].append(float(ratio.mean()))
        prev[key] = (x, y)

    with relcache.cached(model, TaylorSeer(interval=1)), relcache.observe(model, record):
        _sample(model, seeds, labels, steps, cfg_scale)
    return out


def coefficient_of_variation(values: Sequence[float]) -> float:
    """std / mean (population std); nan for an empty list or zero mean."""
    if not values:
        return math.nan
    t = torch.tensor(values, dtype=torch.float64)
    mean = float(t.mean())
    return float(t.std(unbiased=False)) / mean if mean else math.nan


def ratio_stability(dynamics: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """module -> mean s over steps and its coefficient of variation (the paper reports ~2%)."""
    return {
        name: {
            "mean_ratio": sum(d["ratio"]) / len(d["ratio"]),
            "cv": coefficient_of_variation(d["ratio"]),
        }
        for name, d in dynamics.items()
        if d["ratio"]
    }
