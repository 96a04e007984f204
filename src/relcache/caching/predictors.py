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

    def tensors(self) -> list[Tensor]:
        """Every tensor held, for memory accounting."""
        return []


@dataclass
class TaylorState:
    """One module's Taylor factors per output tensor, and the outputs' shapes and dtypes."""

    factors: list[Tensor]  # per output: (B, N, m+1) fp32
    shapes: list[tuple[int, ...]]  # per output, without batch
    dtypes: list[torch.dtype]


class TaylorPredictor(Predictor):
    """TaylorSeer (§2): O_hat = sum_r f_r k^r / r!; order 0 reuses the last output (FORA)."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.modules: dict[str, TaylorState] = {}

    def ready(self, name: str) -> bool:
        return name in self.modules

    def record(self, name, history, rows, outputs, inputs) -> None:
        self._record_factors(name, history, rows, outputs)

    def _record_factors(self, name, history, rows, outputs) -> list[Tensor | None]:
        """Official factor update (§2) for ``rows``; returns the old factors of those rows."""
        gap, nf = history.gaps(rows)
        st = self.modules.get(name)
        if st is None:
            shapes = [tuple(o.shape[1:]) for o in outputs]
            dtypes = [o.dtype for o in outputs]
            st = self.modules[name] = TaylorState([None] * len(outputs), shapes, dtypes)
        olds = [taylor.select_rows(f, rows) for f in st.factors]
        st.factors = [
            taylor.store_rows(f, taylor.update_factors(old, o, gap, nf), rows, self.order)
            for f, old, o in zip(st.factors, olds, outputs, strict=True)
        ]
        return olds

    def coefficients(self, name: str, history: History, inputs: list[Tensor]) -> list[Tensor]:
        """Per output tensor: the (B, m+1) coefficients of the factors at this step."""
        return [history.coefficients(self.order)] * len(self.modules[name].factors)

    def predict(self, name, history, inputs) -> list[Tensor]:
        st = self.modules[name]
        coeffs = self.coefficients(name, history, inputs)
        return [
            taylor.combine(f, c).reshape(f.shape[0], *shape).to(dt)  # (B, ...)
            for f, c, dt, shape in zip(st.factors, coeffs, st.dtypes, st.shapes, strict=True)
        ]

    def tensors(self) -> list[Tensor]:
        return [f for st in self.modules.values() for f in st.factors]


@dataclass
class RelationalState:
    """What RFE adds per module: the last full input, s and the increments' Gram (§3)."""

    last_input: list[Tensor] = field(default_factory=list)  # I(i) per input tensor
    ratio: list[Tensor] = field(default_factory=list)  # s per output, (B,), NaN where unusable
    gram: list[Tensor] = field(default_factory=list)  # <f_r, f_q> per output, (B, m, m)


class RelationalPredictor(TaylorPredictor):
    """RFE (§3): Taylor direction, magnitude s * ||I - I(i)|| with s = ||dO|| / ||dI||."""

    def __init__(self, order: int) -> None:
        super().__init__(order)
        self.relational: dict[str, RelationalState] = {}

    def record(self, name, history, rows, outputs, inputs) -> None:
        olds = self._record_factors(name, history, rows, outputs)
        st = self.relational.setdefault(name, RelationalState())
        last = [taylor.select_rows(t, rows) for t in st.last_input] if st.last_input else None
        in_delta = input_change(inputs, last)  # (b,)
        fresh = history.gaps(rows)[1] == 0  # (b,) no earlier full step: no ratio yet
        ratios, grams = [], []
        for j, (old, full) in enumerate(zip(olds, self.modules[name].factors, strict=True)):
            new = taylor.select_rows(full, rows)  # (b, N, m+1)
            if old is None:
                out_delta = torch.full_like(in_delta, float("nan"))
            else:
                out_delta = rel.row_norm(new[..., 0] - old[..., 0])  # (b,)
            ratio = torch.where(fresh, float("nan"), rel.relational_ratio(out_delta, in_delta))
            ratios.append(taylor.put_rows(st.ratio[j] if st.ratio else None, ratio, rows))
            grams.append(
                taylor.put_rows(st.gram[j] if st.gram else None, rel.increment_gram(new), rows)
            )
        st.ratio, st.gram = ratios, grams
        olds_in = st.last_input or [None] * len(inputs)
        st.last_input = [taylor.put_rows(o, x, rows) for o, x in zip(olds_in, inputs, strict=False)]

    def coefficients(self, name, history, inputs) -> list[Tensor]:
        st = self.relational[name]
        change = input_change(inputs, st.last_input)  # (B,)
        coeff = history.coefficients(self.order)  # (B, m+1)
        pairs = zip(st.gram, st.ratio, strict=True)
        return [rel.rfe_coefficients(coeff, g, s, change) for g, s in pairs]

    def tensors(self) -> list[Tensor]:
        held = [(*st.last_input, *st.ratio, *st.gram) for st in self.relational.values()]
        return super().tensors() + [t for group in held for t in group]


def input_change(inputs: list[Tensor], last: list[Tensor] | None) -> Tensor:
    """||I - I(i)||_2 per row over all input tensors together (§3 RFE). (B,)"""
    if not last:
        return torch.zeros(inputs[0].shape[0], device=inputs[0].device)
    sq = sum(rel.row_norm(taylor.accum(x) - y) ** 2 for x, y in zip(inputs, last, strict=False))
    return sq.sqrt()
