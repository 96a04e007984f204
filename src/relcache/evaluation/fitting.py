"""Fit a schedule: which steps run fully, searched on calibration images against full compute.

The search first scans even spreads of the refreshes (``start_candidates``: TaylorSeer's fixed
schedule with the budget's NFC (§2), and the refreshes spread evenly from each first step within
one interval after the warm-up to one of a few last steps: the phase and the span, a few
generations), then moves one refresh step at a time from the best of them (greedy local
exchange): each pass tries every refresh step moved by 1..``radius`` steps either way (order
kept, warm-up steps fixed) and keeps the best move when it raises the score by more than
``min_gain``; it stops after a pass that keeps none. One candidate
costs one generation of the calibration images (batched), scored by the mean PSNR of the final
images against full compute, whose samples are made once. Scores are stored in a state file after
every generation; a resumed search replays them (the search is deterministic) and goes on.

The model is the reference DiT (relcache's DDIM sampler; image i has class i % num_classes) or a
diffusers pipeline (anything with a ``.transformer`` and ``__call__``): its own scheduler, image
i conditioned on the caller's prompt (or class label) i % len, its decoded outputs compared
(:class:`PipelineCalibration`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from relcache.api import cached, is_applied, resolve_model, stats
from relcache.caching.methods import (
    build_method,
    fixed_schedule,
    interval_for_nfc,
    parse_method,
)
from relcache.caching.methods.profile import Profile, save_profile, weights_hash
from relcache.evaluation.metrics import psnr
from relcache.evaluation.runner import run_method, sample_set

REPORT_SEEDS = range(0, 1000)  # the held-out seeds of the committed bench: never fitted on
ALGORITHM = "scan of even spreads, then greedy local exchange"
METRIC = "mean PSNR (dB) of the final images vs full compute"
PIPELINE_METRIC = "mean PSNR (dB) of the outputs (output_type='pt', [0, 1]) vs full compute"
SET_BY_FIT = ("prompt", "class_labels", "num_inference_steps", "guidance_scale", "generator",
              "output_type", "return_dict")  # fmt: skip

Schedule = tuple[int, ...]


@dataclass(frozen=True)
class FitSettings:
    """What a fit depends on: the sampler, the budget, the predictor and the search."""

    nfc: int  # the budget: full steps per generation, the warm-up included
    steps: int = 50
    cfg_scale: float = 3.0
    predictor: str = "taylorseer2"  # a fixed-schedule method spec (fora, taylorseer, rfe)
    warmup: int = 2  # the first steps, always full (RFE needs 0 and 1)
    samples: int = 16  # calibration images, generated in one batch per candidate
    seed: int = 1000  # first calibration seed; image i: seed + i, class i % num_classes
    radius: int = 3  # a refresh step moves by up to this many steps
    min_gain: float = 0.01  # dB a move must gain to be kept
    max_generations: int | None = None  # cap on candidate generations (None: until converged)

    def __post_init__(self) -> None:
        _check_int("--steps", self.steps, 2, "the default is 50")
        _check_int("--warmup", self.warmup, 1, "DiT's official warm-up is 2")
        _check_int("--nfc", self.nfc, self.warmup + 1, f"it includes the {self.warmup} warm-up")
        if self.nfc > self.steps:
            raise ValueError(f"--nfc {self.nfc} exceeds --steps {self.steps}; lower it")
        _check_int("--samples", self.samples, 1, "16 is the default")
        _check_int("--seed", self.seed, 0, "calibration seeds start at 1000")
        _check_int("--radius", self.radius, 1, "3 is the default")
        if self.max_generations is not None:
            _check_int("--max-generations", self.max_generations, 1, "or drop it")
        for flag, value, hint in (
            ("--cfg-scale", self.cfg_scale, "the default is 3"),
            ("--min-gain", self.min_gain, "the default is 0.01 dB"),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag} must be a finite number >= 0, got {value!r}; {hint}")
        if self.seed < REPORT_SEEDS.stop:
            raise ValueError(
                f"calibration seeds {self.seed}..{self.seed + self.samples - 1} overlap the "
                f"held-out report seeds {REPORT_SEEDS.start}..{REPORT_SEEDS.stop - 1}: a schedule "
                f"must be fitted on other images; pass --seed {REPORT_SEEDS.stop} or higher"
            )
        entry, _ = parse_method(self.predictor)  # ValueError naming the registered methods
        if "full_steps" not in entry.knobs:
            raise ValueError(
                f"--predictor {self.predictor!r} chooses its own full steps; pass a fixed-schedule "
                "method (taylorseer2, rfe2, rfe2:clamp=1.05, fora)"
            )
        build_method(self.predictor, full_steps=start_schedule(self.nfc, self.steps, self.warmup))

    def key(self) -> dict:
        """What a resumed search must share with the saved one (all but the cap)."""
        return {k: v for k, v in asdict(self).items() if k != "max_generations"}


def _check_int(flag: str, value: int, minimum: int, hint: str) -> None:
    """``value`` must be an int >= ``minimum``; the message says what to pass."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{flag} must be an integer >= {minimum}, got {value!r}; {hint}")


