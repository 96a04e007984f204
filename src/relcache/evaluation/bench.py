"""``relcache bench`` orchestration: every method at every NFC budget on the same seeds, resumable.

One bench = a full-compute reference (``reference.py``), then for each budget and method one run
over all samples with the config ``budgets.py`` chooses; each run's row (``rows.py``) goes into
``results.json``, rewritten after every run so ``resume`` can continue; then the Fig. 1 analyses
and the diagnosis (``analysis.py``; each under its own key, computed when missing) and the report
(``report.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from relcache.caching.methods import CacheMethod
from relcache.caching.methods.profile import find_profile
from relcache.evaluation import analysis, resume
from relcache.evaluation import distributed as dist
from relcache.evaluation.budgets import (
    TAU_RANGE,
    WARMUP,
    analysis_configs,
    bench_method,
    config_for_budget,
    diagnosis_configs,
)
from relcache.evaluation.hot_path import step_counts
from relcache.evaluation.peers import calibrated, run_peer, search_peer
from relcache.evaluation.quality import Quality
from relcache.evaluation.reference import reference
from relcache.evaluation.report import grid_path, write_report
from relcache.evaluation.resume import RESULTS
from relcache.evaluation.rows import RowBuilder, json_safe, to_json
from relcache.evaluation.runner import (
    Generation,
    reset_peak_memory,
    run_method,
    sample_set,
    schedule_share,
    warm_up,
)
from relcache.evaluation.settings import BenchSettings
from relcache.peers import get_peer


class Bench:
    """State of one bench: settings, model, reference, results so far."""

    def __init__(
        self,
        model: nn.Module,
        classifier: nn.Module | None,
        s: BenchSettings,
        fitted_on: nn.Module | None = None,
    ):
        self.model, self.s = model, s
        self.fitted_on = model if fitted_on is None else fitted_on  # whose profiles ':fitted' reads
        self.device = next(model.parameters()).device
        self.seeds, self.labels = sample_set(s.seed, s.samples, model.config.num_classes)
        self.main = dist.is_main()
        self.results = self._load_results()
        self.results["environment"] = {
            "hardware": dist.hardware_summary(self.device),
            "num_classes": model.config.num_classes,
        }
        warm_up(model, s.cfg_scale)  # first-call overheads stay out of timings
        self.ref, self.ref_info = reference(model, s, self.seeds, self.labels)
        self.rows = RowBuilder(model, self.ref, self.labels, classifier, s.steps)

    # ----- results.json -----
    def _load_results(self) -> dict:
        """The results so far: fresh, or (``resume``) the file's, when it was made with these
        settings and this model (``resume.py``); a filled ``out`` needs resume or overwrite."""
        s, key = self.s, resume.results_key(self.s, self.model)
        record = resume.model_record(s, self.model)
        fresh = {"settings": key, "model": record, "runs": {}, "analysis": None}
        old = resume.check_out(s)
        if old is None:
            return {**fresh, "derived": s.derived_key()}
        resume.check_key(s.out / RESULTS, old, key, record)
        return self._drop_stale_sections(old)

    def _drop_stale_sections(self, old: dict) -> dict:
        """Forget the analyses / peer rows of a resumed bench whose settings changed (they are
        recomputed when missing) and record this run's."""
        stored, now = old.get("derived") or {}, self.s.derived_key()
        if now["analysis"] is not None and stored.get("analysis") != now["analysis"]:
            old["analysis"] = None
        if now["peers"] is not None and stored.get("peers") != now["peers"]:
            old.pop("peers", None)
        old["derived"] = {k: v if v is not None else stored.get(k) for k, v in now.items()}
        return old

    def save_results(self) -> None:
        """Rewrite results.json (rank 0)."""
        if self.main:
            self.s.out.mkdir(parents=True, exist_ok=True)
            tmp = self.s.out / (RESULTS + ".tmp")
            tmp.write_text(to_json(self.results, indent=2))
            tmp.replace(self.s.out / RESULTS)

    def _save_grid_images(self, run_id: str, images: torch.Tensor) -> None:
        """Keep the first ``grid_columns`` images of a run for the report's grids (rank 0)."""
        if self.main:
            path = grid_path(self.s.out, run_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(images[: self.s.grid_columns].clone(), path)

    # ----- runs -----
    def run_reference_row(self) -> None:
        """The full-compute row (the reference against which the others are measured)."""
        if "full" in self.results["runs"]:
            return
        memory = dist.peak_memory_over_ranks(self.device)
        row = self.rows("full", "full compute", "full compute", self.s.steps, self.s.steps, None,
                        self.ref, memory)  # fmt: skip
        row["reference"] = self.ref_info
        self.results["runs"]["full"] = json_safe(row)  # PSNR inf -> None, as in results.json
        self._save_grid_images("full", self.ref.images)
        self.save_results()

    def config_for(self, name: str, budget: int) -> tuple[CacheMethod, dict]:
        """The method's config at ``budget``; RCS thresholds are calibrated on
        ``calibration_samples`` images of their own seeds (disjoint from the reported ones)."""
        n_cal = self.s.calibration_samples
        classes = self.model.config.num_classes
        cal_seeds, cal_labels = sample_set(self.s.calibration_seed, n_cal, classes)
        show = self.s.progress and self.main and bench_method(name).adaptive
        bar = tqdm(desc=f"calibrate {name}@{budget}", disable=not show, leave=False)

        def measure(config: CacheMethod) -> float:
            gen = dist.run_sharded(self.model, config, cal_seeds, cal_labels,
                                   **{**self.s.run_kwargs(), "progress": False})  # fmt: skip
            bar.update()
            bar.set_postfix(tau=f"{config.threshold:.3g}", nfc=f"{gen.mean_nfc:.2f}")
            return gen.mean_nfc

        bracket = self._bracket(name, budget)
        try:
            return config_for_budget(name, budget, self.s.steps, measure, bracket=bracket,
                                     fitted_steps=self._fitted_steps)  # fmt: skip
        finally:
            bar.close()

    def _fitted_steps(self, budget: int) -> tuple[int, ...]:
        """The full steps of the shipped profile fitted on this model for ``budget``."""
        s = self.s
        profile = find_profile(self.fitted_on, budget, s.steps, s.cfg_scale)
        if profile is None:
            raise ValueError(
                f"no shipped profile is fitted on this model for NFC {budget} at {s.steps} "
                f"steps, CFG {s.cfg_scale}: fit one (relcache calibrate --nfc {budget} --steps "
                f"{s.steps} --cfg-scale {s.cfg_scale} --out nfc{budget}.json), add it to "
                "relcache/assets/profiles, or drop ':fitted' / this budget"
            )
        return profile.full_steps

    def _bracket(self, method: str, budget: int) -> tuple[float, float]:
        """Search range for tau, narrowed by this method's thresholds at other budgets
        (NFC does not increase with tau)."""
        low, high = TAU_RANGE
        for row in self.results["runs"].values():
            tau = row.get("threshold")
            if row["method"] != method or tau is None:
                continue
            if row["budget"] > budget:
                low = max(low, tau / 1.5)
            elif row["budget"] < budget:
                high = min(high, tau * 1.5)
        return (low, high) if low < high else TAU_RANGE

    def run(self, name: str, budget: int) -> None:
        """One method at one budget over all samples; skipped when already in results."""
        run_id = f"{name}@{budget}"
        if run_id in self.results["runs"]:
            return
        config, extra = self.config_for(name, budget)
        same = self._same_config(config)
        if same is not None:  # two budgets map to one interval: reuse, don't recompute
            row = {**self.results["runs"][same], "budget": budget}
            if self.main and grid_path(self.s.out, same).exists():
                same_images = torch.load(grid_path(self.s.out, same), weights_only=True)
                self._save_grid_images(run_id, same_images)
        else:
            row = {**self._measure(name, budget, config), **extra}
        self.results["runs"][run_id] = json_safe(row)  # as results.json holds it (inf -> None)
        self.save_results()

    def _measure(self, name: str, budget: int, config: CacheMethod) -> dict:
        """Run ``config`` over all samples; its row (grid images saved), with peers also its
        GFLOPs per image as FlopCounterMode counts them (``runner.timed_batches``)."""
        spec, s = bench_method(name), self.s
        reset_peak_memory(self.device)

        gen = dist.run_sharded(self.model, config, self.seeds, self.labels, **s.run_kwargs(),
                               desc=f"{config.describe()} @ {budget}",
                               count_flops=bool(s.peers))  # fmt: skip
        schedule = config.schedule(s.steps)
        target = float(len(schedule)) if schedule is not None else float(budget)
        label = spec.family if spec.adaptive else config.describe()
        label += " fitted" if spec.fitted else ""  # an explicit schedule hides the interval
        self._save_grid_images(f"{name}@{budget}", gen.images)
        row = self.rows(name, spec.family, label, budget, target, config, gen,
                        dist.peak_memory_over_ranks(self.device))  # fmt: skip
        return {**row, "gflops": gen.gflops} if s.peers else row

    # ----- peers (one process) -----
    def run_peers(self) -> None:
        """Every peer with its defaults, then tuned to the match method's FLOPs per budget."""
        peers = self.results.setdefault("peers", {})
        for budget in (*self.s.budgets, None):  # whole budgets first, the defaults last
            for name in self.s.peers:
                run_id = f"{name}@{'default' if budget is None else budget}"
                if run_id not in peers:
                    peers[run_id] = json_safe(self._peer_row(name, budget))
                    self.save_results()

    def _peer_row(self, name: str, budget: int | None) -> dict:
        """One peer run's row, or the error that stopped it (the report says why); with a
        budget, the winner of its search on the calibration seeds (``peers.search_peer``)."""
        s, peer = self.s, get_peer(name)
        head = {"peer": name, "method": name, "budget": budget,
                "family": peer.label + (" (defaults)" if budget is None else "")}  # fmt: skip
        kw = dict(steps=s.steps, cfg_scale=s.cfg_scale)
        cal_seeds, cal_labels = self._calibration_set()
        try:
            peer = calibrated(self.model, peer, cal_seeds, cal_labels, **kw)
            extra = {}
            if budget is not None:
                target = self.results["runs"][f"{s.match_method}@{budget}"]["gflops"]
                found = search_peer(self.model, peer, target, cal_seeds, cal_labels,
                                    self._calibration_reference(), **kw, warmup=WARMUP,
                                    progress=s.progress)  # fmt: skip
                peer = found.peer
                extra = {"target_gflops": target, "calibration_gflops": found.run.gflops,
                         "search": found.record}  # fmt: skip
            same = self._same_peer(peer.describe())
            if same is not None:  # tuned to the same knob at another budget: reuse the run
                return {**same, **head, **extra}
            run = run_peer(self.model, peer, self.seeds, self.labels, **kw,
                           batch_size=s.batch_size, progress=s.progress,
                           desc=f"{peer.describe()} @ {budget or 'defaults'}")  # fmt: skip
        except Exception as err:  # a peer that cannot run here is reported, not fatal
            return {**head, "label": peer.describe(), "error": f"{type(err).__name__}: {err}"}
        gen, full = run.gen, self._full_gflops()
        return {
            **head,
            "label": peer.describe(),
            **extra,
            "gflops": run.gflops,
            "flops_speedup": full / run.gflops,
            "seconds": gen.seconds,
            "ms_per_image": 1e3 * gen.seconds / len(gen.images),
            "wall_speedup": self.ref.seconds / gen.seconds if gen.seconds > 0 else None,
            "peak_cache_mb": gen.peak_cache_bytes / 2**20,
            "summary": run.summary,
            **self.rows.quality(gen.images),
        }

    def _calibration_set(self) -> tuple[list[int], torch.Tensor]:
        """The calibration seeds and labels (disjoint from the reported ones)."""
        s = self.s
        return sample_set(s.calibration_seed, s.calibration_samples, self.model.config.num_classes)

    def _calibration_reference(self) -> torch.Tensor:
        """Full compute's images of the calibration seeds (peers' candidates are scored against
        them), generated once in one batch, as the peers' calibration runs are."""
        if getattr(self, "_cal_reference", None) is None:
            seeds, labels = self._calibration_set()
            gen = run_method(self.model, None, seeds, labels, steps=self.s.steps,
                             cfg_scale=self.s.cfg_scale, batch_size=len(seeds),
                             progress=False)  # fmt: skip
            self._cal_reference = gen.images
        return self._cal_reference

    def _same_peer(self, label: str) -> dict | None:
        """A finished peer run with exactly this configuration, if any."""
        rows = (self.results.get("peers") or {}).values()
        return next((r for r in rows if r.get("label") == label and "error" not in r), None)

    def _full_gflops(self) -> float:
        """Full compute's FLOPs per image, counted on one image (they do not vary)."""
        full = self.results["runs"]["full"]
        if full.get("gflops") is None:
            one = dict(steps=self.s.steps, cfg_scale=self.s.cfg_scale, progress=False)
            gen = run_method(self.model, None, self.seeds[:1], self.labels[:1], **one,
                             count_flops=True)  # fmt: skip
            full["gflops"] = gen.gflops
        return full["gflops"]

    def _same_config(self, config: CacheMethod) -> str | None:
        """A finished fixed-schedule run with exactly this config, if any."""
        if config.adaptive:
            return None
        for run_id, row in self.results["runs"].items():
            if row["config"] == repr(config):
                return run_id
        return None

    # ----- analyses (rank 0) -----
    def run_analysis(self) -> None:
        """The analyses missing from results["analysis"] (each group under keys of its own, so a
        resumed bench computes only what an older results.json lacks)."""
        s, a = self.s, self.results.get("analysis") or {}
        if not s.analysis:
            return
        need_tau = "prediction_error" not in a or "increment_error" not in a
        tau = self._analysis_tau() if need_tau else None  # calibration: on every rank
        if not self.main:
            return
        self.results["analysis"] = a
        steps = [
            ("prediction_error", lambda: self._fig1(tau)),
            ("increment_error", lambda: self._diagnosis(tau)),
            ("schedule_backfill", self._schedule_backfill),
            ("step_windows", self._step_windows),
            ("hot_path", self._hot_path),
        ]
        for key, compute in steps:
            if key not in a:
                a.update(compute())
                self.save_results()

    def _analysis_tau(self) -> float:
        """RFC's threshold at the analysis budget: its run's, or calibrated."""
        budget = self.s.fig_budget
        row = self.results["runs"].get(f"rfc2@{budget}")
        return row["threshold"] if row else self.config_for("rfc2", budget)[1]["threshold"]

    def _analysis_set(self, n: int) -> tuple[list[int], torch.Tensor, dict]:
        """The first ``n`` bench seeds and labels, and the sampler keywords."""
        kw = dict(steps=self.s.steps, cfg_scale=self.s.cfg_scale)
        return self.seeds[:n], self.labels[:n], kw

    def _fig1(self, tau: float) -> dict:
        """Prediction errors at ``fig_budget`` and the feature dynamics (Fig. 1)."""
        s = self.s
        interval, configs = analysis_configs(s.fig_budget, s.steps, tau)
        seeds, labels, kw = self._analysis_set(s.analysis_samples)
        errors = analysis.prediction_errors(self.model, configs, seeds, labels, **kw,
                                            progress=s.progress)  # fmt: skip
        dynamics = analysis.feature_dynamics(self.model, seeds, labels, **kw)
        return {
            "budget": s.fig_budget,
            "interval": interval,
            "samples": s.analysis_samples,
            "prediction_error": errors,
            "dynamics": dynamics,
            "ratio_stability": analysis.ratio_stability(dynamics),
        }

    def _diagnosis(self, tau: float) -> dict:
        """Magnitude / direction errors and teacher-forced vs free-running errors per step."""
        s = self.s
        configs = diagnosis_configs(s.fig_budget, s.steps, tau)
        seeds, labels, kw = self._analysis_set(s.analysis_samples)
        increments, forcing = analysis.diagnosis(self.model, configs, seeds, labels, **kw,
                                                 progress=s.progress)  # fmt: skip
        meta = {"budget": s.fig_budget, "samples": s.analysis_samples}
        return {"increment_error": {**meta, "methods": increments},
                "teacher_forcing": {**meta, "methods": forcing}}  # fmt: skip

    def _schedule_backfill(self) -> dict:
        """schedule_share of runs recorded without one (an older results.json): a fixed
        schedule's from its config, an adaptive one's rerun on the first window_count seeds."""
        n = self.s.window_count
        seeds, labels, kw = self._analysis_set(n)
        out = {}
        for run_id, row in self.results["runs"].items():
            config = None if "schedule_share" in row else config_of_row(row, self.s.steps)
            if config is None:
                continue
            fixed = config.schedule(self.s.steps)
            if fixed is not None:
                share, source = schedule_share([fixed], self.s.steps), "config"
            else:
                gen = run_method(self.model, config, seeds, labels, **kw, progress=False,
                                 batch_size=self.s.batch_size)  # fmt: skip
                share, source = gen.schedule_share(self.s.steps), f"rerun on {n} images"
            out[run_id] = {"schedule_share": share, "source": source}
        return {"schedule_backfill": out}

    def _step_windows(self) -> dict:
        """Final PSNR / FD2FC when caching only inside one window of 8 steps."""
        n = self.s.window_count
        seeds, labels, kw = self._analysis_set(n)
        ref = Generation(self.ref.images[:n], self.ref.nfc_per_image[:n], 0.0, 0)
        quality = Quality(ref, labels, self.rows.quality.classifier)
        windows = analysis.step_windows(self.model, seeds, labels, quality, **kw,
                                        batch_size=self.s.batch_size,
                                        progress=self.s.progress)  # fmt: skip
        return {"step_windows": {"samples": n, "width": 8, "order": 2, "windows": windows}}

    def _hot_path(self) -> dict:
        """Kernels and device reads of one cached step of each method (its config at the
        analysis budget; counts do not depend on the interval or the threshold)."""
        out = {}
        for row in self.results["runs"].values():
            config = config_of_row(row, self.s.steps)
            if config is None or row.get("budget") != self.s.fig_budget:
                continue
            out[row["label"]] = step_counts(self.model, config)
        return {"hot_path": out}


def config_of_row(row: dict, steps: int) -> CacheMethod | None:
    """The config a run row was made with (rebuilt from its method, budget and threshold), or
    None for full compute or when the rebuilt config is not the row's."""
    if row["method"] == "full":
        return None
    spec = bench_method(row["method"])
    try:
        if row.get("full_steps") is not None and spec.fitted:
            config = spec.entry.make(**spec.knobs, full_steps=tuple(row["full_steps"]))
        elif row.get("threshold") is not None:
            config = spec.entry.make(**spec.knobs, threshold=row["threshold"])
        else:
            config = spec.entry.for_nfc(row["budget"], steps, **spec.knobs)[0]
    except ValueError:
        return None
    return config if repr(config) == row["config"] else None


def as_diffusers(model: nn.Module) -> nn.Module:
    """The reference DiT converted exactly to diffusers (``models/diffusers_dit.py``); peers
    run in one process (FlopCounterMode counts one process's batches)."""
    from relcache.models.diffusers_dit import DiffusersDiT

    if dist.rank_and_world()[1] > 1:
        raise ValueError("--peers runs in one process; start relcache bench without torchrun")
    return model if isinstance(model, DiffusersDiT) else DiffusersDiT.from_dit(model)


def run_bench(model: nn.Module, classifier: nn.Module | None, s: BenchSettings) -> dict:
    """Run (or resume) the bench; rank 0 writes results.json, report.md and the plots."""
    original = model  # profiles are fitted on the reference DiT's weights
    if s.peers:  # every row on the diffusers model the peers need: same model for all
        model = as_diffusers(model)
    bench = Bench(model, classifier, s, fitted_on=original)
    bench.run_reference_row()
    plan = [(name, budget) for budget in s.budgets for name in s.methods]
    for name, budget in tqdm(plan, desc="bench", disable=not (s.progress and bench.main)):
        bench.run(name, budget)
    if s.peers:
        bench._full_gflops()
        bench.run_peers()
    bench.run_analysis()
    if bench.main:
        write_report(bench.results, s)
    return bench.results
