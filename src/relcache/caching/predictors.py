"""Predictors: record module outputs at full steps, predict them at cached steps (RFC_SPEC §2-§3).

A predictor is made per branch (one trajectory) and keeps the state of every cached module of that
branch, keyed by module name. Everything that depends only on full steps is computed in
:meth:`Predictor.record`, so :meth:`Predictor.predict` is a short expression per module: the Taylor
sum is one batched contraction of the stored factors with the step's coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from relcache.caching import relational as rel
from relcache.caching import taylor
from relcache.caching.history import History


class Predictor:
    """Per-branch record/predict for every cached module (one instance per trajectory)."""

    def record(
        self,
        name: str,
        history: History,
        rows: Tensor | None,
        outputs: list[Tensor],
        inputs: list[Tensor],
    ) -> None:
        """Full step of module ``name`` for ``rows`` (None: all rows): update its state."""
        raise NotImplementedError

    def predict(self, name: str, history: History, inputs: list[Tensor]) -> list[Tensor]:
        """Cached step: the predicted outputs of ``name``, shaped and typed like the recorded."""
        raise NotImplementedError

    def ready(self, name: str) -> bool:
        """Whether ``name`` has been recorded (it can be predicted)."""
        raise NotImplementedError

    def prepare(self, history: History) -> None:
        """Before a cached step's first prediction (eager, outside any compiled graph): compute
        what this step's predictions of every module share, so :meth:`predict` reads no step."""

    def tensors(self) -> list[Tensor]:
        """Every tensor held, for memory accounting."""
        return []

    def anchor(self, name: str) -> list[Tensor] | None:
        """The outputs of ``name`` at its last full step, O(i) (analysis), if kept."""
        return None


@dataclass
class TaylorState:
    """One module's Taylor factors per output tensor, and the outputs' shapes and dtypes."""

    factors: list[Tensor]  # per output: (B, m+1, N) fp32
    shapes: list[tuple[int, ...]]  # per output, without batch
    dtypes: list[torch.dtype]


class TaylorPredictor(Predictor):
    """TaylorSeer (§2): O_hat = sum_r f_r k^r / r!; order 0 reuses the last output (FORA).

    ``warmup``: as the official code, differences are formed only at full steps i > W - 2, so
    with W = 3 (FLUX) the second warm-up step stores f0 only (no change for W <= 2)."""

    def __init__(
        self, order: int, warmup: int | None = None, factors_dtype: torch.dtype | None = None
    ) -> None:
        self.order = order
        self.factors_dtype = factors_dtype  # None: half-precision outputs' own dtype, else fp32+
        self.skip = max((warmup or 0) - 2, 0)  # warm-up full steps whose differences are dropped
        self.modules: dict[str, TaylorState] = {}
        self.dtypes: set[torch.dtype] = set()  # of the coefficients (the factors' fp32+)
        self.scratch = taylor.Scratch()  # work buffers shared by the modules' updates

    def ready(self, name: str) -> bool:
        return name in self.modules

    def record(self, name, history, rows, outputs, inputs) -> None:
        self._record_factors(name, history, rows, outputs)

    def _record_factors(self, name, history, rows, outputs) -> list[Tensor]:
        """Official factor update (§2) for ``rows``; returns those rows' new factors."""
        gap, nf = history.gaps(rows)
        if self.skip:  # the full steps before step W - 1 do not count: i <= W - 2 stores f0
            nf = nf.mul(0) if history.step <= self.skip else (nf - self.skip).clamp_min(0)
        st = self.modules.get(name)
        if st is None:
            shapes = [tuple(o.shape[1:]) for o in outputs]
            dtypes = [o.dtype for o in outputs]
            st = self.modules[name] = TaylorState([None] * len(outputs), shapes, dtypes)
        stored = [
            taylor.record_rows(f, o, gap, nf, rows, self.order, self.scratch, self._store(o))
            for f, o in zip(st.factors, outputs, strict=True)
        ]
        st.factors = [full for full, _ in stored]
        self.dtypes.update(taylor.accum_dtype(f.dtype) for f in st.factors)
        return [new for _, new in stored]

    def _store(self, output: Tensor) -> torch.dtype | None:
        """The factors' dtype for ``output`` (None: the arithmetic's own fp32+)."""
        if self.factors_dtype is not None:
            return self.factors_dtype
        return output.dtype if output.dtype in taylor.HALF else None

    def prepare(self, history: History) -> None:
        """This step's Taylor coefficients, once per factor dtype."""
        for dtype in self.dtypes:
            history.coefficients(self.order, dtype)

    def coefficients(self, name: str, history: History, inputs: list[Tensor]) -> list[Tensor]:
        """Per output tensor: the (B, m+1) coefficients of the factors at this step."""
        factors = self.modules[name].factors
        return [history.coefficients(self.order, taylor.accum_dtype(f.dtype)) for f in factors]

    def predict(self, name, history, inputs) -> list[Tensor]:
        st = self.modules[name]
        coeffs = self.coefficients(name, history, inputs)
        return [
            taylor.combine(f, c).reshape(f.shape[0], *shape).to(dt)  # (B, ...)
            for f, c, dt, shape in zip(st.factors, coeffs, st.dtypes, st.shapes, strict=True)
        ]

    def tensors(self) -> list[Tensor]:
        return [f for st in self.modules.values() for f in st.factors] + self.scratch.tensors()

    def anchor(self, name: str) -> list[Tensor] | None:
        st = self.modules.get(name)
        if st is None:
            return None
        return [
            f[:, 0].reshape(f.shape[0], *shape).to(dt, copy=True)  # (B, ...) f0 = O(i)
            for f, shape, dt in zip(st.factors, st.shapes, st.dtypes, strict=True)
        ]