# ----- the search: pure, over a score function ---------------------------------------------------
def start_schedule(nfc: int, steps: int, warmup: int = 2) -> Schedule:
    """TaylorSeer's fixed schedule when an interval gives exactly ``nfc`` full steps (§2), else
    the warm-up and ``nfc - warmup`` refreshes spread evenly up to the last step."""
    fixed = fixed_schedule(steps, interval_for_nfc(nfc, steps, warmup), warmup)
    if len(fixed) == nfc:
        return tuple(fixed)
    refreshes = nfc - warmup
    spread = [warmup - 1 + round((i + 1) * (steps - warmup) / refreshes) for i in range(refreshes)]
    return (*range(warmup), *spread)


def spread(first: int, last: int, refreshes: int) -> tuple[int, ...]:
    """``refreshes`` steps spread evenly from ``first`` to ``last`` (both kept; one: first)."""
    if refreshes == 1:
        return (first,)
    return tuple(first + round(j * (last - first) / (refreshes - 1)) for j in range(refreshes))


def start_candidates(nfc: int, steps: int, warmup: int = 2) -> list[Schedule]:
    """The schedules the search scans before its local moves: TaylorSeer's fixed one, then the
    refreshes spread evenly from each first step in ``warmup .. warmup + N - 1`` (N the budget's
    interval, its phase) to the last step, or half or one interval before it (its span)."""
    interval = interval_for_nfc(nfc, steps, warmup)
    refreshes = nfc - warmup
    found = [start_schedule(nfc, steps, warmup)]
    for last in sorted({steps - 1, steps - 1 - interval // 2, steps - 1 - interval}, reverse=True):
        for first in range(warmup, warmup + interval):
            if last - first + 1 < refreshes:
                continue
            candidate = (*range(warmup), *spread(first, last, refreshes))
            if candidate not in found:
                found.append(candidate)
    return found


def scan(score: Callable[[Schedule], float], candidates: Sequence[Schedule]) -> Schedule:
    """The best-scoring of ``candidates`` (the first on ties)."""
    return max(candidates, key=lambda c: (score(c), -candidates.index(c)))


def moves(schedule: Schedule, index: int, radius: int, steps: int) -> list[Schedule]:
    """``schedule`` with its step at ``index`` moved by 1..``radius`` either way (nearest
    first), staying between its neighbours and inside ``steps``."""
    low = schedule[index - 1] + 1
    high = schedule[index + 1] - 1 if index + 1 < len(schedule) else steps - 1
    shifts = sorted((d for d in range(-radius, radius + 1) if d), key=lambda d: (abs(d), d))
    return [
        (*schedule[:index], schedule[index] + d, *schedule[index + 1 :])
        for d in shifts
        if low <= schedule[index] + d <= high
    ]


def greedy_exchange(
    score: Callable[[Schedule], float],
    start: Schedule,
    warmup: int,
    radius: int,
    steps: int,
    min_gain: float = 0.0,
) -> tuple[Schedule, float, int]:
    """Local search over the refresh steps (index >= ``warmup``): per pass, each step takes its
    best move if it gains more than ``min_gain``; (best schedule, its score, passes)."""
    best, best_score, passes, improved = start, score(start), 0, True
    while improved:
        improved, passes = False, passes + 1
        for index in range(warmup, len(best)):
            scored = [(score(c), c) for c in moves(best, index, radius, steps)]
            if scored and max(scored)[0] > best_score + min_gain:
                best_score, best = max(scored)
                improved = True
    return best, best_score, passes


# ----- scoring on calibration images, resumable --------------------------------------------------
class SearchPaused(Exception):
    """The search stopped at its time limit; its state file resumes it."""


class CapReached(Exception):
    """The search spent ``max_generations``; the best schedule so far is the result."""


class Calibration:
    """Calibration images with their full-compute references (one generation, made once); a
    schedule's score is the mean PSNR (dB) of one batched generation against them."""

    def __init__(self, model: nn.Module, s: FitSettings, progress: bool = True) -> None:
        self.model, self.s = model, s
        self.seeds, self.labels = sample_set(s.seed, s.samples, model.config.num_classes)
        self.ref = self._generate(None, progress, "full compute (calibration references)")

    def _generate(self, config, progress: bool = False, desc: str = ""):
        s = self.s
        return run_method(self.model, config, self.seeds, self.labels, steps=s.steps,
                          cfg_scale=s.cfg_scale, batch_size=s.samples, progress=progress,
                          desc=desc)  # fmt: skip

    def __call__(self, schedule: Schedule) -> float:
        """Mean PSNR (dB) of the predictor on ``schedule`` against full compute."""
        config = build_method(self.s.predictor, full_steps=schedule)
        gen = self._generate(config)
        assert gen.mean_nfc == len(schedule), (gen.mean_nfc, schedule)
        return psnr(gen.images, self.ref.images)


@dataclass(frozen=True)
class PipelineInputs:
    """A pipeline's calibration inputs: image i takes prompt (or class label) i % len; ``kwargs``
    are further call arguments (JSON values, e.g. height and width)."""

    prompts: tuple[str, ...] = ()
    class_labels: tuple[int, ...] = ()
    kwargs: dict = field(default_factory=dict)

    def condition(self, samples: int) -> dict:
        """The call's conditioning argument for ``samples`` images."""
        name = "prompt" if self.prompts else "class_labels"
        values = self.prompts or self.class_labels
        return {name: [values[i % len(values)] for i in range(samples)]}

    def key(self, pipe: Any) -> dict:
        """What a resumed search must share with the saved one, besides the settings."""
        inputs = {"prompts": list(self.prompts), "class_labels": list(self.class_labels)}
        return {"sampler": pipeline_sampler(pipe), **inputs, "pipeline_kwargs": self.kwargs}


def pipeline_sampler(pipe: Any) -> str:
    """The sampler a profile records for a pipeline: its class and its scheduler's."""
    scheduler = getattr(pipe, "scheduler", None)
    name = type(pipe).__name__
    return name if scheduler is None else f"{name} ({type(scheduler).__name__})"


def pipeline_inputs(target: Any, prompts: Sequence[str] | str | None,
                    class_labels: Sequence[int] | None,
                    pipeline_kwargs: dict | None) -> PipelineInputs | None:  # fmt: skip
    """The checked calibration inputs of a pipeline; None for the reference DiT (which takes
    none: image i has class i % num_classes)."""
    given = prompts is not None or class_labels is not None or pipeline_kwargs is not None
    if resolve_model(target) is target:
        if given:
            raise ValueError(
                "prompts=, class_labels= and pipeline_kwargs= are for diffusers pipelines; the "
                "reference DiT takes none (calibration image i has class i % num_classes)"
            )
        return None
    name, accepted = type(target).__name__, inspect.signature(target.__call__).parameters
    labelled = "class_labels" in accepted and "prompt" not in accepted
    if labelled and (prompts is not None or class_labels is None):
        raise ValueError(
            f"{name} is class-conditional: pass class_labels=[207, 360, ...] (class ids; "
            "pipe.get_label_ids(names) maps names; relcache calibrate --class-labels), not prompts"
        )
    if not labelled and (class_labels is not None or prompts is None):
        raise ValueError(
            f"fitting a schedule on {name} needs calibration prompts: pass prompts=['a photo of "
            "a cat', ...] (image i takes prompt i % len(prompts); relcache calibrate "
            "--prompts-file), not class_labels"
        )
    prompts = (prompts,) if isinstance(prompts, str) else tuple(prompts or ())
    labels = tuple(class_labels or ())
    if not (prompts or labels):
        raise ValueError(f"{'class_labels' if labelled else 'prompts'} is empty; pass at least one")
    if not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"prompts must be non-empty strings, got {prompts!r}")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in labels):
        raise ValueError(f"class_labels must be class ids (integers >= 0), got {labels!r}")
    return PipelineInputs(prompts, labels, _call_kwargs(pipeline_kwargs or {}))


