"""A memory plan before any work (``relcache.plan``, ``relcache plan``), counted on the meta
device: no weights are loaded, no data is made, nothing runs on a GPU.

For one model (a preset of ``presets.py``) at one size and batch, each row is a caching
configuration (a granularity and a factor dtype of the method asked for) with four numbers:

- **weights**: the bytes of every parameter and buffer of the transformer in its compute dtype
  (modules its class keeps in float32 counted in float32). The text encoders and the VAE are not
  counted (pipelines can offload them; the VAE's decode of a long video can need its own peak).
- **cache**: ``relcache.stats(model).peak_cache_bytes`` after a short trajectory of the model on
  the meta device with the method applied: full steps 0, 1 and 3, a cached step 2, each step
  called as the preset's pipeline calls it (batched CFG: the batch doubled; sequential CFG: two
  calls, two branches). That creates every tensor the method keeps (Taylor factors, RFE's last
  inputs and ratios, RCS's driver factors, the work buffers), so the number is the one a real run
  reports. An adaptive schedule (RCS, budget) reads its error on the host, which meta tensors
  cannot do, so its scheduler runs on that fixed schedule: it records what it keeps at the full
  steps and never decides.
- **activations**: the peak of the bytes alive during that trajectory (every tensor an op
  allocates, tracked by a ``TorchDispatchMode`` and freed through a ``weakref.finalize`` on its
  storage: inputs, intermediates, outputs, caching's own temporaries) minus the cache. Attention
  is counted as the fused kernel a GPU runs (flash / memory-efficient attention: the output and a
  float32 log-sum-exp per query, no L x L matrix): ``scaled_dot_product_attention`` is replaced
  by that on the meta device. The allocator's rounding and fragmentation are not modelled.
- **total** = weights + cache + activations; the row **fits** when total <= the GPU's memory.
"""

from __future__ import annotations

import dataclasses
import itertools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import relcache
from relcache.api import family_defaults
from relcache.caching.methods import KNOBS, CacheMethod, parse_method
from relcache.caching.methods.registry import merge_knobs
from relcache.evaluation.presets import (
    Geometry,
    Preset,
    build_model,
    find_preset,
    geometry,
    model_inputs,
    tokens,
)

GIB = 2**30
PLAN_STEPS = 4  # steps of the meta trajectory
PLAN_FULL_STEPS = (0, 1, 3)  # full, full, cached, full: every kept tensor and buffer exists
DEFAULT_METHOD = "rfc2"


# ----- counting live bytes on the meta device ---------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """The bytes of the storages that ops allocate inside the mode and that are still alive, and
    their peak (views, in-place and ``out=`` results allocate nothing). On the meta device an
    allocating op's outputs depend only on its arguments' shapes, strides and dtypes, so they
    are made from a memo of earlier calls (the meta kernels of many ops run in Python: a block
    repeated 40 times is shape-inferred once)."""

    def __init__(self, memo: dict[tuple, Any] | None = None) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.sizes: dict[int, int] = {}  # storage id -> bytes, while alive
        self.memo = {} if memo is None else memo  # (op, argument metadata) -> output metadata

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if any(r.alias_info is not None for r in func._schema.returns):
            return func(*args, **kwargs)  # a view, in-place or out= result: nothing new
        out = self._allocate(func, args, kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                self._track(t.untyped_storage())
        return out

    def _allocate(self, func, args: tuple, kwargs: dict) -> Any:  # noqa: ANN001
        """``func``'s result, from the memo when its meta outputs are known."""
        key = _meta_key((func, args, kwargs))
        if key is None:
            return func(*args, **kwargs)
        if key not in self.memo:
            out = func(*args, **kwargs)
            fresh = _all_meta(out) and not _shares_storage(out, (args, kwargs))
            self.memo[key] = pytree.tree_map(_spec, out) if fresh else None
            return out
        spec = self.memo[key]
        return func(*args, **kwargs) if spec is None else pytree.tree_map(_make, spec)

    def _track(self, storage: torch.UntypedStorage) -> None:
        """Count ``storage`` until it is freed."""
        key = storage._cdata
        if key in self.sizes:
            return
        self.sizes[key] = storage.nbytes()
        self.live += self.sizes[key]
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)


