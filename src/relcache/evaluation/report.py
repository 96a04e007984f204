"""Writing results: text and Markdown tables, and the bench's report.md and figures.

The bench report is a pure function of ``results.json``'s content and the settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from relcache.evaluation import plots
from relcache.evaluation.rows import finite
from relcache.evaluation.settings import BenchSettings

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


# --- the bench report ---------------------------------------------------------------------------

TABLE_COLUMNS = (
    "label", "budget", "nfc", "nfc_std", "tflops", "flops_speedup", "ms_per_image",
    "wall_speedup", "psnr", "ssim", "fd2fc", "fd", "class_accuracy", "peak_cache_mb",
    "peak_rss_mb",
)  # fmt: skip
TABLE_FORMATS = {
    "budget": "{}",
    "nfc_std": "{:.2f}",
    "ms_per_image": "{:.1f}",
    "peak_cache_mb": "{:.2f}",
    "peak_rss_mb": "{:.0f}",
    "peak_gpu_mb": "{:.0f}",
    "threshold": "{:.4g}",
    "calibration_nfc": "{:.2f}",
}


def _columns(rows: list[dict]) -> tuple[str, ...]:
    """The table's columns; GPU memory only when measured."""
    gpu = any(r.get("peak_gpu_mb") is not None for r in rows)
    return TABLE_COLUMNS + (("peak_gpu_mb",) if gpu else ())


def ordered_rows(results: dict, s: BenchSettings) -> list[dict]:
    """Full compute, then each budget's methods in the order asked for."""
    runs = results["runs"]
    rows = [runs["full"]] if "full" in runs else []
    for budget in s.budgets:
        rows += [runs[f"{m}@{budget}"] for m in s.methods if f"{m}@{budget}" in runs]
    return rows


FINDING_METRICS = (("fd2fc", "FD2FC", min), ("psnr", "PSNR", max), ("fd", "FD", min))


def findings(rows: list[dict], s: BenchSettings) -> list[str]:
    """Per budget: the best method on FD2FC / PSNR / FD, and RFC against TaylorSeer and FORA."""
    lines = []
    for budget in s.budgets:
        group = [r for r in rows if r["method"] != "full" and r["budget"] == budget]
        if group:
            parts = _best_methods(group) + _rfc_comparisons(group)
            lines.append(f"- **NFC {budget}**: " + "; ".join(parts) + ".")
    return lines


def _best_methods(group: list[dict]) -> list[str]:
    """For each metric: the best method and its margin over the next best."""
    parts = []
    for key, name, pick in FINDING_METRICS:
        valid = [r for r in group if finite(r.get(key))]
        if len(valid) < 2:
            continue
        best = pick(valid, key=lambda r: r[key])
        second = pick([r for r in valid if r is not best], key=lambda r: r[key])
        parts.append(
            f"best {name} {best['label']} ({best[key]:.3g}, {_delta(best[key], second[key])} "
            f"vs next best {second['label']} {second[key]:.3g})"
        )
    return parts


def _rfc_comparisons(group: list[dict]) -> list[str]:
    """RFC m against TaylorSeer m (and FORA) on each metric and wall-clock, for m = 2, 1."""
    by = {r["method"]: r for r in group}
    fora, parts = by.get("fora"), []
    for m in (2, 1):
        rfc, ts = by.get(f"rfc{m}"), by.get(f"taylorseer{m}")
        if rfc is None or ts is None:
            continue
        cmp = [
            f"{name} RFC {rfc[key]:.3g} vs TaylorSeer {ts[key]:.3g}"
            + (f" vs FORA {fora[key]:.3g}" if fora else "")
            for key, name, _ in FINDING_METRICS
            if finite(rfc.get(key)) and finite(ts.get(key))
        ]
        overhead = (rfc["seconds"] / ts["seconds"] - 1) * 100 if ts["seconds"] else math.nan
        cmp.append(
            f"wall-clock overhead of RFC over TaylorSeer {overhead:+.1f}% "
            f"(NFC {rfc['nfc']:.2f} vs {ts['nfc']:.2f})"
        )
        parts.append(f"m={m}: " + "; ".join(cmp))
    return parts


def _delta(a: float, b: float) -> str:
    """Relative change of a against b, in percent (absolute when b is 0)."""
    return f"{(a - b) / abs(b) * 100:+.0f}%" if b else f"{a - b:+.3g}"


def grid_path(out: Path, run_id: str) -> Path:
    """Where a run's first images are kept (so a resumed bench can redraw the grids)."""
    return out / "grid_images" / f"{run_id.replace('@', '_nfc')}.pt"


def write_report(results: dict, s: BenchSettings) -> Path:
    """Write report.md, the plots and the image grids of ``results`` into ``s.out``."""
    out = s.out
    out.mkdir(parents=True, exist_ok=True)
    rows = ordered_rows(results, s)
    plots.plot_quality_vs_flops(rows, out / "quality_vs_tflops.png")
    for budget in s.budgets:
        _write_grid(results, s, budget)
    a = results.get("analysis")
    if a:
        _write_analysis_plots(a, out)
    path = out / "report.md"
    path.write_text(report_markdown(results, s))
    return path