def _call_kwargs(kwargs: dict) -> dict:
    """``pipeline_kwargs`` as JSON values (they are saved with the search), none set by the fit."""
    taken = sorted(set(kwargs) & set(SET_BY_FIT))
    if taken:
        raise ValueError(
            f"pipeline_kwargs {taken} are set by the fit: pass prompts= / class_labels=, steps=, "
            "cfg_scale= and seed= instead"
        )
    try:
        return json.loads(json.dumps(kwargs))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"pipeline_kwargs must be JSON values (numbers, strings, lists), saved with the "
            f"search: {err}"
        ) from None


class PipelineCalibration:
    """:class:`Calibration` through a diffusers pipeline: one batched call per generation, CPU
    generators seeded ``seed + i``, scored on the outputs (output_type="pt", in [0, 1])."""

    def __init__(self, pipe: Any, s: FitSettings, inputs: PipelineInputs,
                 progress: bool = True) -> None:  # fmt: skip
        if is_applied(pipe):
            raise ValueError(
                "relcache is applied to this pipeline: the references must be full compute; "
                "call relcache.remove(pipe) first"
            )
        self.pipe, self.s, self.inputs = pipe, s, inputs
        self.ref = self._generate(progress)

    def _generate(self, progress: bool = False) -> torch.Tensor:
        s = self.s
        generators = [torch.Generator().manual_seed(s.seed + i) for i in range(s.samples)]
        with _progress_bar(self.pipe, progress):
            out = self.pipe(**self.inputs.condition(s.samples), num_inference_steps=s.steps,
                            guidance_scale=s.cfg_scale, generator=generators, output_type="pt",
                            **self.inputs.kwargs)  # fmt: skip
        return _as_images(out[0])

    def __call__(self, schedule: Schedule) -> float:
        """Mean PSNR (dB) of the predictor on ``schedule`` against full compute."""
        with cached(self.pipe, build_method(self.s.predictor, full_steps=schedule)):
            images = self._generate()
            ran = stats(self.pipe)
        full, steps = {tuple(v) for v in ran.full_steps.values()}, set(ran.steps.values())
        if full != {schedule} or steps != {self.s.steps}:
            raise ValueError(
                f"the pipeline ran {sorted(steps)} steps (full: {sorted(full)}) for steps="
                f"{self.s.steps} and the schedule {list(schedule)}: its scheduler does not call "
                "the transformer once per step; fit it with a one-call-per-step scheduler"
            )
        return psnr(images, self.ref)