@dataclass(frozen=True)
class _Spec:
    """A meta tensor's metadata."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


def _spec(x: Any) -> Any:
    return _Spec(tuple(x.shape), x.stride(), x.dtype) if isinstance(x, Tensor) else x


def _make(x: Any) -> Any:
    if not isinstance(x, _Spec):
        return x
    return torch.empty_strided(x.shape, x.stride, dtype=x.dtype, device="meta")


def _all_meta(out: Any) -> bool:
    """Whether ``out`` holds meta tensors and nothing but hashable constants."""
    leaves = pytree.tree_leaves(out)
    tensors = [x for x in leaves if isinstance(x, Tensor)]
    return bool(tensors) and all(x.is_meta for x in tensors) and len(tensors) == len(leaves)


class _NotMemoisable(Exception):
    """An argument the memo cannot describe (a real tensor, an unhashable object)."""


def _shares_storage(out: Any, inputs: Any) -> bool:
    """Whether an output is a view of an input although its op does not say so
    (``aten._unsafe_view``): such an op must run, not be memoised as an allocation."""
    held = {t.untyped_storage()._cdata for t in _tensors(inputs)}
    return any(t.untyped_storage()._cdata in held for t in _tensors(out))


def _tensors(value: Any) -> list[Tensor]:
    """The tensors in a nest of containers."""
    return [x for x in pytree.tree_leaves(value) if isinstance(x, Tensor)]


def _meta_key(value: Any) -> Any:
    """A hashable description of an op's arguments (None: not describable, do not memoise)."""
    try:
        return _freeze(value)
    except _NotMemoisable:
        return None


def _freeze(x: Any) -> Any:
    """``x`` with meta tensors replaced by their metadata, containers by tuples."""
    if isinstance(x, Tensor):
        if not x.is_meta:
            raise _NotMemoisable
        return x.shape, x.stride(), x.dtype
    if isinstance(x, (list, tuple)):
        return type(x), tuple(_freeze(v) for v in x)
    if isinstance(x, dict):
        return dict, tuple((k, _freeze(v)) for k, v in x.items())
    try:
        hash(x)
    except TypeError:
        raise _NotMemoisable from None
    return type(x), x


class FusedAttention(TorchFunctionMode):
    """``scaled_dot_product_attention`` as a fused GPU kernel allocates: the output and a float32
    log-sum-exp per query and head (freed at once), never the L x L score matrix."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, _, v = _qkv(args, kwargs)  # (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, Dv)
        q.new_empty(q.shape[:-1], dtype=torch.float32)  # (B, H, Lq) log-sum-exp
        return q.new_empty((*q.shape[:-1], v.shape[-1]))  # (B, H, Lq, Dv)


class MetaHostReads(TorchDispatchMode):
    """Host reads of meta tensors (``.tolist()``, ``.item()``) give zeros instead of failing:
    ``relcache.stats`` reads the rows' full-step counts to the host (caching/stats.py,
    ``collect``), which meta tensors hold no values for; the cache's bytes come from shapes."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.is_meta:
            if func is torch.ops.aten._local_scalar_dense.default:
                return torch.zeros((), dtype=x.dtype).item()
            device = kwargs.get("device")
            if func is torch.ops.aten._to_copy.default and device not in (None, x.device):
                return torch.zeros(x.shape, dtype=kwargs.get("dtype") or x.dtype, device=device)
        return func(*args, **kwargs)


def _qkv(args: tuple, kwargs: dict) -> tuple[Tensor, Tensor, Tensor]:
    """query, key, value of an attention call, positional or keyword."""
    names = ("query", "key", "value")
    given = list(args[:3]) + [kwargs[n] for n in names[len(args[:3]) :]]
    return given[0], given[1], given[2]


# ----- one model at one size: its meta instance and its calls -----------------------------------
@dataclass
class Setup:
    """A preset built on the meta device and how its pipeline calls it at one size and batch."""

    preset: Preset
    geo: Geometry
    batch: int
    model: nn.Module
    memo: dict[tuple, Any] = dataclasses.field(default_factory=dict)  # LiveBytes' shapes

    @property
    def calls(self) -> int:
        """Transformer calls per denoising step (sequential CFG: one per branch)."""
        return 1 if self.preset.batched_cfg else self.preset.cfg

    @property
    def rows(self) -> int:
        """Batch rows of one call (batched CFG doubles the batch)."""
        return self.batch * (self.preset.cfg if self.preset.batched_cfg else 1)

    def call(self) -> None:
        """One call on fresh meta inputs (made here, so they count as live)."""
        self.model(**model_inputs(self.preset, self.geo, self.rows))


