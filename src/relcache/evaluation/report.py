"""Writing results: text and Markdown tables, and the bench's report.md and figures.

The bench report is a pure function of ``results.json``'s content and the settings.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from relcache.evaluation import plots
from relcache.evaluation.budgets import WARMUP, bench_method
from relcache.evaluation.peers_report import peers_section, write_peers_plot
from relcache.evaluation.plots import mean_of, module_mean
from relcache.evaluation.rows import finite
from relcache.evaluation.settings import BenchSettings
from relcache.evaluation.tables import format_markdown

# --- the bench report ---------------------------------------------------------------------------

TABLE_COLUMNS = (
    "label", "budget", "nfc", "nfc_std", "tflops", "flops_speedup", "ms_per_image",
    "wall_speedup", "wall_vs_taylorseer", "psnr", "ssim", "fd2fc", "fd", "class_accuracy",
    "peak_cache_mb", "peak_rss_mb",
)  # fmt: skip
TABLE_FORMATS = {
    "budget": "{}",
    "nfc_std": "{:.2f}",
    "ms_per_image": "{:.1f}",
    "wall_vs_taylorseer": "{:+.1f}%",
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
        group = [runs[f"{m}@{budget}"] for m in s.methods if f"{m}@{budget}" in runs]
        rows += [_vs_taylorseer(r, group) for r in group]
    return rows


def _vs_taylorseer(row: dict, group: list[dict]) -> dict:
    """The row with ``wall_vs_taylorseer``: its sampling time over TaylorSeer's of the same
    order and budget, in percent; unchanged without such a TaylorSeer row (or for it)."""
    order = bench_method(row["method"]).knobs.get("order")
    ts = next((r for r in group if r["method"] == f"taylorseer{order}"), None)
    if ts is None or not ts.get("seconds") or row is ts or not row.get("seconds"):
        return row
    return row | {"wall_vs_taylorseer": (row["seconds"] / ts["seconds"] - 1) * 100}


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
        overhead = rfc.get("wall_vs_taylorseer", math.nan)  # ordered_rows computed it
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
    if a and "prediction_error" in a:
        _write_analysis_plots(a, out)
    if a:
        _write_diagnosis_plots(a, out)
    shares = schedule_shares(results, s)
    if shares:
        plots.plot_schedules(shares, out / "schedules.png")
    write_peers_plot(results, s, out / "quality_vs_gflops_peers.png")
    path = out / "report.md"
    path.write_text(report_markdown(results, s))
    return path


def _write_grid(results: dict, s: BenchSettings, budget: int) -> Path:
    """The image grid of one budget: full compute, then each method, same seeds per column."""
    ids = ["full"] + [f"{m}@{budget}" for m in s.methods]
    ids = [i for i in ids if grid_path(s.out, i).exists() and i in results["runs"]]
    images = [torch.load(grid_path(s.out, i), weights_only=True) for i in ids]
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


def _write_diagnosis_plots(a: dict, out: Path) -> None:
    """Increment errors, teacher forcing and step windows, where measured."""
    if "increment_error" in a:
        inc = a["increment_error"]
        title = f"NFC {inc['budget']}"
        plots.plot_increment_errors(inc["methods"], out / "increment_error.png", title)
    if "teacher_forcing" in a:
        tf = a["teacher_forcing"]
        title = f"relative L1 error at NFC {tf['budget']}"
        plots.plot_teacher_forcing(tf["methods"], out / "teacher_forcing.png", title)
    if a.get("step_windows"):
        w = a["step_windows"]
        title = f"{w['samples']} samples"
        plots.plot_step_windows(w["windows"], out / "step_windows.png", title)


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
    lines += peers_section(results, s)
    lines += _analysis_section(results.get("analysis"))
    lines += diagnosis_section(results, s)
    lines += _hot_path_lines((results.get("analysis") or {}).get("hot_path"))
    grids = [f"grid_nfc{b}" for b in s.budgets]
    lines += ["## Image grids", ""] + [f"![{g}]({g}.png)" for g in grids] + [""]
    return "\n".join(lines)


def _hot_path_lines(counts: dict | None) -> list[str]:
    """The cached step's kernel budget per method (benchmarks/results/hot_path.md has more)."""
    if not counts:
        return []
    rows = [{"label": label, **c} for label, c in counts.items()]
    columns = ("label", "kernels_per_cached_module", "engine_kernels_per_cached_step",
               "syncs_per_cached_step")  # fmt: skip
    return [
        "## The cached step's cost in kernels",
        "",
        "Aten ops that launch a kernel per cached step, divided by the cached modules (the",
        "per-step work for all modules included), ops in the engine's hooks, and device reads per",
        "step (2 rows, every call wrapped in `relcache.at_step`; counted by",
        "`relcache.evaluation.hot_path`, deterministic).",
        "",
        format_markdown(rows, columns, {"kernels_per_cached_module": "{:.2f}"}),
        "",
    ]