def _as_images(out: Any) -> torch.Tensor:
    """A pipeline's outputs (N images or videos, in [0, 1]) as (N, 1, 1, D) in [-1, 1]: the
    range of :func:`relcache.evaluation.metrics.psnr`, so a PSNR per image or video."""
    x = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out)
    return (x.detach().float().cpu().flatten(1) * 2 - 1)[:, None, None]


@contextlib.contextmanager
def _progress_bar(pipe: Any, show: bool) -> Iterator[None]:
    """Hide the pipeline's progress bar unless ``show`` (its own setting restored after)."""
    if show or not hasattr(pipe, "set_progress_bar_config"):
        yield
        return
    before = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**before, "disable": True})
    try:
        yield
    finally:
        pipe.set_progress_bar_config(**before)


class SearchState:
    """The scores of every schedule tried, saved as JSON after each generation."""

    def __init__(self, path: Path | None, key: dict, resume: bool) -> None:
        self.path, self.key = path, key
        self.scores: dict[str, float] = {}
        self.seconds, self.references = 0.0, 0
        if path is not None and path.exists():
            if not resume:
                raise ValueError(
                    f"{path} holds an unfinished search; pass --resume to continue it, or delete "
                    "it to start again"
                )
            self._load(path)

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text())
        if data["key"] != self.key:
            diff = sorted(k for k in self.key if data["key"].get(k) != self.key[k])
            raise ValueError(
                f"{path} is a search with other settings ({', '.join(diff)} differ: "
                f"{ {k: data['key'].get(k) for k in diff} }); resume with the same settings, or "
                "delete it to start again"
            )
        self.scores, self.seconds = data["scores"], data["seconds"]
        self.references = data["references"]

    def save(self) -> None:
        """Write the state (atomically) when it has a path."""
        if self.path is None:
            return
        data = {"key": self.key, "scores": self.scores, "seconds": self.seconds,
                "references": self.references}  # fmt: skip
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)


