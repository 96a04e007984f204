"""Text and Markdown tables of result rows, with the demo/bench columns' formats."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    """Rows as an aligned text table with the demo/bench columns (the method column as wide as
    its longest label)."""
    wide = max([len(str(row["label"])) for row in rows], default=0)
    columns = [(k, f, max(w, wide) if k == "label" else w) for k, f, w in COLUMNS]
    head = "  ".join(
        HEADERS.get(k, k).rjust(w) if k != "label" else "method".ljust(w) for k, _, w in columns
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = [
            _cell(f, row.get(k)).rjust(w) if k != "label" else str(row[k]).ljust(w)
            for k, f, w in columns
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
