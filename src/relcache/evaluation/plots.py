"""Figures: quality against TFLOPs, prediction error per module, feature dynamics, image grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from relcache.evaluation.rows import finite


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
            pts = [(x, r[key]) for x, r in zip(xs, group, strict=True) if finite(r.get(key))]
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


def save_grid(
    images: Sequence[torch.Tensor], labels: Sequence[str], path: str | Path, columns: int = 16
) -> Path:
    """One row per method (same seeds across a column); images (N, C, H, W) in [-1, 1]."""
    plt = _pyplot()
    rows = [((im[:columns].clamp(-1, 1) + 1) / 2) for im in images]  # (n, C, H, W) in [0, 1]
    n = rows[0].shape[0]
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(n * 0.6 + 2.2, len(rows) * 0.75 + 0.2), squeeze=False
    )
    for ax, row, label in zip(axes[:, 0], rows, labels, strict=True):
        strip = torch.cat(list(row), dim=-1)  # (C, H, n*W)
        ax.imshow(strip.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