@dataclass
class RelationalState:
    """What RFE adds per module: the last full input and the slots of its outputs (§3)."""

    last_input: list[Tensor] = field(default_factory=list)  # I(i) per input tensor, fp32+
    slots: list[int] = field(default_factory=list)  # per output: its index in the stacks


@dataclass
class StepPlan:
    """RFE coefficients of one step for every (module, output) slot: c = base + ||dI|| * gain."""

    step: int
    base: Tensor  # (S, B, m+1): [c_0, 0 ...] where RFE applies, the Taylor c elsewhere
    gain: Tensor  # (S, B, m+1): [0, s c_1 / ||D||, ...] where RFE applies, 0 elsewhere
    unit: Tensor  # (S, B): s / ||D|| (0 where RFE does not apply)
    inc: Tensor  # (S, B, m+1): [0, c_1, ...] where RFE applies, 0 elsewhere


class RelationalPredictor(TaylorPredictor):
    """RFE (§3): Taylor direction, magnitude s * ||I - I(i)|| with s = ||dO|| / ||dI||.

    Everything but ||I - I(i)|| is known before the module runs: once per step, for all modules
    at once, the plan folds s / ||D(k)|| into the coefficients, so a cached module costs one
    subtraction and one norm of its input change, one ``addcmul`` and one ``bmm``.
    """

    def __init__(
        self,
        order: int,
        clamp: float | None = None,
        warmup: int | None = None,
        factors_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(order, warmup, factors_dtype)
        self.clamp = clamp  # bound the magnitude to [1/c, c] x the Taylor increment's length
        self.relational: dict[str, RelationalState] = {}
        self.ratios: list[Tensor] = []  # per slot: s, (B,), NaN where unusable
        self.grams: list[Tensor] = []  # per slot: <f_r, f_q> of r, q >= 1, (B, m, m)
        self._stacks: tuple[Tensor, Tensor] | None = None  # (S, B), (S, B, m, m)
        self._plan: StepPlan | None = None

    def record(self, name, history, rows, outputs, inputs) -> None:
        news = self._record_factors(name, history, rows, outputs)  # per output (b, m+1, N)
        st = self.relational.setdefault(name, RelationalState())
        gap, n_full = history.gaps(rows)  # (b,)
        in_delta = self._record_input(st, inputs, rows)  # (b,) ||I(i) - I(j)|| (local tokens)
        in_delta, grams = rel.full_step_terms(in_delta, news)  # (b,), (b, m, m) fp64 each
        if not st.slots:
            st.slots = list(range(len(self.ratios), len(self.ratios) + len(outputs)))
            self.ratios += [None] * len(outputs)
            self.grams += [None] * len(outputs)
        for gram, slot in zip(grams, st.slots, strict=True):
            # f1 = (O(i) - O(j)) / d, so ||O(i) - O(j)|| = d ||f1|| (no pass over the outputs)
            out_delta = gram[:, 0, 0].sqrt().to(in_delta.dtype) * gap  # (b,)
            ratio = rel.relational_ratio(out_delta, in_delta)  # (b,)
            ratio = torch.where(n_full == 0, float("nan"), ratio)  # no earlier full step: none
            self.ratios[slot] = taylor.put_rows(self.ratios[slot], ratio, rows)
            self.grams[slot] = taylor.put_rows(self.grams[slot], gram, rows)
        self._stacks = None  # this step's plan stays: it serves only slots not yet recorded

    def _record_input(
        self, st: RelationalState, inputs: list[Tensor], rows: Tensor | None
    ) -> Tensor:
        """Store I(i) for ``rows`` (in owned buffers, in place once they exist) and return
        ||I(i) - I(j)|| of those rows (zeros at the first full step). (b,)"""
        if not st.last_input or (rows is None and torch.is_grad_enabled()):
            in_delta = input_change(inputs, st.last_input)
            st.last_input = [taylor.accum(x).clone() for x in inputs]
            return in_delta
        if rows is None:
            in_delta = input_change(inputs, st.last_input, self.scratch)
            for last, x in zip(st.last_input, inputs, strict=False):
                last.copy_(x)
            return in_delta
        lasts = [last.index_select(0, rows) for last in st.last_input]
        in_delta = input_change(inputs, lasts)
        pairs = zip(st.last_input, inputs, strict=False)
        st.last_input = [taylor.put_rows_(last, x.to(last.dtype), rows) for last, x in pairs]
        return in_delta

    def prepare(self, history: History) -> None:
        """This step's plan for every slot (:meth:`plan`)."""
        some = next(iter(self.modules.values()), None)
        if some is not None:
            self.plan(history, taylor.accum_dtype(some.factors[0].dtype))

    def plan(self, history: History, dtype: torch.dtype) -> StepPlan:
        """This step's coefficients for every slot, in the factors' dtype (computed once per
        step, by :meth:`prepare`)."""
        if self._plan is None or self._plan.step != history.step:
            if self._stacks is None:
                self._stacks = torch.stack(self.ratios).double(), torch.stack(self.grams)
            ratio, gram = self._stacks
            coeff = history.coefficients(self.order)  # (B, m+1) fp64
            base, unit, inc = rel.rfe_plan(coeff, gram, ratio)  # (S, B, m+1), (S, B), (S, B, m+1)
            gain = unit[..., None] * inc  # (S, B, m+1)
            self._plan = StepPlan(
                history.step, base.to(dtype), gain.to(dtype), unit.to(dtype), inc.to(dtype)
            )
        return self._plan

    def coefficients(self, name, history, inputs) -> list[Tensor]:
        st, plan = self.relational[name], self._plan  # prepared: no step is read here
        local = input_change(inputs, st.last_input, self.scratch)  # (B,) this rank's tokens
        change = rel.global_norm(local)[:, None]  # (B, 1) every rank's tokens
        if self.clamp is None:
            return [torch.addcmul(plan.base[j], change, plan.gain[j]) for j in st.slots]
        alphas = [
            (change * plan.unit[j][:, None]).clamp(1 / self.clamp, self.clamp) for j in st.slots
        ]
        pairs = zip(st.slots, alphas, strict=True)
        return [torch.addcmul(plan.base[j], a, plan.inc[j]) for j, a in pairs]

    def tensors(self) -> list[Tensor]:
        held = [t for st in self.relational.values() for t in st.last_input]
        return super().tensors() + held + [t for t in (*self.ratios, *self.grams) if t is not None]


def input_change(
    inputs: list[Tensor], last: list[Tensor] | None, scratch: taylor.Scratch | None = None
) -> Tensor:
    """||I - I(i)||_2 per row over all input tensors together (§3 RFE). (B,)

    Eagerly the difference goes to a reused ``scratch`` buffer (no fresh allocation); under
    torch.compile it stays functional (inductor fuses it into the norm).
    """
    if not last:
        return torch.zeros(inputs[0].shape[0], device=inputs[0].device)
    norms = [_row_distance(x, y, scratch) for x, y in zip(inputs, last, strict=False)]  # (B,)
    if len(norms) == 1:
        return norms[0]
    return torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)  # (B,)


