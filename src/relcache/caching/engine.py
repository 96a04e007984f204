"""The caching engine: wraps selected modules of any nn.Module and routes each call to
"run and record" (full step) or "predict" (cached step). The math lives in taylor.py and
relational.py; the per-branch, per-module state in state.py.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from relcache.caching import relational as rel
from relcache.caching import taylor
from relcache.caching.methods import CacheMethod
from relcache.caching.state import BranchState, ModuleState
from relcache.caching.structure import (
    as_tensors,
    default_timestep,
    first_tensor,
    flatten_output,
    rebuild_output,
    signature,
    take_rows,
)

InputFn = Callable[[str, tuple, dict], Any]
TimestepFn = Callable[[tuple, dict], "float | None"]


def default_inputs(name: str, args: tuple, kwargs: dict) -> Tensor:
    """A cached module's input I: its first tensor argument."""
    x = first_tensor(args, kwargs)
    if x is None:
        raise TypeError(f"module {name!r} was called without a tensor argument")
    return x


@dataclass(frozen=True)
class Targets:
    """Which modules of a model to cache and how to read their inputs."""

    patterns: tuple[str, ...]
    driver: str | None = None  # RCS module name (regex); default: the first matched module
    inputs: InputFn = default_inputs
    timestep: TimestepFn = default_timestep
    slice_batch: bool = True  # run a partially-full step on the full rows only


