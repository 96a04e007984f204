"""``relcache demo``: a small preset of the bench (FORA, TaylorSeer m=2, RFC m=2 at two budgets).

It shares the bench's run code, budgets and calibration, row builder and quality stage; what is
its own: the shipped model's defaults (RFC thresholds bisected on other images than it shows), the
demo's row columns, and its outputs (table.json, grid.png).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from relcache.caching.methods import RECOMMENDED, CacheMethod, recommended
from relcache.evaluation.budgets import bench_method, config_for_budget
from relcache.evaluation.plots import save_grid
from relcache.evaluation.rows import RowBuilder, to_json
from relcache.evaluation.runner import Generation, run_method, sample_set, sampling_kwargs
from relcache.evaluation.settings import check_finite

# bench name -> demo name: the baselines, the paper's RFC and relcache's recommended configuration
DEMO_METHODS = {
    "fora": "fora",
    "taylorseer2": "taylorseer",
    "rfc2": "rfc",
    RECOMMENDED: "recommended",
}
DEMO_COLUMNS = (
    "method", "label", "target_nfc", "nfc", "tflops", "seconds", "flops_speedup", "wall_speedup",
    "peak_cache_mb", "psnr", "ssim", "fd2fc", "fd", "class_accuracy", "threshold", "recommended",
)  # fmt: skip


@dataclass(frozen=True)
class DemoSettings:
    """Everything that defines a demo run."""

    steps: int = 50
    samples: int = 64
    budgets: tuple[int, ...] = (14, 8)
    seed: int = 0
    cfg_scale: float = 3.0
    batch_size: int = 64
    calibration_samples: int = 16
    calibration_seed: int = 100_000  # disjoint from the reported seeds
    out: Path = field(default_factory=lambda: Path("relcache_demo"))
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", tuple(self.budgets))
        if self.steps < 3:
            raise ValueError(
                f"--steps must be >= 3 (RFC needs 2 warmup steps), got {self.steps}; the "
                "default is 50"
            )
        if self.samples < 2:
            raise ValueError(f"--samples must be >= 2 (FD needs a spread), got {self.samples}")
        check_finite("--cfg-scale", self.cfg_scale, 0, "1 is no guidance, the default is 3")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}; the default is 0")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}; the default is 64")
        if self.calibration_samples < 1:
            raise ValueError(f"calibration_samples must be >= 1, got {self.calibration_samples}")
        if not self.budgets:
            raise ValueError("--budgets is empty; pass target NFCs such as 14,8")
        for b in self.budgets:
            if not 2 < b <= self.steps:
                raise ValueError(
                    f"budget NFC {b} must lie in (2, {self.steps}] (above the 2 warmup steps, at "
                    "most --steps); drop it or raise --steps"
                )

    def run_kwargs(self) -> dict:
        """Keyword arguments of ``run_method`` for a run over the sample set."""
        return sampling_kwargs(self)


def run_at_budget(
    model: nn.Module,
    name: str,
    budget: int,
    s: DemoSettings,
    seeds: Sequence[int],
    labels: torch.Tensor,
) -> tuple[CacheMethod, Generation]:
    """Bench method ``name`` at ``budget`` and its run over all samples; an RCS threshold is
    bisected on ``calibration_samples`` other images (seeds from ``calibration_seed``)."""
    kw = s.run_kwargs()
    cal_seeds, cal_labels = sample_set(
        s.calibration_seed, s.calibration_samples, model.config.num_classes
    )

    def measure(config: CacheMethod) -> float:
        subset = run_method(model, config, cal_seeds, cal_labels, **{**kw, "progress": False})
        if s.progress:  # calibration takes minutes: one line per bisection step
            print(
                f"calibrating {name}@{budget} on {len(cal_seeds)} other images: "
                f"tau={config.threshold:.4g} -> NFC {subset.mean_nfc:.2f}",
                file=sys.stderr,
            )
        return subset.mean_nfc

    if name == RECOMMENDED:  # the fitted profile for these weights and budget, when one ships
        config = recommended(budget, s.steps, model=model, cfg_scale=s.cfg_scale)
    else:
        config, _ = config_for_budget(name, budget, s.steps, measure)
    return config, run_method(model, config, seeds, labels, **kw, desc=config.describe())


def run_demo(model: nn.Module, classifier: nn.Module, s: DemoSettings) -> list[dict]:
    """Run every method at every budget; write table.json and grid.png into ``s.out``."""
    seeds, labels = sample_set(s.seed, s.samples, model.config.num_classes)
    ref = run_method(model, None, seeds, labels, desc="full compute", **s.run_kwargs())
    make_row = RowBuilder(model, ref, labels, classifier, s.steps)
    rows = [make_row("full", "full compute", "full compute", s.steps, s.steps, None, ref)]
    grid = [("full", ref.images)]
    for budget in s.budgets:
        for name in DEMO_METHODS:
            config, gen = run_at_budget(model, name, budget, s, seeds, labels)
            row, grid_label = _method_row(make_row, name, budget, config, gen, s.steps)
            rows.append(row)
            grid.append((grid_label, gen.images))
    rows = [{k: row[k] for k in DEMO_COLUMNS if k in row} for row in rows]
    write_demo_outputs(s.out, rows, grid)
    return rows


def _method_row(make_row: RowBuilder, name: str, budget: int, config: CacheMethod,
                gen: Generation, steps: int) -> tuple[dict, str]:  # fmt: skip
    """A method's row (RCS: with its threshold; fixed: its own NFC as target) and grid label."""
    spec, short = bench_method(name), DEMO_METHODS[name]
    if not spec.adaptive:
        fitted = name == RECOMMENDED and getattr(config, "interval", None) is None
        label = config.describe() + (" fitted schedule" if fitted else "")
        row = make_row(short, short, label, budget, len(config.schedule(steps)), config, gen)
        return {**row, "recommended": name == RECOMMENDED}, label
    label = f"{spec.family} tau={config.threshold:.3g}"
    row = make_row(short, short, label, budget, budget, config, gen)
    row = {**row, "threshold": config.threshold, "recommended": False}
    return row, f"{spec.family} NFC {row['nfc']:.1f}"


def write_demo_outputs(out: Path, rows: list[dict], grid: list[tuple[str, torch.Tensor]]) -> None:
    """table.json (the rows) and grid.png (one row of images per method)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(to_json(rows, indent=2))
    save_grid([images for _, images in grid], [name for name, _ in grid], out / "grid.png")