def _analysis_section(a: dict | None) -> list[str]:
    """Report lines of the prediction-error and feature-dynamics analyses."""
    if not a or "prediction_error" not in a:
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


# --- the diagnosis (issue 10) --------------------------------------------------------------------


def schedule_shares(results: dict, s: BenchSettings) -> dict[int, dict[str, list[float]]]:
    """budget -> method label -> per-step fraction of samples computing the step fully: from
    the run rows, else from the analysis' backfill (runs recorded before schedules were)."""
    backfill = (results.get("analysis") or {}).get("schedule_backfill", {})
    out: dict[int, dict[str, list[float]]] = {}
    for _, row, share in _rows_with_shares(results, s, backfill):
        out.setdefault(row["budget"], {})[row["label"]] = share
    return out


def _rows_with_shares(
    results: dict, s: BenchSettings, backfill: dict
) -> list[tuple[str, dict, list[float]]]:
    """(run id, row, schedule_share) of each cached run that has one, in report order."""
    pairs = []
    for budget in s.budgets:
        for m in s.methods:
            run_id = f"{m}@{budget}"
            row = results["runs"].get(run_id)
            share = None if row is None else row.get("schedule_share")
            share = share or backfill.get(run_id, {}).get("schedule_share")
            if share:
                pairs.append((run_id, row, share))
    return pairs


def schedule_summary(row: dict, share: list[float], source: str) -> dict:
    """Where a run's full steps after the warm-up fall: mean count in each half, mean step."""
    steps, half = len(share), len(share) // 2
    after = list(range(WARMUP, steps))
    total = sum(share[i] for i in after)
    return {
        "label": row["label"],
        "budget": row["budget"],
        "nfc": row["nfc"],
        "early": sum(share[i] for i in range(WARMUP, half)),
        "late": sum(share[i] for i in range(half, steps)),
        "late_share": sum(share[i] for i in range(half, steps)) / total if total else None,
        "mean_step": sum(i * share[i] for i in after) / total if total else None,
        "source": source,
    }


def diagnosis_section(results: dict, s: BenchSettings) -> list[str]:
    """Report lines of the four diagnosis analyses (each only when measured)."""
    a = results.get("analysis") or {}
    lines = _increment_lines(a.get("increment_error"))
    lines += _forcing_lines(a.get("teacher_forcing"))
    lines += _schedule_lines(results, s)
    lines += _window_lines(a.get("step_windows"), s)
    return lines + _mechanism_lines(results, s)


def _increment_lines(inc: dict | None) -> list[str]:
    """Magnitude vs direction error of the predicted change."""
    if not inc:
        return []
    rows = [
        {
            "label": label,
            "magnitude": mean_of(module_mean(e["magnitude"])),
            "abs_magnitude": mean_of(
                [abs(v) for v in module_mean(e["magnitude"]) if v is not None]
            ),
            "direction": mean_of(module_mean(e["direction"])),
        }
        for label, e in inc["methods"].items()
    ]
    fmt = {
        k: "{:+.3f}" if k == "magnitude" else "{:.3f}"
        for k in ("magnitude", "abs_magnitude", "direction")
    }
    return [
        f"## Magnitude vs direction of the predicted change (NFC {inc['budget']}, "
        f"{inc['samples']} samples, free-running)",
        "",
        "At cached steps, with O the module's actual output, O_hat the prediction and O(i) the "
        "output at the last full step: magnitude error (||O_hat - O(i)|| - ||O - O(i)||) / "
        "||O - O(i)|| (negative: the change is underestimated; FORA predicts no change, -1) and "
        "direction error 1 - cos(O_hat - O(i), O - O(i)) (0: right direction; FORA: 1 by "
        "convention), per row, averaged over rows and modules per step, then over steps:",
        "",
        format_markdown(rows, ("label", "magnitude", "abs_magnitude", "direction"), fmt),
        "",
        "![increment error](increment_error.png)",
        "",
    ]