def setup(preset: Preset, height: int, width: int, frames: int | None, batch: int) -> Setup:
    """The meta model and geometry of a plan."""
    geo = geometry(preset, height, width, frames)
    return Setup(preset, geo, batch, build_model(preset))


@dataclass(frozen=True)
class Counted:
    """What one meta trajectory measured."""

    cache: int  # relcache.stats(model).peak_cache_bytes
    peak: int  # the peak live bytes (cache included)


def measure(s: Setup, config: CacheMethod | None) -> Counted:
    """Run ``config`` (None: one full-compute call) on the meta trajectory and count."""
    tracker = LiveBytes(s.memo)
    with torch.no_grad(), FusedAttention(), tracker:
        if config is None:
            s.call()
            return Counted(0, tracker.peak)
        with relcache.cached(s.model, on_plan_schedule(config)):
            for step in range(PLAN_STEPS):
                with relcache.at_step(s.model, step):
                    for _ in range(s.calls):
                        s.call()
            with MetaHostReads():
                cache = relcache.stats(s.model).peak_cache_bytes
    return Counted(cache, tracker.peak)


class PinnedScheduler:
    """A method's scheduler on the plan's fixed schedule: decisions come from the schedule, and
    everything else (``at_input``, where RCS records its driver's factors at full steps, the
    tensors it holds, its counters) is the method's own scheduler's, so it holds what it holds
    in a real run without reading any data."""

    adaptive = False
    shares_across_branches = False

    def __init__(self, own: Any, fixed: Any) -> None:
        self.own, self.fixed = own, fixed

    def begin(self, history: Any) -> Any:
        return self.fixed.begin(history)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.own, name)


def on_plan_schedule(config: CacheMethod) -> CacheMethod:
    """``config`` with its predictor, granularity and factor dtype, on the plan's schedule."""
    fixed = config.with_full_steps(PLAN_FULL_STEPS)

    def scheduler() -> PinnedScheduler:
        return PinnedScheduler(config.scheduler(), fixed.scheduler())

    return dataclasses.replace(fixed, make_scheduler=scheduler)


# ----- the plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanRow:
    """One configuration and its memory."""

    model: str
    height: int
    width: int
    frames: int | None
    tokens: int  # image / video tokens per sample
    batch: int
    cfg_branches: int
    cfg_batched: bool  # the branches share one call (a doubled batch)
    method: str  # the spec asked for
    method_label: str  # the config's label
    granularity: str
    factors_dtype: str
    compute_dtype: str
    weights_bytes: int
    cache_bytes: int
    activations_bytes: int
    total_bytes: int
    fits: bool