def _write_grid(results: dict, s: BenchSettings, budget: int) -> Path:
    """The image grid of one budget: full compute, then each method, same seeds per column."""
    ids = ["full"] + [f"{m}@{budget}" for m in s.methods]
    ids = [i for i in ids if grid_path(s.out, i).exists() and i in results["runs"]]
    images = [torch.load(grid_path(s.out, i)) for i in ids]
    names = [results["runs"][i]["label"] for i in ids]
    return plots.save_grid(images, names, s.out / f"grid_nfc{budget}.png", s.grid_columns)


def _write_analysis_plots(a: dict, out: Path) -> None:
    """Prediction error per module (Fig. 1c) and the dynamics of three modules (Fig. 1a-b)."""
    plots.plot_prediction_errors(
        a["prediction_error"],
        out / "prediction_error.png",
        f"relative L1 prediction error at NFC {a['budget']}",
    )
    names = list(a["dynamics"])
    few = [names[0], names[len(names) // 2], names[-1]] if len(names) >= 3 else names
    plots.plot_feature_dynamics(a["dynamics"], few, out / "feature_dynamics.png")


def report_markdown(results: dict, s: BenchSettings) -> str:
    """The text of report.md."""
    rows = ordered_rows(results, s)
    env = results["environment"]
    ref = results["runs"]["full"]["reference"]
    lines = [
        f"# relcache bench: {s.model_name}",
        "",
        "```",
        s.command(),
        "```",
        "",
        f"- model: {s.model_name}; DDIM {s.steps} steps, CFG scale {s.cfg_scale:g}; "
        f"{s.samples} samples per method (image i: seed {s.seed}+i, class i % "
        f"{env['num_classes']}); batch {s.batch_size} images",
        f"- RCS thresholds calibrated on {s.calibration_samples} other images (seeds "
        f"{s.calibration_seed}+i), disjoint from the reported seeds "
        f"{s.seed}..{s.seed + s.samples - 1}",
        f"- hardware: {env['hardware']}",
        "- full-compute reference: "
        + (
            f"reused from {ref['path']} (timed on {ref['hardware']})"
            if ref["cache_hit"]
            else "generated"
        ),
        "- TFLOPs per image (CFG-doubled batch, transformer blocks); ms/image = sampling time "
        "summed over batches and ranks / samples; wall = full-compute time / method time",
        "- PSNR of full compute against itself is infinite: `-` here, `null` in results.json; "
        "wall-clock columns are noisy on a shared or loaded machine (TFLOPs are exact)",
        "",
        "## Results",
        "",
        format_markdown(rows, _columns(rows), TABLE_FORMATS),
        "",
        "![quality vs TFLOPs](quality_vs_tflops.png)",
        "",
        "## RFC vs TaylorSeer vs FORA",
        "",
        *findings(rows, s),
        "",
    ]
    adaptive = [r for r in rows if r.get("threshold") is not None]
    if adaptive:
        lines += [
            "## RCS calibration",
            "",
            format_markdown(
                adaptive,
                ("label", "budget", "threshold", "calibration_nfc", "nfc", "nfc_std"),
                TABLE_FORMATS,
            ),  # fmt: skip
            "",
        ]
    lines += _analysis_section(results.get("analysis"))
    grids = [f"grid_nfc{b}" for b in s.budgets]
    lines += ["## Image grids", ""] + [f"![{g}]({g}.png)" for g in grids] + [""]
    return "\n".join(lines)


def _analysis_section(a: dict | None) -> list[str]:
    """Report lines of the prediction-error and feature-dynamics analyses."""
    if not a:
        return []
    errors, stab = a["prediction_error"], a["ratio_stability"]
    mean_err = [
        {"label": label, "mean_error": sum(e.values()) / len(e) if e else None, "modules": len(e)}
        for label, e in errors.items()
    ]
    cvs = [v["cv"] for v in stab.values()]
    lines = [
        f"## Prediction error per module (NFC {a['budget']}, {a['samples']} samples)",
        "",
        "Relative L1 error ||O_hat - O||_1 / ||O||_1 at cached steps (RCS steps where only some "
        "rows are full are not observed), averaged over steps and modules:",
        "",
        format_markdown(mean_err, ("label", "mean_error", "modules"), {"mean_error": "{:.4f}"}),
        "",
        "![prediction error](prediction_error.png)",
        "",
        "## Feature dynamics and the RFE ratio",
        "",
        "Full compute: per-step L2 change of each module's input and output and the ratio "
        "s = ||dO|| / ||dI|| (the paper reports s nearly constant, ~2% variation on DiT-XL/2). "
        f"Coefficient of variation of s over steps: median {sorted(cvs)[len(cvs) // 2]:.3f}, "
        f"max {max(cvs):.3f} over {len(cvs)} modules.",
        "",
        format_markdown(
            [{"module": k, **v} for k, v in stab.items()],
            ("module", "mean_ratio", "cv"),
            {"mean_ratio": "{:.4f}", "cv": "{:.3f}"},
        ),
        "",
        "![feature dynamics](feature_dynamics.png)",
        "",
    ]
    return lines
