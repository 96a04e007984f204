"""Presenting results: a fixed-width table, JSON rows, and image grids (rows = methods)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

COLUMNS = (
    ("label", "{}", 22),
    ("target_nfc", "{:.0f}", 6),
    ("nfc", "{:.2f}", 6),
    ("tflops", "{:.4f}", 8),
    ("seconds", "{:.1f}", 7),
    ("flops_speedup", "{:.2f}x", 7),
    ("wall_speedup", "{:.2f}x", 7),
    ("psnr", "{:.2f}", 6),
    ("ssim", "{:.4f}", 6),
    ("fd2fc", "{:.3f}", 7),
    ("fd", "{:.3f}", 7),
    ("class_accuracy", "{:.3f}", 6),
)
HEADERS = {
    "target_nfc": "budget",
    "flops_speedup": "FLOPs",
    "wall_speedup": "wall",
    "class_accuracy": "acc",
    "seconds": "sec",
    "fd2fc": "FD2FC",
    "fd": "FD",
}


def _cell(fmt: str, value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return fmt.format(value)


def format_table(rows: Sequence[dict]) -> str:
    """Rows as an aligned text table with the demo/bench columns."""
    head = "  ".join(
        HEADERS.get(k, k).rjust(w) if k != "label" else "method".ljust(w) for k, _, w in COLUMNS
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = [
            _cell(f, row.get(k)).rjust(w) if k != "label" else str(row[k]).ljust(w)
            for k, f, w in COLUMNS
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def format_markdown(
    rows: Sequence[dict], columns: Sequence[str], formats: dict[str, str] | None = None
) -> str:
    """Rows as a Markdown table of the given columns (``formats`` adds or overrides formats)."""
    fmts = {k: f for k, f, _ in COLUMNS} | (formats or {})
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            "| " + " | ".join(_cell(fmts.get(k, "{}"), row.get(k)) for k in columns) + " |"
        )
    return "\n".join(lines)


def save_grid(
    images: Sequence[torch.Tensor], labels: Sequence[str], path: str | Path, columns: int = 16
) -> Path:
    """One row per method (same seeds across a column); images (N, C, H, W) in [-1, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