@dataclass(frozen=True)
class MemoryPlan:
    """The rows of a plan, the GPU they are checked against and what to do about it."""

    rows: list[PlanRow]
    gpu_memory_bytes: int
    full_compute_bytes: int  # weights + activations of one call without a cache
    advice: str

    def fitting(self) -> list[PlanRow]:
        """The rows that fit."""
        return [r for r in self.rows if r.fits]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: {"rows": [...], "gpu_memory_bytes", "full_compute_bytes", "advice"}."""
        return {
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "full_compute_bytes": self.full_compute_bytes,
            "advice": self.advice,
        }


@dataclass(frozen=True)
class Request:
    """What a plan was asked for (sizes resolved against the preset's defaults)."""

    preset: Preset
    height: int
    width: int
    frames: int | None
    batch: int
    method: str
    knobs: dict[str, object]  # granularity / factors_dtype given beside the spec
    gpu_bytes: int


def plan(
    model: str | Preset = "dit-fm",
    *,
    method: str = DEFAULT_METHOD,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    batch: int = 1,
    granularity: str | None = None,
    factors_dtype: str | None = None,
    gpu_memory: float = 80.0,
) -> MemoryPlan:
    """The memory plan of ``method`` (a registry spec such as ``"rfc2"`` or
    ``"taylorseer2:granularity=stack"``) on ``model`` (a preset name or :class:`Preset`) at
    ``height`` x ``width`` (x ``frames``; default: the preset's) for ``batch`` samples, against
    ``gpu_memory`` GiB. Without ``granularity`` / ``factors_dtype`` (here or in the spec) every
    granularity and both factor dtypes (float32, the model's compute dtype) are planned.

    Counted on the meta device (this module's docstring): weights from the parameters and
    buffers, the cache from ``relcache.stats`` after a short trajectory, activations as the
    peak of the bytes alive during it (attention as a fused kernel) minus the cache."""
    preset = find_preset(model)
    _check_sizes(batch, gpu_memory)
    given = {"granularity": granularity, "factors_dtype": factors_dtype}
    req = Request(
        preset=preset,
        height=preset.height if height is None else height,
        width=preset.width if width is None else width,
        frames=frames,
        batch=batch,
        method=method,
        knobs={k: v for k, v in given.items() if v is not None},
        gpu_bytes=round(gpu_memory * GIB),
    )
    s = setup(preset, req.height, req.width, req.frames, batch)
    full = measure(s, None).peak + weights_bytes(s.model)
    rows = [row(req, s, c) for c in configs(req, s.model)]
    return MemoryPlan(rows, req.gpu_bytes, full, advice(req, s, rows, full))


def _check_sizes(batch: int, gpu_memory: float) -> None:
    """A positive batch and GPU memory."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    if not gpu_memory > 0 or gpu_memory == float("inf"):
        raise ValueError(f"gpu_memory must be a positive number of GiB, got {gpu_memory!r}")


def weights_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer."""
    held = itertools.chain(model.parameters(), model.buffers())
    return sum(t.numel() * t.element_size() for t in held)


def factor_dtypes(preset: Preset) -> tuple[str, ...]:
    """float32 and the model's compute dtype (once when they are the same)."""
    return tuple(dict.fromkeys(("float32", preset.dtype)))


def configs(req: Request, model: nn.Module) -> Iterator[CacheMethod]:
    """The configurations to plan: each granularity x factor dtype not fixed by the request,
    with the model family's knob defaults (``relcache.method_for``'s) under the spec's."""
    entry, implied = parse_method(req.method)
    values = merge_knobs(req.method, implied, req.knobs)
    values = entry.with_defaults(values, family_defaults(model).get(entry.name, {}))
    granularities = _given(values, "granularity", KNOBS["granularity"].choices)
    dtypes = _given(values, "factors_dtype", factor_dtypes(req.preset))
    for g, d in itertools.product(granularities, dtypes):
        yield entry.example(**{**values, "granularity": g, "factors_dtype": d})


def _given(values: dict[str, object], knob: str, every: tuple[str, ...]) -> tuple[str, ...]:
    """The one value the request fixed for ``knob``, else ``every``."""
    return (values[knob],) if values.get(knob) is not None else every


def row(req: Request, s: Setup, config: CacheMethod) -> PlanRow:
    """Count one configuration."""
    counted = measure(s, config)
    weights = weights_bytes(s.model)
    total = weights + counted.peak
    p = req.preset
    return PlanRow(
        model=p.name,
        height=req.height,
        width=req.width,
        frames=None if s.geo.frames is None else (req.frames or p.frames),
        tokens=tokens(p, s.geo),
        batch=req.batch,
        cfg_branches=p.cfg,
        cfg_batched=p.batched_cfg and p.cfg > 1,
        method=req.method,
        method_label=config.describe(),
        granularity=config.granularity,
        factors_dtype=config.factors_dtype or p.dtype,
        compute_dtype=p.dtype,
        weights_bytes=weights,
        cache_bytes=counted.cache,
        activations_bytes=counted.peak - counted.cache,
        total_bytes=total,
        fits=total <= req.gpu_bytes,
    )


# ----- advice -----------------------------------------------------------------------------------
def advice(req: Request, s: Setup, rows: list[PlanRow], full: int) -> str:
    """The verdict: what fits, or what would."""
    gpu = gib(req.gpu_bytes)
    fitting = [r for r in rows if r.fits]
    if fitting:
        best = min(fitting, key=lambda r: r.total_bytes)
        return (
            f"{len(fitting)} of {len(rows)} configurations fit {gpu}; the leanest is "
            f"{_unit(best)} ({gib(best.total_bytes)})."
        )
    if full > req.gpu_bytes:
        return (
            f"nothing fits {gpu}: full compute alone (weights + activations, no cache) needs "
            f"{gib(full)}. Use a larger GPU, a smaller size or fewer frames, or split the tokens "
            "over GPUs (context parallelism)."
        )
    found = _what_fits(req, s, rows)
    if found is None:
        return (
            f"nothing fits {gpu}, not even granularity=stack with half-precision factors at "
            f"batch 1; full compute without a cache needs {gib(full)}."
        )
    return f"nothing fits {gpu}; what would: {found}."


def _what_fits(req: Request, s: Setup, rows: list[PlanRow]) -> str | None:
    """The first lean alternative that fits: stack granularity with half-precision factors (the
    compute dtype's, else bfloat16) at this batch, then at smaller batches."""
    half = req.preset.dtype if req.preset.dtype != "float32" else "bfloat16"
    lean = {"granularity": "stack", "factors_dtype": half}
    planned = {(r.granularity, r.factors_dtype) for r in rows}
    for batch in _smaller_batches(req.batch):
        if batch == req.batch and ("stack", half) in planned:
            continue  # measured already: it does not fit
        alt = dataclasses.replace(req, batch=batch, method=_without_units(req.method), knobs=lean)
        r = row(alt, dataclasses.replace(s, batch=batch), next(configs(alt, s.model)))
        if r.fits:
            found = f"{_unit(r)} ({gib(r.total_bytes)})"
            return found if batch == req.batch else f"{found} at batch {batch}"
    return None


def _without_units(spec: str) -> str:
    """``spec`` without its granularity and factors_dtype knobs."""
    head, *knobs = spec.split(":")
    kept = [k for k in knobs if k.partition("=")[0].strip() not in ("granularity", "factors_dtype")]
    return ":".join([head, *kept])


def _smaller_batches(batch: int) -> list[int]:
    """``batch``, then halves down to 1."""
    out = [batch]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def _unit(r: PlanRow) -> str:
    """A row's configuration in a few words."""
    return f"granularity={r.granularity} with {r.factors_dtype} factors"


def gib(n: int) -> str:
    """Bytes in GiB with one decimal (in MiB below 1 GiB)."""
    if n >= GIB or n == 0:
        return f"{n / GIB:,.1f} GiB"
    return f"{n / 2**20:,.1f} MiB"


# ----- the human table --------------------------------------------------------------------------
COLUMNS: tuple[tuple[str, Callable[[PlanRow], str]], ...] = (
    ("granularity", lambda r: r.granularity),
    ("factors", lambda r: r.factors_dtype),
    ("weights", lambda r: gib(r.weights_bytes)),
    ("cache", lambda r: gib(r.cache_bytes)),
    ("activations", lambda r: gib(r.activations_bytes)),
    ("total", lambda r: gib(r.total_bytes)),
    ("fits", lambda r: "yes" if r.fits else "no"),
)


def _pad(cell: str, width: int, column: int) -> str:
    """Names left-aligned, numbers right-aligned."""
    return cell.ljust(width) if column < 2 else cell.rjust(width)


def header(p: MemoryPlan) -> str:
    """What was planned, in one line."""
    r = p.rows[0]
    size = f"{r.width}x{r.height}" + ("" if r.frames is None else f", {r.frames} frames")
    cfg = "no CFG" if r.cfg_branches == 1 else f"CFG {r.cfg_branches} branches"
    cfg += "" if r.cfg_branches == 1 else (" batched" if r.cfg_batched else " as separate calls")
    return (
        f"{r.model} at {size} ({r.tokens:,} tokens), batch {r.batch}, {cfg}, "
        f"{r.compute_dtype}; method {r.method}; GPU {gib(p.gpu_memory_bytes)}"
    )


def table(p: MemoryPlan) -> str:
    """The plan as a readable table with its verdict."""
    cells = [[name for name, _ in COLUMNS], *[[show(r) for _, show in COLUMNS] for r in p.rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(_pad(c, w, i) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in cells
    ]
    footer = [
        f"full compute without a cache: {gib(p.full_compute_bytes)}",
        f"verdict: {p.advice}",
    ]
    return "\n".join([header(p), *lines, *footer])
