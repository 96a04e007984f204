"""Bench settings: validation with fix-it errors, and the command line that reproduces them."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from relcache.caching.methods import RECOMMENDED
from relcache.evaluation.budgets import DEFAULT_METHODS, WARMUP, bench_method
from relcache.evaluation.runner import sampling_kwargs


def _check_int(flag: str, value: int, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{flag} must be an integer >= {minimum}, got {value!r}; {hint}")


def check_finite(flag: str, value: float, minimum: float, hint: str) -> None:
    """``value`` must be a finite number >= ``minimum``; the message says what to pass."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{flag} must be a finite number >= {minimum:g}, got {value!r}; {hint}")


@dataclass(frozen=True)
class BenchSettings:
    """Everything that defines a bench; the ``RESULT_FIELDS`` define its numbers (resume)."""

    steps: int = 50
    cfg_scale: float = 3.0
    samples: int = 1000
    seed: int = 0
    methods: tuple[str, ...] = DEFAULT_METHODS
    budgets: tuple[int, ...] = (14, 11, 10, 8, 7)
    calibration_samples: int = 32
    calibration_seed: int = 100_000  # calibration images: seeds from here, disjoint from report's
    batch_size: int = 64
    analysis: bool = True
    analysis_samples: int = 4
    analysis_budget: int | None = None  # None: the middle budget
    window_samples: int = 64  # images of the step-window analysis (FD2FC needs more than 4)
    grid_columns: int = 16
    out: Path = field(default_factory=lambda: Path("relcache_bench"))
    cache_dir: Path | None = field(default_factory=lambda: Path.home() / ".cache" / "relcache")
    resume: bool = False
    overwrite: bool = False  # replace the results.json of an earlier bench in ``out``
    progress: bool = True
    peers: tuple[str, ...] = ()  # other libraries' caches (relcache.peers), on the diffusers DiT
    peer_match: str | None = None  # the method whose measured FLOPs the peers are tuned to
    model_name: str = "shipped DiT-FM"
    model_args: str = ""  # the model-selecting flags, for the command line in report.md

    RESULT_FIELDS = (
        "steps", "cfg_scale", "samples", "seed", "calibration_samples", "calibration_seed",
        "batch_size",
    )  # fmt: skip

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        object.__setattr__(self, "peers", tuple(self.peers))
        _check_int("--steps", self.steps, WARMUP + 1, f"RFC needs {WARMUP} warmup steps")
        check_finite("--cfg-scale", self.cfg_scale, 0, "1 is no guidance, the default is 3")
        _check_int("--seed", self.seed, 0, "the default is 0")
        _check_int("--calibration-seed", self.calibration_seed, 0, "the default is 100000")
        if self.resume and self.overwrite:
            raise ValueError(
                "--resume continues the bench in --out, --overwrite replaces it: pass one"
            )
        _check_int("--samples", self.samples, 2, "FD needs at least 2 images per method")
        _check_int("--batch-size", self.batch_size, 1, "use 64 on a CPU")
        _check_int("--calibration-samples", self.calibration_samples, 1, "the default is 32")
        _check_int("--grid-columns", self.grid_columns, 1, "the default is 16")
        cal = range(self.calibration_seed, self.calibration_seed + self.calibration_samples)
        if cal.start < self.seed + self.samples and self.seed < cal.stop:
            raise ValueError(
                f"calibration seeds {cal.start}..{cal.stop - 1} overlap the reported seeds "
                f"{self.seed}..{self.seed + self.samples - 1}: thresholds must be chosen on other "
                f"images; pass --calibration-seed {self.seed + self.samples} or higher"
            )
        self._check_methods_and_budgets()
        self._check_peers()
        if self.analysis:
            _check_int("--analysis-samples", self.analysis_samples, 1, "a few (4) are enough")
            _check_int("--window-samples", self.window_samples, 2, "FD2FC needs 2 images or more")
            if self.analysis_budget is not None and self.analysis_budget not in self.budgets:
                raise ValueError(
                    f"--analysis-budget {self.analysis_budget} is not one of --budgets "
                    f"{','.join(map(str, self.budgets))}; pick one of them"
                )

    def _check_methods_and_budgets(self) -> None:
        """Known method names; budgets between the warmup and the step count."""
        if not self.methods:
            raise ValueError(f"--methods is empty; e.g. {','.join(DEFAULT_METHODS)}")
        for name in self.methods:
            bench_method(name)  # ValueError naming the registered methods
        if not self.budgets:
            raise ValueError("--budgets is empty; pass target NFCs such as 14,11,10,8,7")
        for b in self.budgets:
            if isinstance(b, bool) or not isinstance(b, int) or not WARMUP <= b <= self.steps:
                raise ValueError(
                    f"budget NFC {b!r} must be an integer in [{WARMUP}, {self.steps}]: at most "
                    f"--steps, at least the {WARMUP} warmup steps; drop it or raise --steps"
                )

    def _check_peers(self) -> None:
        """Registered peer names; the method they are matched to is benched."""
        if not self.peers:
            if self.peer_match is not None:
                raise ValueError(
                    f"--peer-match {self.peer_match} picks the method the --peers are tuned to, "
                    "but no --peers are given; add --peers NAMES (or all), or drop --peer-match"
                )
            return
        from relcache.peers import get_peer

        for name in self.peers:
            get_peer(name)  # ValueError naming the registered peers
        if self.match_method not in self.methods:
            raise ValueError(
                f"--peer-match {self.match_method} is not in --methods; add it, or pick one of "
                f"{','.join(self.methods)}"
            )

    @property
    def match_method(self) -> str:
        """The method whose measured FLOPs per budget the peers are tuned to."""
        if self.peer_match is not None:
            return self.peer_match
        return RECOMMENDED if RECOMMENDED in self.methods else self.methods[-1]

    @property
    def fig_budget(self) -> int:
        """The budget of the prediction-error analysis."""
        if self.analysis_budget is not None:
            return self.analysis_budget
        return sorted(self.budgets)[len(self.budgets) // 2]

    @property
    def window_count(self) -> int:
        """Images of the step-window analysis: the first ``window_samples`` of the bench's."""
        return min(self.window_samples, self.samples)

    def result_key(self) -> dict:
        """The settings a finished run's numbers depend on (compared on ``resume``)."""
        return {k: getattr(self, k) for k in self.RESULT_FIELDS}

    def derived_key(self) -> dict:
        """The settings of the analyses and peer rows beyond ``result_key`` (a resumed bench
        recomputes a section whose settings changed)."""
        analysis = None
        if self.analysis:
            analysis = {"samples": self.analysis_samples, "budget": self.fig_budget,
                        "window_samples": self.window_count}  # fmt: skip
        return {"analysis": analysis, "peers": self.match_method if self.peers else None}

    def run_kwargs(self) -> dict:
        """Keyword arguments of ``run_method`` / ``run_sharded`` for a run over the sample set."""
        return sampling_kwargs(self)

    def command(self) -> str:
        """The explicit ``relcache bench`` command line that reproduces these settings."""
        parts = ["relcache", "bench", *shlex.split(self.model_args)]
        parts += ["--steps", str(self.steps), "--cfg-scale", f"{self.cfg_scale:g}"]
        parts += ["--samples", str(self.samples), "--seed", str(self.seed)]
        parts += ["--methods", ",".join(self.methods)]
        parts += ["--budgets", ",".join(map(str, self.budgets))]
        parts += ["--calibration-samples", str(self.calibration_samples)]
        parts += ["--calibration-seed", str(self.calibration_seed)]
        parts += ["--batch-size", str(self.batch_size)]
        if self.peers:
            parts += ["--peers", ",".join(self.peers), "--peer-match", self.match_method]
        if self.analysis:
            parts += ["--analysis-samples", str(self.analysis_samples)]
            parts += ["--analysis-budget", str(self.fig_budget)]
            parts += ["--window-samples", str(self.window_samples)]
        else:
            parts.append("--no-analysis")
        parts += ["--out", str(self.out)]
        return shlex.join(parts)