def _forcing_lines(tf: dict | None) -> list[str]:
    """Teacher-forced vs free-running relative L1 error."""
    if not tf:
        return []
    rows = []
    for label, e in tf["methods"].items():
        forced, free = mean_of(e["teacher_forced"]), mean_of(e["free_running"])
        ratio = free / forced if forced and free is not None else None
        rows.append(
            {"label": label, "teacher_forced": forced, "free_running": free, "ratio": ratio}
        )
    fmt = {"teacher_forced": "{:.4f}", "free_running": "{:.4f}", "ratio": "{:.2f}"}
    return [
        f"## Teacher-forced vs free-running error (NFC {tf['budget']}, {tf['samples']} samples)",
        "",
        "Relative L1 error ||O_hat - O||_1 / ||O||_1 at cached steps. Teacher-forced: every "
        "module returns its actual output, so the trajectory stays the full-compute one and the "
        "error is the predictor's alone; free-running: the cached trajectory, where earlier "
        "errors feed later inputs. ratio = free-running / teacher-forced (mean over steps):",
        "",
        format_markdown(rows, ("label", "teacher_forced", "free_running", "ratio"), fmt),
        "",
        "![teacher forcing](teacher_forcing.png)",
        "",
    ]


def _schedule_lines(results: dict, s: BenchSettings) -> list[str]:
    """Where each run spent its full steps."""
    backfill = (results.get("analysis") or {}).get("schedule_backfill", {})
    pairs = _rows_with_shares(results, s, backfill)
    if not pairs:
        return []
    rows = [
        schedule_summary(r, share, backfill.get(run_id, {}).get("source", "run"))
        for run_id, r, share in pairs
    ]
    half = s.steps // 2
    fmt = {"early": "{:.2f}", "late": "{:.2f}", "late_share": "{:.2f}", "mean_step": "{:.1f}"}
    cols = ("label", "budget", "nfc", "early", "late", "late_share", "mean_step", "source")
    return [
        "## Full-step schedules per budget",
        "",
        f"For each run, the fraction of samples that computed step i fully (cond row; fixed "
        f"schedules: 0 or 1). early / late: mean full steps per sample after the {WARMUP} "
        f"warm-up steps in [{WARMUP}, {half}) and [{half}, {s.steps}); late_share: late / "
        "(early + late); mean_step: mean index of those full steps. source: run = recorded by "
        "the run over all samples; config = its fixed schedule; rerun = the run's config rerun "
        "on the first bench seeds (a results.json recorded before schedules were).",
        "",
        format_markdown(rows, cols, {**TABLE_FORMATS, **fmt}),
        "",
        "![schedules](schedules.png)",
        "",
    ]


def _window_lines(w: dict | None, s: BenchSettings) -> list[str]:
    """Which steps matter: quality when caching only inside one window."""
    if not w or not w.get("windows"):
        return []
    rows = [{**x, "window": f"[{x['start']}, {x['stop']})"} for x in w["windows"]]
    return [
        f"## Which steps matter ({w['samples']} samples)",
        "",
        f"Full compute everywhere except one window of {w['width']} steps, where TaylorSeer "
        f"m={w['order']} caches with one full step at the window's start (explicit full_steps). "
        "PSNR and FD2FC against full compute on the same seeds (the first bench seeds):",
        "",
        format_markdown(rows, ("window", "nfc", "psnr", "fd2fc"), TABLE_FORMATS),
        "",
        "![step windows](step_windows.png)",
        "",
    ]


def _mechanism_lines(results: dict, s: BenchSettings) -> list[str]:
    """The finding in numbers: where caching hurts most, and where adaptive runs spend."""
    a = results.get("analysis") or {}
    parts = _window_finding((a.get("step_windows") or {}).get("windows", []))
    for _, row, share in _rows_with_shares(results, s, a.get("schedule_backfill", {})):
        summary = schedule_summary(row, share, "")
        if bench_method(row["method"]).adaptive and summary["late_share"] is not None:
            parts.append(
                f"{row['label']} at NFC {row['budget']} spends {summary['late_share']:.0%} of "
                f"its full steps after warm-up in the second half (mean step "
                f"{summary['mean_step']:.1f})"
            )
    if not parts:
        return []
    return ["## What the diagnosis shows", "", *[f"- {p}." for p in parts], ""]


def _window_finding(windows: list[dict]) -> list[str]:
    """The window where caching costs the most, against the one where it costs the least."""
    windows = [x for x in windows if finite(x.get("psnr"))]
    if len(windows) < 2:
        return []
    worst = min(windows, key=lambda x: x["psnr"])
    best = max(windows, key=lambda x: x["psnr"])
    both = finite(worst.get("fd2fc")) and finite(best.get("fd2fc"))
    fd = f", FD2FC {worst['fd2fc']:.3g} vs {best['fd2fc']:.3g}" if both else ""
    return [
        f"caching inside [{worst['start']}, {worst['stop']}) costs the most (PSNR "
        f"{worst['psnr']:.1f} dB vs {best['psnr']:.1f} dB for [{best['start']}, "
        f"{best['stop']}){fd})"
    ]
