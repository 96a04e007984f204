"""The paper's analyses (Fig. 1), measured with ``relcache.observe`` on a few samples.

- :func:`prediction_errors` (Fig. 1c): per-module relative L1 error of each method's prediction at
  cached steps, ||O_hat - O||_1 / ||O||_1, against the module actually run on the same input.
- :func:`feature_dynamics` (Fig. 1a-b, §3 RFE): per-step L2 change of every module's input and
  output along a full-compute trajectory, and the RFE ratio s = ||dO||_2 / ||dI||_2 per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

import relcache
from relcache.caching.methods import CacheMethod, TaylorSeer
from relcache.evaluation.runner import per_sample_noise, sample_batch


def _sample(model, seeds, labels, steps, cfg_scale) -> None:
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


def _module_errors(model, config, seeds, labels, steps, cfg_scale) -> dict[str, float]:
    """module -> mean relative L1 error of ``config``'s predictions (shadow-observed)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def record(r: dict) -> None:
        if r["actual"] is None:
            return
        err = relative_l1(r["outputs"][0], r["actual"][0])  # (B,)
        sums[r["name"]] = sums.get(r["name"], 0.0) + float(err.sum())
        counts[r["name"]] = counts.get(r["name"], 0) + err.numel()

    relcache.apply(model, config)
    try:
        with relcache.observe(model, record, shadow=True):
            _sample(model, seeds, labels, steps, cfg_scale)
    finally:
        relcache.remove(model)
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

    relcache.apply(model, TaylorSeer(interval=1))
    try:
        with relcache.observe(model, record):
            _sample(model, seeds, labels, steps, cfg_scale)
    finally:
        relcache.remove(model)
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


# --- plots --------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality_vs_flops(rows: Sequence[dict], path: Path) -> Path:
    """FD2FC and PSNR against TFLOPs, one line per method, full compute as a star (Fig. 1d)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    by_method: dict[str, list[dict]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    for color, (method, group) in enumerate(by_method.items()):
        group = sorted(group, key=lambda r: r["tflops"])
        xs = [r["tflops"] for r in group]
        for ax, key in zip(axes, ("fd2fc", "psnr"), strict=True):
            pts = [(x, r[key]) for x, r in zip(xs, group, strict=True) if _finite(r.get(key))]
            if not pts:
                continue
            style = "*" if method == "full" else "o-"
            ax.plot(
                *zip(*pts, strict=True), style, color=f"C{color % 10}", label=group[0]["family"]
            )
    for ax, name in zip(axes, ("FD2FC (lower is better)", "PSNR vs full compute, dB"), strict=True):
        ax.set_xlabel("TFLOPs per image")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_prediction_errors(errors: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Per-module relative L1 prediction error, one line per method (Fig. 1c)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for label, per_module in errors.items():
        names = list(per_module)
        ax.plot(range(len(names)), [per_module[n] for n in names], "o-", label=label, markersize=3)
    if errors:
        names = list(next(iter(errors.values())))
        step = max(1, len(names) // 16)
        ax.set_xticks(range(0, len(names), step))
        ax.set_xticklabels(names[::step], rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("relative L1 error of the prediction")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_feature_dynamics(
    dynamics: dict[str, dict[str, list[float]]], modules: Sequence[str], path: Path
) -> Path:
    """||dO||, ||dI|| and s = ||dO|| / ||dI|| per step for a few modules (Fig. 1a-b)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name in modules:
        d = dynamics[name]
        steps = range(1, len(d["ratio"]) + 1)
        for ax, key in zip(axes, ("d_out", "d_in", "ratio"), strict=True):
            ax.plot(steps, d[key], label=name)
    titles = (
        "output change ||O(i)-O(i-1)||",
        "input change ||I(i)-I(i-1)||",
        "s = ||dO|| / ||dI||",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xlabel("step i")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
