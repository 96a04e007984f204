"""The paper's analyses (Fig. 1), measured with ``relcache.observe`` on a few samples.

- :func:`prediction_errors` (Fig. 1c): per-module relative L1 error of each method's prediction at
  cached steps, ||O_hat - O||_1 / ||O||_1, against the module actually run on the same input.
- :func:`feature_dynamics` (Fig. 1a-b, §3 RFE): per-step L2 change of every module's input and
  output along a full-compute trajectory, and the RFE ratio s = ||dO||_2 / ||dI||_2 per step.

The diagnosis (issue 10), on the same samples:

- :func:`step_errors`: per module and step, the relative L1 error and the split of the predicted
  change O_hat - O(i) against the true one O - O(i) into magnitude and direction errors,
  free-running or teacher-forced (:func:`diagnosis` runs both for each method).
- :func:`step_windows`: final quality when caching only inside one window of steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import relcache
from relcache.caching.methods import CacheMethod, TaylorSeer
from relcache.evaluation.runner import per_sample_noise, run_method, sample_batch


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


# --- the diagnosis (issue 10) --------------------------------------------------------------------

STEP_METRICS = ("relative_l1", "magnitude", "direction")


def increment_split(
    pred: torch.Tensor, actual: torch.Tensor, anchor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: signed magnitude error (||O_hat - O(i)|| - ||O - O(i)||) / ||O - O(i)|| and
    direction error 1 - cos(O_hat - O(i), O - O(i)) (0 for a zero predicted change). (B,), (B,)"""
    d_hat = (pred.double() - anchor.double()).flatten(1)  # (B, N) predicted change
    d = (actual.double() - anchor.double()).flatten(1)  # (B, N) true change
    norm_hat, norm = d_hat.norm(dim=1), d.norm(dim=1)  # (B,) each
    magnitude = (norm_hat - norm) / norm.clamp_min(1e-12)  # (B,)
    direction = 1 - F.cosine_similarity(d_hat, d, dim=1, eps=1e-30)  # (B,)
    return magnitude, direction


class StepAccumulator:
    """Sums and counts of per-row values keyed by (metric, module, step)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.sums: dict[tuple[str, str, int], float] = {}
        self.counts: dict[tuple[str, str, int], int] = {}

    def add(self, metric: str, name: str, step: int, values: torch.Tensor) -> None:
        """Add the per-row ``values`` (B,) of one module call."""
        key = (metric, name, step)
        self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
        self.counts[key] = self.counts.get(key, 0) + values.numel()

    def per_module(self, metric: str) -> dict[str, list[float | None]]:
        """module -> per-step mean over rows (None at steps never cached)."""
        names = dict.fromkeys(n for m, n, _ in self.sums if m == metric)
        steps = range(self.steps)
        return {name: [self._mean([(metric, name, i)]) for i in steps] for name in names}

    def per_step(self, metric: str) -> list[float | None]:
        """Per step: the mean over modules and rows (None at steps never cached)."""
        keys = [[k for k in self.sums if k[0] == metric and k[2] == i] for i in range(self.steps)]
        return [self._mean(ks) for ks in keys]

    def _mean(self, keys: list[tuple[str, str, int]]) -> float | None:
        n = sum(self.counts.get(k, 0) for k in keys)
        return sum(self.sums[k] for k in keys if k in self.sums) / n if n else None


def step_errors(
    model: nn.Module,
    config: CacheMethod,
    seeds: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
    teacher_forced: bool = False,
) -> StepAccumulator:
    """Per (module, step): relative L1 error and magnitude / direction errors of ``config``'s
    predictions at cached steps (steps where only some rows are full are not observed)."""
    acc = StepAccumulator(steps)

    def record(r: dict) -> None:
        if r["actual"] is None or r["anchor"] is None:
            return
        pred, actual, anchor = r["outputs"][0], r["actual"][0], r["anchor"][0]  # (B, ...) each
        magnitude, direction = increment_split(pred, actual, anchor)
        acc.add("relative_l1", r["name"], r["step"], relative_l1(pred, actual))
        acc.add("magnitude", r["name"], r["step"], magnitude)
        acc.add("direction", r["name"], r["step"], direction)

    observing = relcache.observe(model, record, shadow=True, teacher_forced=teacher_forced)
    with relcache.cached(model, config), observing:
        _sample(model, seeds, labels, steps, cfg_scale)
    return acc


def diagnosis(
    model: nn.Module,
    configs: dict[str, CacheMethod],
    seeds: Sequence[int],
    labels: torch.Tensor,
    *,
    steps: int,
    cfg_scale: float,
    progress: bool = True,
) -> tuple[dict, dict]:
    """(increment_error, teacher_forcing) of each method, as results.json keeps them.

    increment_error: label -> {"magnitude", "direction"} -> module -> per-step mean (free
    running); teacher_forcing: label -> {"teacher_forced", "free_running"} -> per-step relative
    L1 error, mean over modules and rows.
    """
    increments, forcing = {}, {}
    for label, config in tqdm(configs.items(), desc="diagnosis", disable=not progress):
        kw = dict(steps=steps, cfg_scale=cfg_scale)
        free = step_errors(model, config, seeds, labels, **kw)
        forced = step_errors(model, config, seeds, labels, **kw, teacher_forced=True)
        increments[label] = {m: free.per_module(m) for m in ("magnitude", "direction")}
        forcing[label] = {
            "teacher_forced": forced.per_step("relative_l1"),
            "free_running": free.per_step("relative_l1"),
        }
    return increments, forcing


def window_schedule(start: int, stop: int, steps: int, every: int) -> list[int]:
    """Full steps when caching only inside [start, stop): every step outside, and one full step
    every ``every`` inside (from ``start``)."""
    return [i for i in range(steps) if not start <= i < stop or (i - start) % every == 0]


def step_windows(
    model: nn.Module,
    seeds: Sequence[int],
    labels: torch.Tensor,
    score: Callable[[torch.Tensor], dict],
    *,
    steps: int,
    cfg_scale: float,
    batch_size: int = 64,
    first: int = 2,
    width: int = 8,
    order: int = 2,
    progress: bool = True,
) -> list[dict]:
    """Final quality when caching only inside [a, a + width) (a = first, first + width, ...):
    TaylorSeer of ``order`` with one full step every ``width`` there, full compute elsewhere.

    ``score(images)`` returns the quality of (N, C, H, W) images against full compute (PSNR,
    FD2FC); each window's row holds start, stop, its NFC and the score.
    """
    rows = []
    starts = range(first, steps, width)
    for start in tqdm(starts, desc="step windows", disable=not progress):
        stop = min(start + width, steps)
        full = window_schedule(start, stop, steps, width)
        config = TaylorSeer(order=order, full_steps=full)
        gen = run_method(model, config, seeds, labels, steps=steps, cfg_scale=cfg_scale,
                         batch_size=batch_size, progress=False)  # fmt: skip
        rows.append({"start": start, "stop": stop, "nfc": gen.mean_nfc, **score(gen.images)})
    return rows