@dataclass
class CacheStats:
    """What a generation computed: NFC, full steps, per-module calls, cache memory."""

    nfc: float
    nfc_per_sample: dict[str, list[float]]
    full_steps: dict[str, list[int]]
    steps: dict[str, int]
    module_calls: dict[str, dict[str, int]]
    peak_cache_bytes: int
    method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def match_modules(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the submodules whose full name matches one of ``patterns`` (re.fullmatch)."""
    compiled = [re.compile(p) for p in patterns]
    names = [n for n, _ in model.named_modules() if n and any(c.fullmatch(n) for c in compiled)]
    if not names:
        sample = [n for n, _ in model.named_modules() if n][:8]
        raise ValueError(
            f"no module of {type(model).__name__} matches the patterns {list(patterns)}; "
            f"patterns are re.fullmatch'ed against named_modules(), e.g. {sample}"
        )
    return names


class CacheEngine:
    """Holds a model's cache config, its wrapped modules and the per-branch state."""

    def __init__(self, model: nn.Module, config: CacheMethod, targets: Targets) -> None:
        if not isinstance(config, CacheMethod):
            raise TypeError(
                f"config must be a relcache method such as relcache.RFC(threshold=0.5), got "
                f"{type(config).__name__}"
            )
        self.model, self.config, self.targets = model, config, targets
        self.names = match_modules(model, targets.patterns)
        self.driver = self._pick_driver()
        self.branches: dict[str, BranchState] = {}
        self.active: BranchState | None = None
        self.context: str | None = None
        self._call_t: float | None = None
        self._call_index = 0
        self.peak_bytes = 0
        self._originals: dict[str, Any] = {}
        self._handles: list[Any] = []
        self.adapter: Any = None  # the ModelAdapter that chose the targets, if any
        self.observer: Callable[[dict], None] | None = None  # analysis hook, see observe()
        self.shadow = False  # analysis: also run the module at cached steps to measure error

    def _pick_driver(self) -> str:
        if self.targets.driver is None:
            return self.names[0]
        hits = [n for n in self.names if re.fullmatch(self.targets.driver, n)]
        if not hits:
            raise ValueError(
                f"the RCS driver {self.targets.driver!r} is not among the cached modules; "
                f"pick one of {self.names[:4]} ..."
            )
        return hits[0]

    # ----- attach / detach ------------------------------------------------------------------
    def attach(self) -> None:
        """Wrap every target module's forward and hook the root call (hooks run eagerly)."""
        modules = dict(self.model.named_modules())
        for name in self.names:
            mod = modules[name]
            self._originals[name] = mod.__dict__.get("forward")
            mod.forward = self._wrapper(name, mod.forward)
        begin = torch.compiler.disable(self._begin_call)
        end = torch.compiler.disable(self._end_call)
        self._handles = [
            self.model.register_forward_pre_hook(begin, with_kwargs=True),
            self.model.register_forward_hook(end, with_kwargs=True, always_call=True),
        ]

    def detach(self) -> None:
        """Restore every original forward exactly."""
        modules = dict(self.model.named_modules())
        for name, original in self._originals.items():
            del modules[name].forward
            if original is not None:
                modules[name].forward = original
        for h in self._handles:
            h.remove()

    def reset(self) -> None:
        """Forget every trajectory (called at the start of each generation)."""
        self.branches.clear()
        self.active, self._call_t, self._call_index, self.peak_bytes = None, None, 0, 0

    # ----- step bookkeeping -----------------------------------------------------------------
    def _branch_name(self, t: float | None) -> str:
        if self.context is not None:
            return self.context
        if t is None:
            return "default"
        self._call_index = self._call_index + 1 if t == self._call_t else 0
        self._call_t = t
        return f"call{self._call_index}"

    def _begin_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        t = self.targets.timestep(args, kwargs)
        name = self._branch_name(t)
        br = self.branches.get(name)
        sig = signature(args, kwargs)
        if br is not None and br.signature != sig:
            if br.step > 0 and not (t is not None and br.last_t is not None and t > br.last_t):
                warnings.warn(
                    f"relcache: input shapes changed mid-trajectory in branch {name!r} "
                    f"({br.signature} -> {sig}); starting a new trajectory. Call "
                    "relcache.reset(model) between generations to silence this.",
                    stacklevel=2,
                )
            br = None
        elif br is not None and t is not None and br.last_t is not None and t > br.last_t:
            br = None  # the timestep went up: a new generation
        if br is None:
            if name == "call0":  # a new trajectory of the first branch ends the others' too
                self._drop_branches()
            br = self.branches[name] = BranchState(signature=sig)
        br.last_t = t
        self._start_step(br)
        self.active = br

    def _drop_branches(self) -> None:
        """Forget the automatic branches (call0, call1, ...), keeping named contexts."""
        for key in [k for k in self.branches if k.startswith("call")]:
            del self.branches[key]

    def _start_step(self, br: BranchState) -> None:
        br.full = self.config.is_full(br.step)
        if br.step > 0 and br.last_full is None:
            raise RuntimeError(
                f"no cached module ran during the first {br.step} call(s) of this trajectory; "
                "relcache needs the matched modules to run at every step (check patterns=)"
            )
        if br.step > 0 and br.full is not True:
            k = br.step - br.last_full  # (B,)
            br.coeff = taylor.taylor_coefficients(k, br.n_full, self.config.order)

    def _end_call(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        br, self.active = self.active, None
        if br is None:
            return
        if br.n_full is not None and br.full is not False:
            rows = None if br.full is True else br.full
            self._commit_full(br, rows)
        br.step += 1

    def _commit_full(self, br: BranchState, rows: Tensor | None) -> None:
        """After all modules ran: advance the per-row full-step counters."""
        if rows is None:
            br.n_full = br.n_full + 1
            br.last_full = torch.full_like(br.last_full, br.step)
        else:
            br.n_full = br.n_full.index_add(0, rows, torch.ones_like(rows))
            br.last_full = br.last_full.index_fill(0, rows, br.step)
        br.full_steps.append(br.step)
        self.peak_bytes = max(self.peak_bytes, sum(b.nbytes() for b in self.branches.values()))

    # ----- module routing -------------------------------------------------------------------
    def _wrapper(self, name: str, forward: Callable) -> Callable:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            br = self.active
            if br is None:
                return forward(*args, **kwargs)
            inputs = as_tensors(self.targets.inputs(name, args, kwargs))
            if br.n_full is None:
                self._init_rows(br, inputs[0])
            if name == self.driver:
                self._decide(br, inputs)
            elif br.full is None:
                raise RuntimeError(
                    f"RCS needs its driver {self.driver!r} to run before {name!r} in each step; "
                    "pass driver= the first cached module called by the model"
                )
            return self._route(br, name, forward, inputs, args, kwargs)

        # Under torch.compile a cached module runs eagerly (a graph break around it): the step
        # counters it reads would otherwise be guarded and recompile the graph every step.
        return torch.compiler.disable(cached_forward)

    def _init_rows(self, br: BranchState, x: Tensor) -> None:
        b, dev = x.shape[0], x.device
        br.n_full = torch.zeros(b, dtype=torch.long, device=dev)
        br.last_full = torch.zeros(b, dtype=torch.long, device=dev)
        if self.config.threshold is not None:
            br.rcs_acc = torch.zeros(b, dtype=torch.float32, device=dev)

    def _route(self, br, name, forward, inputs, args, kwargs) -> Any:
        st = br.modules.setdefault(name, ModuleState())
        if br.full is True:
            out = forward(*args, **kwargs)
            self._record(br, st, None, *flatten_output(out), inputs)
            br.full_calls[name] = br.full_calls.get(name, 0) + 1
            if self.observer is not None:
                self._observe(br, name, inputs, flatten_output(out)[0], None)
            return out
        if st.factors is None:
            raise RuntimeError(
                f"module {name!r} has no cached value at step {br.step}: it was not called at "
                "the previous full steps; cache only modules that run at every step"
            )
        pred = self._predict(br, st, inputs)
        br.cached_calls[name] = br.cached_calls.get(name, 0) + 1
        if br.full is False:
            if self.observer is not None:
                actual = flatten_output(forward(*args, **kwargs))[0] if self.shadow else None
                self._observe(br, name, inputs, pred, actual)
            return rebuild_output(pred, st.template)
        return self._partial(br, st, name, forward, pred, inputs, args, kwargs)

    def _partial(self, br, st, name, forward, pred, inputs, args, kwargs) -> Any:
        """Some rows are full: run them (alone if slicing is allowed) and merge."""
        rows, batch = br.full, inputs[0].shape[0]
        if self.targets.slice_batch:
            sub_args, sub_kwargs = take_rows(args, rows, batch), take_rows(kwargs, rows, batch)
            outs, template = flatten_output(forward(*sub_args, **sub_kwargs))
        else:
            outs, template = flatten_output(forward(*args, **kwargs))
            outs = [o.index_select(0, rows) for o in outs]
        sub_inputs = [x.index_select(0, rows) for x in inputs]
        self._record(br, st, rows, outs, template, sub_inputs)
        merged = [p.index_copy(0, rows, o.to(p.dtype)) for p, o in zip(pred, outs, strict=False)]
        return rebuild_output(merged, st.template)

    # ----- decision (RCS) -------------------------------------------------------------------
    def _decide(self, br: BranchState, inputs: list[Tensor]) -> None:
        """RCS (§3): accumulate the driver input's relative L1 error; cross tau -> full step."""
        if self.config.threshold is None:
            return
        x = inputs[0]  # (B, ...)
        if br.full is None:
            predicted = taylor.combine(br.rcs_factors, br.coeff)  # (B, N)
            error = rel.relative_l1_error(x.reshape(x.shape[0], -1), predicted)  # (B,)
            br.rcs_acc = br.rcs_acc + error
            mask = br.rcs_acc > self.config.threshold  # (B,)
            br.rcs_acc = torch.where(mask, 0.0, br.rcs_acc)
            n = int(mask.sum())  # the one host sync RCS needs per step
            br.full = True if n == x.shape[0] else False if n == 0 else mask.nonzero()[:, 0]
        if br.full is not False:
            rows = None if br.full is True else br.full
            gap, nf = self._gaps(br, rows)
            old = self._rows(br.rcs_factors, rows)
            new = taylor.update_factors(old, self._rows(x, rows), gap, nf)
            br.rcs_factors = self._store(br.rcs_factors, new, rows, self.config.order)

    # ----- record / predict -----------------------------------------------------------------
    def _gaps(self, br: BranchState, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        gap = (br.step - br.last_full).clamp_min(1)  # (B,) d = i - j
        if rows is None:
            return gap, br.n_full
        return gap.index_select(0, rows), br.n_full.index_select(0, rows)

    @staticmethod
    def _rows(t: Tensor | None, rows: Tensor | None) -> Tensor | None:
        """The given batch rows of a per-row tensor (B, ...); all rows when ``rows`` is None."""
        if t is None or rows is None:
            return t
        return t.index_select(0, rows)

    @staticmethod
    def _store(full: Tensor | None, new: Tensor, rows: Tensor | None, order: int) -> Tensor:
        """Write updated rows back; orders grow from 1 to m+1 factors as full steps arrive."""
        if full is None or rows is None:
            return CacheEngine._pad_orders(new, order)
        return full.index_copy(0, rows, CacheEngine._pad_orders(new, order))

    @staticmethod
    def _pad_orders(new: Tensor, order: int) -> Tensor:
        if new.shape[-1] == order + 1:
            return new
        pad = new.new_zeros((*new.shape[:-1], order + 1 - new.shape[-1]))
        return torch.cat([new, pad], dim=-1)  # (B, N, m+1)

    def _record(self, br, st: ModuleState, rows, outs, template, inputs: list[Tensor]) -> None:
        """Full step: update Taylor factors and, for RFE, s and the increments' Gram (§2-§3)."""
        if st.template is None:
            st.template, st.dtypes = template, [o.dtype for o in outs]
            st.shapes = [tuple(o.shape[1:]) for o in outs]
        gap, nf = self._gaps(br, rows)
        old_factors = st.factors or [None] * len(outs)
        new_factors = []
        for o, old_all in zip(outs, old_factors, strict=False):
            old = self._rows(old_all, rows)
            new = taylor.update_factors(old, o, gap, nf)
            new_factors.append((old, self._store(old_all, new, rows, self.config.order)))
        if self.config.relational:
            self._record_relational(st, rows, new_factors, inputs, nf)
        st.factors = [f for _, f in new_factors]

    def _record_relational(self, st, rows, new_factors, inputs, nf) -> None:
        """RFE at a full step: s = ||O(i)-O(j)|| / ||I(i)-I(j)|| and Gram of f_1..f_m (§3)."""
        last = [self._rows(t, rows) for t in st.last_input] if st.last_input else None
        in_delta = self._input_change(inputs, last)  # (b,)
        fresh = nf == 0
        ratios, grams = [], []
        for j, (old, full) in enumerate(new_factors):
            new = self._rows(full, rows)  # (b, N, m+1)
            if old is None:
                out_delta = torch.full_like(in_delta, float("nan"))
            else:
                out_delta = rel.row_norm(new[..., 0] - old[..., 0])
            ratio = torch.where(fresh, float("nan"), rel.relational_ratio(out_delta, in_delta))
            gram = rel.increment_gram(new)
            ratios.append(self._put(st.ratio[j] if st.ratio else None, ratio, rows))
            grams.append(self._put(st.gram[j] if st.gram else None, gram, rows))
        st.ratio, st.gram = ratios, grams
        olds = st.last_input or [None] * len(inputs)
        st.last_input = [self._put(o, x.detach(), rows) for o, x in zip(olds, inputs, strict=False)]

    @staticmethod
    def _put(full: Tensor | None, part: Tensor, rows: Tensor | None) -> Tensor:
        return part if full is None or rows is None else full.index_copy(0, rows, part)

    @staticmethod
    def _input_change(inputs: list[Tensor], last: list[Tensor] | None) -> Tensor:
        """||I - I(i)||_2 per row over all input tensors together. (B,)"""
        if last is None:
            return torch.zeros(inputs[0].shape[0], device=inputs[0].device)
        sq = sum(rel.row_norm(taylor.accum(x) - y) ** 2 for x, y in zip(inputs, last, strict=False))
        return sq.sqrt()

    def _predict(self, br: BranchState, st: ModuleState, inputs: list[Tensor]) -> list[Tensor]:
        """Cached step: Taylor sum, or RFE's rescaled increment, for every output tensor."""
        coeffs = [br.coeff] * len(st.factors)
        if self.config.relational:
            change = self._input_change(inputs, st.last_input)  # (B,)
            coeffs = [
                rel.rfe_coefficients(br.coeff, g, s, change)
                for g, s in zip(st.gram, st.ratio, strict=False)
            ]
        return [
            taylor.combine(f, c).reshape(f.shape[0], *shape).to(dt)  # (B, ...)
            for f, c, dt, shape in zip(st.factors, coeffs, st.dtypes, st.shapes, strict=True)
        ]

    def _observe(self, br, name, inputs, outputs, actual) -> None:
        """Report one module call to the analysis observer (full: actual is None)."""
        branch = next(k for k, v in self.branches.items() if v is br)
        self.observer(
            {
                "name": name,
                "step": br.step,
                "branch": branch,
                "full": actual is None and br.full is True,
                "inputs": inputs,
                "outputs": outputs,
                "actual": actual,
            }
        )

    # ----- reporting ------------------------------------------------------------------------
    def stats(self) -> CacheStats:
        """NFC (mean over rows and branches), full steps, per-module calls, peak cache bytes."""
        per_sample = {
            k: (b.n_full.float().tolist() if b.n_full is not None else [])
            for k, b in self.branches.items()
        }
        flat = [v for vs in per_sample.values() for v in vs]
        calls: dict[str, dict[str, int]] = {n: {"full": 0, "cached": 0} for n in self.names}
        for b in self.branches.values():
            for n, c in b.full_calls.items():
                calls[n]["full"] += c
            for n, c in b.cached_calls.items():
                calls[n]["cached"] += c
        return CacheStats(
            nfc=sum(flat) / len(flat) if flat else 0.0,
            nfc_per_sample=per_sample,
            full_steps={k: list(b.full_steps) for k, b in self.branches.items()},
            steps={k: b.step for k, b in self.branches.items()},
            module_calls=calls,
            peak_cache_bytes=self.peak_bytes,
            method=self.config.describe(),
        )

    @contextlib.contextmanager
    def branch(self, name: str) -> Iterator[None]:
        """Route the calls inside to the named branch (e.g. "cond" / "uncond")."""
        previous, self.context = self.context, name
        try:
            yield
        finally:
            self.context = previous
