"""``relcache bench``: every method at every NFC budget on the same seeds, plus Fig. 1 analyses.

One bench = a full-compute reference (cached on disk), then for each budget and method one run
over all samples: fixed-schedule methods take the interval whose NFC is closest to the budget,
RCS methods take the threshold calibrated on a subset. Each run records NFC, TFLOPs, wall-clock,
memory and quality; ``results.json`` is rewritten after every run so ``resume`` can continue.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import resource
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from relcache.caching.methods import FORA, RFC, CacheMethod, TaylorSeer
from relcache.evaluation import analysis
from relcache.evaluation import distributed as dist
from relcache.evaluation.budgets import interval_for_nfc, method_costs
from relcache.evaluation.calibrate import calibrate_threshold
from relcache.evaluation.quality import Quality
from relcache.evaluation.report import format_markdown, save_grid
from relcache.evaluation.runner import Generation, sample_batch
from relcache.flops import StepCosts, probe_config

WARMUP = 2  # DiT's official warmup; every bench method uses it
RESULTS = "results.json"


# --- the methods a bench can run ----------------------------------------------------------------


@dataclass(frozen=True)
class BenchMethod:
    """A bench method: ``build(interval, threshold)`` gives its config for one budget."""

    name: str
    family: str  # legend label across budgets
    build: Callable[[int | None, float | None], CacheMethod]
    adaptive: bool  # RCS: calibrate a threshold to the budget; else a fixed interval


BENCH_METHODS: dict[str, BenchMethod] = {}


def register_bench_method(method: BenchMethod) -> BenchMethod:
    """Add a method to ``BENCH_METHODS`` (names are unique, lowercase, no '@')."""
    if not method.name or method.name != method.name.lower() or "@" in method.name:
        raise ValueError(f"bench method names are lowercase without '@', got {method.name!r}")
    if method.name in BENCH_METHODS or method.name == "full":
        raise ValueError(f"bench method {method.name!r} is already registered")
    BENCH_METHODS[method.name] = method
    return method


for _m in (
    BenchMethod("fora", "FORA", lambda n, tau: FORA(interval=n), False),
    BenchMethod(
        "taylorseer1", "TaylorSeer m=1", lambda n, tau: TaylorSeer(interval=n, order=1), False
    ),
    BenchMethod(
        "taylorseer2", "TaylorSeer m=2", lambda n, tau: TaylorSeer(interval=n, order=2), False
    ),
    BenchMethod("rfc1", "RFC m=1", lambda n, tau: RFC(order=1, threshold=tau), True),
    BenchMethod("rfc2", "RFC m=2", lambda n, tau: RFC(order=2, threshold=tau), True),
    # the paper's ablation (m = 1): RFE on TaylorSeer's schedule, RCS with Taylor prediction
    BenchMethod("rfe", "+RFE m=1", lambda n, tau: RFC(order=1, rcs=False, interval=n), False),
    BenchMethod("rcs", "+RCS m=1", lambda n, tau: RFC(order=1, rfe=False, threshold=tau), True),
):
    register_bench_method(_m)


# --- settings -----------------------------------------------------------------------------------


def _check_int(flag: str, value: int, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{flag} must be an integer >= {minimum}, got {value!r}; {hint}")


@dataclass(frozen=True)
class BenchSettings:
    """Everything that defines a bench; the ``RESULT_FIELDS`` define its numbers (resume)."""

    steps: int = 50
    cfg_scale: float = 3.0
    samples: int = 1000
    seed: int = 0
    methods: tuple[str, ...] = tuple(BENCH_METHODS)
    budgets: tuple[int, ...] = (14, 11, 10, 8, 7)
    calibration_samples: int = 32
    batch_size: int = 64
    analysis: bool = True
    analysis_samples: int = 4
    analysis_budget: int | None = None  # None: the middle budget
    grid_columns: int = 16
    out: Path = field(default_factory=lambda: Path("relcache_bench"))
    cache_dir: Path | None = field(default_factory=lambda: Path.home() / ".cache" / "relcache")
    resume: bool = False
    progress: bool = True
    model_name: str = "shipped DiT-FM"

    RESULT_FIELDS = ("steps", "cfg_scale", "samples", "seed", "calibration_samples", "batch_size")

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        _check_int("--steps", self.steps, WARMUP + 1, f"RFC needs {WARMUP} warmup steps")
        _check_int("--samples", self.samples, 2, "FD needs at least 2 images per method")
        _check_int("--batch-size", self.batch_size, 1, "use 64 on a CPU")
        _check_int("--calibration-samples", self.calibration_samples, 1, "the default is 32")
        _check_int("--grid-columns", self.grid_columns, 1, "the default is 16")
        if self.calibration_samples > self.samples:
            raise ValueError(
                f"--calibration-samples {self.calibration_samples} exceeds --samples "
                f"{self.samples}; calibrate on a subset, e.g. --calibration-samples "
                f"{min(32, self.samples)}"
            )
        unknown = [m for m in self.methods if m not in BENCH_METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"unknown method(s) {unknown} in --methods; choose from {', '.join(BENCH_METHODS)}"
            )
        if not self.budgets:
            raise ValueError("--budgets is empty; pass target NFCs such as 14,11,10,8,7")
        for b in self.budgets:
            if isinstance(b, bool) or not isinstance(b, int) or not WARMUP <= b <= self.steps:
                raise ValueError(
                    f"budget NFC {b!r} must be an integer in [{WARMUP}, {self.steps}]: at most "
                    f"--steps, at least the {WARMUP} warmup steps; drop it or raise --steps"
                )
        if self.analysis:
            _check_int("--analysis-samples", self.analysis_samples, 1, "a few (4) are enough")
            if self.analysis_budget is not None and self.analysis_budget not in self.budgets:
                raise ValueError(
                    f"--analysis-budget {self.analysis_budget} is not one of --budgets "
                    f"{','.join(map(str, self.budgets))}; pick one of them"
                )

    @property
    def fig_budget(self) -> int:
        """The budget of the prediction-error analysis."""
        if self.analysis_budget is not None:
            return self.analysis_budget
        return sorted(self.budgets)[len(self.budgets) // 2]

    def result_key(self) -> dict:
        """The settings a finished run's numbers depend on (compared on ``resume``)."""
        return {k: getattr(self, k) for k in self.RESULT_FIELDS}

    def command(self, model_args: str = "") -> str:
        """The explicit ``relcache bench`` command line that reproduces these settings."""
        parts = ["relcache", "bench", *shlex.split(model_args)]
        parts += ["--steps", str(self.steps), "--cfg-scale", f"{self.cfg_scale:g}"]
        parts += ["--samples", str(self.samples), "--seed", str(self.seed)]
        parts += [
            "--methods",
            ",".join(self.methods),
            "--budgets",
            ",".join(map(str, self.budgets)),
        ]
        parts += ["--calibration-samples", str(self.calibration_samples)]
        parts += ["--batch-size", str(self.batch_size)]
        if self.analysis:
            parts += ["--analysis-samples", str(self.analysis_samples)]
            parts += ["--analysis-budget", str(self.fig_budget)]
        else:
            parts.append("--no-analysis")
        parts += ["--out", str(self.out)]
        return shlex.join(parts)


