"""Figures: quality against TFLOPs, prediction error per module, feature dynamics, image grids,
and the diagnosis (increment errors, teacher forcing, full-step schedules, step windows)."""

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


def plot_quality_vs_flops(
    rows: Sequence[dict], path: Path, x: str = "tflops", xlabel: str = "TFLOPs per image"
) -> Path:
    """FD2FC and PSNR against ``x`` (FLOPs), one line per method, full compute as a star
    (Fig. 1d)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    by_method: dict[str, list[dict]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    for color, (method, group) in enumerate(by_method.items()):
        group = sorted(group, key=lambda r: r[x])
        xs = [r[x] for r in group]
        for ax, key in zip(axes, ("fd2fc", "psnr"), strict=True):
            pts = [(x, r[key]) for x, r in zip(xs, group, strict=True) if finite(r.get(key))]
            if not pts:
                continue
            style = "*" if method == "full" else "o-"
            ax.plot(
                *zip(*pts, strict=True), style, color=f"C{color % 10}", label=group[0]["family"]
            )
    for ax, name in zip(axes, ("FD2FC (lower is better)", "PSNR vs full compute, dB"), strict=True):
        ax.set_xlabel(xlabel)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8 if len(by_method) <= 10 else 6)
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


def mean_of(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not None (None if there are none)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def module_mean(per_module: dict[str, list[float | None]]) -> list[float | None]:
    """Per step: the mean over modules (None where no module was cached)."""
    columns = zip(*per_module.values(), strict=True)
    return [mean_of(column) for column in columns]


def _points(values: Sequence[float | None]) -> tuple[list[int], list[float]]:
    """(steps, values) where a value was measured."""
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    return [i for i, _ in pts], [v for _, v in pts]


def _finish(fig, axes, path: Path) -> Path:
    """Grid, step axis, layout; save and close."""
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_increment_errors(methods: dict[str, dict], path: Path, title: str) -> Path:
    """Signed magnitude error and direction error of the predicted change per step, averaged
    over modules, one line per method."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for label, errors in methods.items():
        for ax, key in zip(axes, ("magnitude", "direction"), strict=True):
            ax.plot(*_points(module_mean(errors[key])), "o-", markersize=3, label=label)
    axes[0].axhline(0.0, color="k", linewidth=0.8)
    axes[0].set_ylabel("(||O_hat-O(i)|| - ||O-O(i)||) / ||O-O(i)||")
    axes[1].set_ylabel("1 - cos(O_hat-O(i), O-O(i))")
    for ax, name in zip(axes, ("magnitude error (signed)", "direction error"), strict=True):
        ax.set_xlabel("step i")
        ax.set_title(f"{name}, {title}", fontsize=10)
    axes[1].legend(fontsize=7)
    return _finish(fig, axes, path)


def plot_teacher_forcing(methods: dict[str, dict], path: Path, title: str) -> Path:
    """Relative L1 error per step, teacher-forced (dashed) and free-running (solid)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for color, (label, errors) in enumerate(methods.items()):
        c = f"C{color % 10}"
        ax.plot(*_points(errors["free_running"]), "o-", color=c, markersize=3, label=label)
        ax.plot(*_points(errors["teacher_forced"]), "x--", color=c, markersize=4)
    ax.set_yscale("log")
    ax.set_xlabel("step i")
    ax.set_ylabel("||O_hat - O||_1 / ||O||_1")
    ax.set_title(f"{title}: free-running (solid) vs teacher-forced (dashed)", fontsize=10)
    ax.legend(fontsize=7)
    return _finish(fig, [ax], path)


def plot_schedules(shares: dict[int, dict[str, list[float]]], path: Path) -> Path:
    """Per budget (one panel each): the fraction of samples computing step i fully, one line
    per method."""
    plt = _pyplot()
    n = max(len(shares), 1)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.9 * n + 0.6), sharex=True, squeeze=False)
    for ax, (budget, methods) in zip(axes[:, 0], shares.items(), strict=False):
        for label, share in methods.items():
            ax.step(range(len(share)), share, where="mid", label=label, linewidth=1.2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(f"NFC {budget}\nshare full", fontsize=8)
    axes[0, 0].legend(fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("step i")
    return _finish(fig, list(axes[:, 0]), path)


def plot_step_windows(windows: Sequence[dict], path: Path, title: str) -> Path:
    """PSNR and FD2FC against full compute when caching only inside each window of steps."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [f"[{w['start']},{w['stop']})" for w in windows]
    for ax, key, name in zip(axes, ("psnr", "fd2fc"), ("PSNR, dB", "FD2FC"), strict=True):
        values = [w.get(key) if finite(w.get(key)) else 0.0 for w in windows]
        ax.bar(range(len(windows)), values, color="C0")
        ax.set_xticks(range(len(windows)))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_xlabel("cached window of steps")
        ax.set_ylabel(name)
        ax.set_title(f"{name} vs full compute, {title}", fontsize=9)
    return _finish(fig, axes, path)


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
