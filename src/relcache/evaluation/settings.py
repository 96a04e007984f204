"""Bench settings: validation with fix-it errors, and the command line that reproduces them."""

from __future__ import annotations

import math
import shlex
from dataclasses import Field, dataclass, field, fields
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


SWEEP = "sampling and sweep"
PEERS = "peers: other libraries' caches in the same run (pip install 'relcache[peers]')"
OUTPUTS = "analyses and outputs"


def option(group: str, help: str, flag: str | None = None) -> dict[str, str | None]:
    """A settings field's command-line option: its help group and text, its flag when not
    ``--field-name``. ``{methods}`` / ``{peers}`` in the text: the registered names."""
    return {"group": group, "help": help, "flag": flag}


@dataclass(frozen=True)
class BenchSettings:
    """Everything that defines a bench; the ``RESULT_FIELDS`` define its numbers (resume).

    The one definition of the bench's settings: ``relcache bench`` makes one flag per field
    with an :func:`option` (type from the annotation, default from the field) and builds the
    settings from them."""

    steps: int = field(default=50, metadata=option(SWEEP, "DDIM steps"))
    cfg_scale: float = field(default=3.0, metadata=option(SWEEP, "CFG scale"))
    samples: int = field(default=1000, metadata=option(SWEEP, "images per method"))
    seed: int = field(default=0, metadata=option(SWEEP, "first seed; image i uses seed + i"))
    methods: tuple[str, ...] = field(
        default=DEFAULT_METHODS,
        metadata=option(
            SWEEP,
            "comma-separated; a trailing number sets the order, a trailing ':fitted' runs a "
            "fixed-schedule method on the model's fitted profile per budget. Registered: {methods}",
        ),
    )
    budgets: tuple[int, ...] = field(
        default=(14, 11, 10, 8, 7), metadata=option(SWEEP, "target NFCs (the paper's at 50 steps)")
    )
    calibration_samples: int = field(
        default=32, metadata=option(SWEEP, "images used to calibrate RCS thresholds")
    )
    calibration_seed: int = field(  # calibration images: seeds from here, disjoint from report's
        default=100_000,
        metadata=option(
            SWEEP, "first seed of the calibration images, disjoint from the reported seeds"
        ),
    )
    batch_size: int = field(
        default=64, metadata=option(SWEEP, "images per forward batch, x2 rows with CFG")
    )
    peers: tuple[str, ...] = field(  # other libraries' caches (relcache.peers), on diffusers' DiT
        default=(),
        metadata=option(
            PEERS,
            "comma-separated peer names, or 'all' (registered: {peers}); each runs with its "
            "defaults and tuned to the --peer-match method's measured FLOPs at every budget; "
            "every row then runs on the shipped model converted to diffusers",
        ),
    )
    peer_match: str | None = field(  # the method whose measured FLOPs the peers are tuned to
        default=None,
        metadata=option(
            PEERS,
            "the method (in --methods) whose FLOPs per budget the peers are tuned to "
            "(default: the recommended configuration when benched, else the last method)",
        ),
    )
    analysis: bool = field(
        default=True, metadata=option(OUTPUTS, "skip the Fig. 1 analyses", "--no-analysis")
    )
    analysis_samples: int = field(
        default=4, metadata=option(OUTPUTS, "samples for the Fig. 1 analyses")
    )
    analysis_budget: int | None = field(  # None: the middle budget
        default=None,
        metadata=option(
            OUTPUTS, "budget of the prediction-error analysis (default: the middle of --budgets)"
        ),
    )
    window_samples: int = field(  # images of the step-window analysis (FD2FC needs more than 4)
        default=64,
        metadata=option(
            OUTPUTS,
            "samples for the step-window analysis (FD2FC, PSNR when caching only inside a "
            "window of steps; at most --samples are used)",
        ),
    )
    grid_columns: int = field(default=16, metadata=option(OUTPUTS, "images per grid row"))
    out: Path = field(
        default_factory=lambda: Path("relcache_bench"), metadata=option(OUTPUTS, "output folder")
    )
    cache_dir: Path | None = field(  # None: --no-cache
        default_factory=lambda: Path.home() / ".cache" / "relcache",
        metadata=option(OUTPUTS, "where full-compute references are cached"),
    )
    resume: bool = field(
        default=False,
        metadata=option(
            OUTPUTS,
            "continue an interrupted bench in --out: runs already in results.json are "
            "skipped (it must come from the same model and settings)",
        ),
    )
    overwrite: bool = field(  # replace the results.json of an earlier bench in ``out``
        default=False,
        metadata=option(
            OUTPUTS, "replace the bench already in --out (without it, a filled --out is refused)"
        ),
    )
    progress: bool = field(
        default=True, metadata=option(OUTPUTS, "hide progress bars", "--no-progress")
    )
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


def option_fields() -> list[Field]:
    """The settings fields that are command-line options, in flag order."""
    return [f for f in fields(BenchSettings) if "group" in f.metadata]


def flag(name: str) -> str:
    """The command-line flag that sets the settings field ``name``."""
    meta = next(f.metadata for f in fields(BenchSettings) if f.name == name)
    return meta.get("flag") or "--" + name.replace("_", "-")