def random_dit(preset: str, seed: int = 0, **overrides: object) -> nn.Module:
    """A DiT with random weights for smoke tests, in eval mode. DiT zero-initialises its adaLN
    and output layers (every method would then give identical images), so those get N(0, 0.02)."""
    from relcache.models import create_dit

    torch.manual_seed(seed)
    model = create_dit(preset, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    return model.eval()


# --- full-compute reference, cached on disk -----------------------------------------------------


def reference_key(model: nn.Module, s: BenchSettings) -> str:
    """Hash of the weights, the sampler settings, the seeds and the device type."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    device = next(model.parameters()).device.type
    meta = {
        "config": dataclasses.asdict(model.config),
        "steps": s.steps,
        "cfg_scale": s.cfg_scale,
        "seed": s.seed,
        "samples": s.samples,
        "batch_size": s.batch_size,
        "device": device,
        "torch": torch.__version__,
    }
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()[:24]


def reference(model: nn.Module, s: BenchSettings, seeds, labels) -> tuple[Generation, dict]:
    """Full-compute samples for the bench's seeds, from ``s.cache_dir`` when already made."""
    path = None if s.cache_dir is None else s.cache_dir / f"reference-{reference_key(model, s)}.pt"
    hit = bool(dist.broadcast(path is not None and path.exists()))
    if hit:
        data = torch.load(path, map_location="cpu", weights_only=True)
        gen = Generation(data["images"], torch.full((s.samples,), float(s.steps)), 0.0, 0)
        gen.seconds = float(data["seconds"])
        return gen, {"cache_hit": True, "path": str(path), "hardware": data["hardware"]}
    gen = dist.run_sharded(
        model, None, seeds, labels, **_run_kwargs(s), desc="full compute (reference)"
    )
    if path is not None and dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        hardware = hardware_summary(model)
        torch.save({"images": gen.images, "seconds": gen.seconds, "hardware": hardware}, tmp)
        tmp.replace(path)
    return gen, {"cache_hit": False, "path": str(path) if path else None}


# --- one run ------------------------------------------------------------------------------------


def _run_kwargs(s: BenchSettings, progress: bool | None = None) -> dict:
    show = s.progress if progress is None else progress
    return dict(
        steps=s.steps,
        cfg_scale=s.cfg_scale,
        batch_size=s.batch_size,
        progress=show and dist.is_main(),
    )


def _memory_mark(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _memory_peak(device: torch.device) -> dict:
    """Peak resident memory of the process (all ranks' maximum) and of the GPU, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    peaks = dist.gather((rss, gpu))
    return {
        "peak_rss_mb": max(p[0] for p in peaks),
        "peak_gpu_mb": None if gpu is None else max(p[1] for p in peaks),
    }


def _warm_up(model: nn.Module, s: BenchSettings) -> None:
    c = model.config
    noise = torch.zeros(1, c.in_channels, c.input_size, c.input_size)
    sample_batch(model, noise, torch.zeros(1, dtype=torch.long), steps=3, cfg_scale=s.cfg_scale)


# --- the bench ----------------------------------------------------------------------------------


class Bench:
    """State of one bench: settings, model, reference, results so far."""

    def __init__(self, model: nn.Module, classifier: nn.Module | None, s: BenchSettings):
        self.model, self.s = model, s
        self.device = next(model.parameters()).device
        self.seeds = [s.seed + i for i in range(s.samples)]
        self.labels = torch.arange(s.samples) % model.config.num_classes
        self.results = self._load_results()
        _warm_up(model, s)  # first-call overheads (allocator, CUDA kernels) stay out of timings
        self.ref, self.ref_info = reference(model, s, self.seeds, self.labels)
        self.quality = Quality(self.ref, self.labels, classifier)
        self._costs: dict[tuple[str, bool], StepCosts] = {}
        self.full_costs = method_costs(model, None)
        self.full_tflops = self.full_costs.total(s.steps, s.steps) / 1e12
        self.main = dist.is_main()

    def costs(self, config: CacheMethod) -> StepCosts:
        """Step FLOPs; they depend on the method's kind, not on its interval or threshold."""
        key = (repr(probe_config(config)), config.threshold is not None)
        if key not in self._costs:
            self._costs[key] = method_costs(self.model, config)
        return self._costs[key]

    # ----- results.json -----
    def _load_results(self) -> dict:
        path = self.s.out / RESULTS
        fresh = {"settings": self.s.result_key(), "runs": {}, "analysis": None}
        if not self.s.resume or not path.exists():
            return fresh
        old = json.loads(path.read_text())
        if old.get("settings") != self.s.result_key():
            raise ValueError(
                f"{path} was written with other settings ({old.get('settings')}); rerun with the "
                "same --steps/--cfg-scale/--samples/--seed/--batch-size/--calibration-samples, "
                "or use a new --out (or drop --resume to start over)"
            )
        return old

    def save_results(self) -> None:
        if self.main:
            self.s.out.mkdir(parents=True, exist_ok=True)
            tmp = self.s.out / (RESULTS + ".tmp")
            tmp.write_text(json.dumps(self.results, indent=2))
            tmp.replace(self.s.out / RESULTS)

    def _grid_path(self, run_id: str) -> Path:
        return self.s.out / "grid_images" / f"{run_id.replace('@', '_nfc')}.pt"

    def _save_grid_images(self, run_id: str, images: torch.Tensor) -> None:
        if self.main:
            path = self._grid_path(run_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(images[: self.s.grid_columns].clone(), path)

    # ----- runs -----
    def row(self, method: str, family: str, label: str, budget: int, target: float,
            config: CacheMethod | None, gen: Generation, memory: dict) -> dict:  # fmt: skip
        s = self.s
        nfc = float(gen.nfc_per_image.mean())
        costs = self.full_costs if config is None else self.costs(config)
        tflops = costs.total(s.steps, nfc) / 1e12
        seconds = gen.seconds
        row = {
            "method": method,
            "family": family,
            "label": label,
            "budget": budget,
            "target_nfc": target,
            "nfc": nfc,
            "nfc_std": float(gen.nfc_per_image.std(unbiased=False)),
            "config": repr(config),
            "tflops": tflops,
            "seconds": seconds,
            "ms_per_image": 1e3 * seconds / s.samples,
            "flops_speedup": self.full_tflops / tflops,
            "wall_speedup": self.ref.seconds / seconds if seconds > 0 else None,
            "peak_cache_mb": gen.peak_cache_bytes / 2**20,
            **memory,
        }
        return {**row, **self.quality(gen.images)}

    def run_reference_row(self) -> None:
        if "full" in self.results["runs"]:
            return
        memory = _memory_peak(self.device)
        row = self.row("full", "full compute", "full compute", self.s.steps, self.s.steps, None,
                       self.ref, memory)  # fmt: skip
        row["reference"] = self.ref_info
        self.results["runs"]["full"] = row
        self._save_grid_images("full", self.ref.images)
        self.save_results()

    def config_for(self, spec: BenchMethod, budget: int) -> tuple[CacheMethod, dict]:
        """The method's config at ``budget``: a fixed interval or a calibrated threshold."""
        if not spec.adaptive:
            n = interval_for_nfc(budget, self.s.steps, WARMUP)
            return spec.build(n, None), {"interval": n}
        low, high = self._bracket(spec.name, budget)
        n_cal = self.s.calibration_samples
        bar = tqdm(desc=f"calibrate {spec.name}@{budget}", disable=not (self.s.progress and
                   self.main), leave=False)  # fmt: skip

        def measure(tau: float) -> float:
            gen = dist.run_sharded(
                self.model, spec.build(None, tau), self.seeds[:n_cal], self.labels[:n_cal],
                **_run_kwargs(self.s, progress=False),
            )  # fmt: skip
            nfc = float(gen.nfc_per_image.mean())
            bar.update()
            bar.set_postfix(tau=f"{tau:.3g}", nfc=f"{nfc:.2f}")
            return nfc

        tau, cal_nfc = calibrate_threshold(measure, budget, low=low, high=high)
        bar.close()
        return spec.build(None, tau), {"threshold": tau, "calibration_nfc": cal_nfc}

    def _bracket(self, method: str, budget: int) -> tuple[float, float]:
        """Search range for tau, narrowed by this method's thresholds at other budgets
        (NFC does not increase with tau)."""
        low, high = 1e-3, 10.0
        for row in self.results["runs"].values():
            tau = row.get("threshold")
            if row["method"] != method or tau is None:
                continue
            if row["budget"] > budget:
                low = max(low, tau / 1.5)
            elif row["budget"] < budget:
                high = min(high, tau * 1.5)
        return (low, high) if low < high else (1e-3, 10.0)

    def run(self, name: str, budget: int) -> None:
        """One method at one budget over all samples; skipped when already in results."""
        run_id = f"{name}@{budget}"
        if run_id in self.results["runs"]:
            return
        spec, s = BENCH_METHODS[name], self.s
        config, extra = self.config_for(spec, budget)
        same = self._same_config(config)
        if same is not None:  # two budgets map to one interval: reuse, don't recompute
            row = {**self.results["runs"][same], "budget": budget}
            if self.main and self._grid_path(same).exists():
                self._save_grid_images(run_id, torch.load(self._grid_path(same)))
        else:
            _memory_mark(self.device)
            gen = dist.run_sharded(
                self.model, config, self.seeds, self.labels, **_run_kwargs(s),
                desc=f"{config.describe()} @ {budget}",
            )  # fmt: skip
            schedule = config.schedule(s.steps)
            target = float(len(schedule)) if schedule is not None else float(budget)
            label = spec.family if spec.adaptive else config.describe()
            row = self.row(name, spec.family, label, budget, target, config, gen,
                           _memory_peak(self.device))  # fmt: skip
            row.update(extra)
            self._save_grid_images(run_id, gen.images)
        self.results["runs"][run_id] = row
        self.save_results()

    def _same_config(self, config: CacheMethod) -> str | None:
        if config.threshold is not None:
            return None
        for run_id, row in self.results["runs"].items():
            if row["config"] == repr(config):
                return run_id
        return None

    # ----- analyses (rank 0) -----
    def run_analysis(self) -> None:
        s = self.s
        if not s.analysis or self.results.get("analysis") is not None:
            return
        n = s.analysis_samples
        seeds, labels = self.seeds[:n], self.labels[:n]
        budget = s.fig_budget
        interval = interval_for_nfc(budget, s.steps, WARMUP)
        rfc_row = self.results["runs"].get(f"rfc2@{budget}")
        tau = rfc_row["threshold"] if rfc_row else self.config_for(BENCH_METHODS["rfc2"], budget)[
            1]["threshold"]  # fmt: skip
        configs = {
            f"FORA N={interval}": FORA(interval=interval),
            f"TaylorSeer N={interval} m=2": TaylorSeer(interval=interval, order=2),
            f"+RFE N={interval} m=2": RFC(order=2, rcs=False, interval=interval),
            f"RFC m=2 tau={tau:.3g}": RFC(order=2, threshold=tau),
        }
        if not self.main:
            return
        kw = dict(steps=s.steps, cfg_scale=s.cfg_scale)
        errors = analysis.prediction_errors(self.model, configs, seeds, labels, **kw,
                                            progress=s.progress)  # fmt: skip
        dynamics = analysis.feature_dynamics(self.model, seeds, labels, **kw)
        self.results["analysis"] = {
            "budget": budget,
            "interval": interval,
            "samples": n,
            "prediction_error": errors,
            "dynamics": dynamics,
            "ratio_stability": analysis.ratio_stability(dynamics),
        }
        self.save_results()


def run_bench(
    model: nn.Module, classifier: nn.Module | None, s: BenchSettings, model_args: str = ""
) -> dict:
    """Run (or resume) the bench; rank 0 writes results.json, report.md and the plots."""
    bench = Bench(model, classifier, s)
    bench.run_reference_row()
    plan = [(name, budget) for budget in s.budgets for name in s.methods]
    for name, budget in tqdm(plan, desc="bench", disable=not (s.progress and bench.main)):
        bench.run(name, budget)
    bench.run_analysis()
    if bench.main:
        write_outputs(bench, model_args)
    return bench.results


# --- outputs ------------------------------------------------------------------------------------

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


def hardware_summary(model: nn.Module) -> str:
    """CPU/GPU, threads and world size, in one line."""
    device = next(model.parameters()).device
    rank, world = dist.rank_and_world()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return (
        f"{device.type} ({name or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads per process, {world} process(es), "
        f"Python {sys.version.split()[0]}"
    )


def findings(rows: list[dict], s: BenchSettings) -> list[str]:
    """Per budget: the best method on FD2FC / PSNR / FD, and RFC against TaylorSeer and FORA."""
    lines = []
    metrics = (("fd2fc", "FD2FC", min), ("psnr", "PSNR", max), ("fd", "FD", min))
    for budget in s.budgets:
        group = [r for r in rows if r["method"] != "full" and r["budget"] == budget]
        if not group:
            continue
        parts = []
        for key, name, pick in metrics:
            valid = [r for r in group if analysis._finite(r.get(key))]
            if len(valid) < 2:
                continue
            best = pick(valid, key=lambda r: r[key])
            second = pick([r for r in valid if r is not best], key=lambda r: r[key])
            parts.append(
                f"best {name} {best['label']} ({best[key]:.3g}, {_delta(best[key], second[key])} "
                f"vs next best {second['label']} {second[key]:.3g})"
            )
        by = {r["method"]: r for r in group}
        for m in (2, 1):
            rfc, ts = by.get(f"rfc{m}"), by.get(f"taylorseer{m}")
            fora = by.get("fora")
            if rfc is None or ts is None:
                continue
            cmp = [
                f"{name} RFC {rfc[key]:.3g} vs TaylorSeer {ts[key]:.3g}"
                + (f" vs FORA {fora[key]:.3g}" if fora else "")
                for key, name, _ in metrics
                if analysis._finite(rfc.get(key)) and analysis._finite(ts.get(key))
            ]
            overhead = (rfc["seconds"] / ts["seconds"] - 1) * 100 if ts["seconds"] else math.nan
            cmp.append(
                f"wall-clock overhead of RFC over TaylorSeer {overhead:+.1f}% "
                f"(NFC {rfc['nfc']:.2f} vs {ts['nfc']:.2f})"
            )
            parts.append(f"m={m}: " + "; ".join(cmp))
        lines.append(f"- **NFC {budget}**: " + "; ".join(parts) + ".")
    return lines


def _delta(a: float, b: float) -> str:
    return f"{(a - b) / abs(b) * 100:+.0f}%" if b else f"{a - b:+.3g}"


def write_outputs(bench: Bench, model_args: str = "") -> None:
    """report.md, plots and image grids from ``bench.results``."""
    s, results, out = bench.s, bench.results, bench.s.out
    out.mkdir(parents=True, exist_ok=True)
    rows = ordered_rows(results, s)
    analysis.plot_quality_vs_flops(rows, out / "quality_vs_tflops.png")
    grids = []
    for budget in s.budgets:
        ids = ["full"] + [f"{m}@{budget}" for m in s.methods]
        ids = [i for i in ids if bench._grid_path(i).exists() and i in results["runs"]]
        images = [torch.load(bench._grid_path(i)) for i in ids]
        names = [results["runs"][i]["label"] for i in ids]
        grids.append(save_grid(images, names, out / f"grid_nfc{budget}.png", s.grid_columns))
    ref = results["runs"]["full"]["reference"]
    lines = [
        f"# relcache bench: {bench.s.model_name}",
        "",
        "```",
        s.command(model_args),
        "```",
        "",
        f"- model: {s.model_name}; DDIM {s.steps} steps, CFG scale {s.cfg_scale:g}; "
        f"{s.samples} samples per method (image i: seed {s.seed}+i, class i % "
        f"{bench.model.config.num_classes}); batch {s.batch_size} images",
        f"- RCS thresholds calibrated on the first {s.calibration_samples} samples",
        f"- hardware: {hardware_summary(bench.model)}",
        "- full-compute reference: "
        + (
            f"reused from {ref['path']} (timed on {ref['hardware']})"
            if ref["cache_hit"]
            else "generated"
        ),
        "- TFLOPs per image (CFG-doubled batch, transformer blocks); ms/image = sampling time "
        "summed over batches and ranks / samples; wall = full-compute time / method time",
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
    lines += _analysis_section(results.get("analysis"), out)
    lines += ["## Image grids", ""] + [f"![{g.stem}]({g.name})" for g in grids] + [""]
    (out / "report.md").write_text("\n".join(lines))


def _analysis_section(a: dict | None, out: Path) -> list[str]:
    if not a:
        return []
    errors, dynamics, stab = a["prediction_error"], a["dynamics"], a["ratio_stability"]
    analysis.plot_prediction_errors(
        errors, out / "prediction_error.png", f"relative L1 prediction error at NFC {a['budget']}"
    )
    names = list(dynamics)
    few = [names[0], names[len(names) // 2], names[-1]] if len(names) >= 3 else names
    analysis.plot_feature_dynamics(dynamics, few, out / "feature_dynamics.png")
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