def state_path(out: Path) -> Path:
    """Where the search for the profile ``out`` keeps its state: beside it."""
    return out.with_name(out.stem + ".search.json")


def fit_schedule(
    model: nn.Module,
    nfc: int,
    *,
    steps: int = 50,
    cfg_scale: float = 3.0,
    predictor: str = "taylorseer2",
    samples: int = 16,
    seed: int = 1000,
    radius: int = 3,
    min_gain: float = 0.01,
    max_generations: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    max_seconds: float | None = None,
    model_name: str | None = None,
    progress: bool = True,
    prompts: Sequence[str] | str | None = None,
    class_labels: Sequence[int] | None = None,
    pipeline_kwargs: dict | None = None,
) -> Profile:
    """Fit which steps run fully for ``model`` (the reference DiT or a diffusers pipeline) at a
    budget of ``nfc`` (module docstring); with ``out`` the profile is written there and the
    search state beside it (``resume`` continues it). ``max_seconds``: pause after this long
    (raises SearchPaused; resume later). A pipeline needs ``prompts`` (``class_labels`` for a
    class-conditional one, e.g. DiTPipeline); ``pipeline_kwargs``: more call arguments."""
    s = FitSettings(nfc, steps, cfg_scale, predictor, 2, samples, seed, radius, min_gain,
                    max_generations)  # fmt: skip
    inputs = pipeline_inputs(model, prompts, class_labels, pipeline_kwargs)
    out = None if out is None else Path(out)
    return run_fit(model, s, out, resume, max_seconds, model_name, progress, inputs)


def run_fit(
    model: nn.Module | Any,
    s: FitSettings,
    out: Path | None,
    resume: bool = False,
    max_seconds: float | None = None,
    model_name: str | None = None,
    progress: bool = True,
    inputs: PipelineInputs | None = None,
) -> Profile:
    """:func:`fit_schedule` on validated settings and inputs (``relcache calibrate`` calls
    this); ``inputs``: a pipeline's (None: the reference DiT)."""
    if max_seconds is not None and out is None:
        raise ValueError("max_seconds pauses a search saved beside out=: pass out=PATH.json")
    digest = weights_hash(model)
    path = None if out is None else state_path(out)
    pipeline_key = {} if inputs is None else inputs.key(model)
    state = SearchState(path, {**s.key(), "model": digest, **pipeline_key}, resume)
    start = start_schedule(s.nfc, s.steps, s.warmup)
    with Scorer(model, s, state, max_seconds, progress, inputs) as score:
        try:
            begin = scan(score, start_candidates(s.nfc, s.steps, s.warmup))
            best, after, passes = greedy_exchange(score, begin, s.warmup, s.radius, s.steps,
                                                  s.min_gain)  # fmt: skip
            stopped = "converged"
        except CapReached:
            best, passes, stopped = _best_tried(state.scores), None, "cap"
            after = score(best)
    profile = _profile(model, s, digest, model_name, start, best, after, passes, stopped, state,
                       inputs)  # fmt: skip
    if out is not None:
        save_profile(profile, out)
        state.path.unlink(missing_ok=True)  # finished: the profile holds what the state did
    return profile