def _row_distance(x: Tensor, y: Tensor, scratch: taylor.Scratch | None) -> Tensor:
    """||x - y||_2 per row, in y's precision (fp32+). (B, ...) -> (B,)"""
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)  # (B, N)
    if scratch is None or torch.compiler.is_compiling() or x.requires_grad:
        diff = x - y  # promotes to y's fp32+
    else:
        diff = torch.sub(x, y, out=scratch.get(y))
    return torch.linalg.vector_norm(diff, dim=1)


class WeightedPredictor(TaylorPredictor):
    """A fixed magnitude weight w on Taylor's increment, the paper's ablation of RFE (§3-§4):
    O_hat = f0 + w sum_{r>=1} f_r k^r / r!; w = 1 is TaylorSeer exactly.

    The weight is folded into the step's coefficients once per step (:meth:`prepare`, one
    multiply of the (B, m+1) row per factor dtype), so :meth:`predict` reads no step."""

    def __init__(
        self,
        order: int,
        weight: float,
        warmup: int | None = None,
        factors_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(order, warmup, factors_dtype)
        self.weight = weight
        self.scales: dict[tuple, Tensor] = {}  # per (dtype, device): [1, w, ..., w] (m+1,)
        self.weighted: dict[torch.dtype, Tensor] = {}  # this step's coefficients per dtype

    def prepare(self, history: History) -> None:
        """This step's coefficients with the orders >= 1 scaled by w, once per dtype."""
        coeffs = {dt: history.coefficients(self.order, dt) for dt in self.dtypes}  # (B, m+1)
        self.weighted = {dt: self._weigh(c) for dt, c in coeffs.items()}

    def _weigh(self, coeff: Tensor) -> Tensor:
        """[c_0, w c_1, ..., w c_m] per row. (B, m+1) -> (B, m+1)"""
        key = coeff.dtype, coeff.device
        if key not in self.scales:
            scale = torch.full((self.order + 1,), self.weight, dtype=coeff.dtype)
            self.scales[key] = scale.index_fill(0, torch.tensor([0]), 1.0).to(coeff.device)
        return coeff * self.scales[key]  # (B, m+1)

    def coefficients(self, name, history, inputs) -> list[Tensor]:
        factors = self.modules[name].factors  # prepared: no step is read here
        return [self.weighted[taylor.accum_dtype(f.dtype)] for f in factors]