class Scorer:
    """A schedule's score: from the state when known, else one generation (saved at once);
    raises CapReached / SearchPaused at the generation cap / time limit."""

    def __init__(self, model: nn.Module | Any, s: FitSettings, state: SearchState,
                 max_seconds: float | None, progress: bool,
                 inputs: PipelineInputs | None = None) -> None:  # fmt: skip
        self.s, self.state, self.max_seconds = s, state, max_seconds
        self.clock = time.perf_counter()
        self.calibration = (  # one full-compute generation
            Calibration(model, s, progress)
            if inputs is None
            else PipelineCalibration(model, s, inputs, progress)
        )
        state.references += 1
        state.seconds += time.perf_counter() - self.clock
        self.bar = tqdm(desc=f"fit NFC {s.nfc}", unit="gen", disable=not progress,
                        initial=len(state.scores))  # fmt: skip

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        self.bar.close()
        self.state.save()
        if kind is SearchPaused:
            raise SearchPaused(
                f"paused after {len(self.state.scores)} generations; continue with resume=True "
                f"(relcache calibrate --resume) from {self.state.path}"
            ) from None

    def __call__(self, schedule: Schedule) -> float:
        name, state = ",".join(map(str, schedule)), self.state
        if name not in state.scores:
            if self.s.max_generations is not None and len(state.scores) >= self.s.max_generations:
                raise CapReached
            if self.max_seconds is not None and time.perf_counter() - self.clock > self.max_seconds:
                raise SearchPaused
            began = time.perf_counter()
            state.scores[name] = self.calibration(schedule)
            state.seconds += time.perf_counter() - began
            state.save()
            self.bar.update(1)
            self.bar.set_postfix(best=f"{max(state.scores.values()):.2f} dB")
        return state.scores[name]


def _best_tried(scores: dict[str, float]) -> Schedule:
    """The best schedule whose score is known (a capped search's result)."""
    return tuple(int(i) for i in max(scores, key=scores.__getitem__).split(","))


def _profile(model: nn.Module | Any, s: FitSettings, digest: str, model_name: str | None,
             start: Schedule, best: Schedule, after: float, passes: int | None, stopped: str,
             state: SearchState, inputs: PipelineInputs | None = None) -> Profile:  # fmt: skip
    """The fitted profile with its scores and what the search cost."""
    name = model_name or f"{type(resolve_model(model)).__name__} {digest}"
    before = state.scores[",".join(map(str, start))]
    metric = METRIC if inputs is None else PIPELINE_METRIC
    score = {"metric": metric, "before": before, "after": after, "start_full_steps": list(start)}
    search = {
        "algorithm": ALGORITHM, "scanned_starts": len(start_candidates(s.nfc, s.steps, s.warmup)),
        "radius": s.radius, "min_gain_db": s.min_gain,
        "calibration_seeds": [s.seed, s.seed + s.samples - 1], "images_per_generation": s.samples,
        "generations": len(state.scores), "reference_generations": state.references,
        "seconds": round(state.seconds, 1), "passes": passes, "stopped": stopped,
    }  # fmt: skip
    if inputs is None:
        return Profile(name, digest, s.steps, s.cfg_scale, s.nfc, s.predictor, best, score, search)
    search["calibration_inputs"] = {k: v for k, v in inputs.key(model).items() if k != "sampler"}
    return Profile(name, digest, s.steps, s.cfg_scale, s.nfc, s.predictor, best, score, search,
                   sampler=pipeline_sampler(model))  # fmt: skip


def evaluate_schedules(
    model: nn.Module, configs: Sequence, seed: int, samples: int, steps: int, cfg_scale: float
) -> list[float]:
    """Mean PSNR (dB) of each config against full compute on images ``seed``.. (held-out)."""
    seeds, labels = sample_set(seed, samples, model.config.num_classes)
    kw = dict(steps=steps, cfg_scale=cfg_scale, batch_size=64, progress=False)
    ref = run_method(model, None, seeds, labels, **kw)
    return [psnr(run_method(model, c, seeds, labels, **kw).images, ref.images) for c in configs]
