"""Granularity: what one cached unit is (docs/granularity.md).

``module`` (the paper, RFC_SPEC §1): each cached module's output is predicted. ``block``: each
transformer block's residual contribution, its output minus its input, is predicted, so a cached
block is one expression and its glue (norms, modulation, gates) never runs. ``stack``: the whole
block stack's residual, one prediction per stream, is added to the first block's input; the other
blocks pass their input through, so a cached step runs only the embedders and the final layer.

A unit's input is the block's carried streams (the hidden states, and the text stream of joint
blocks), read by the adapter's block input function in the block's output order; RFE's ratio s
(§3) is measured on that input and the residual. The wrappers below turn any predictor of module
outputs into a predictor of residuals; the engine only routes calls, as for modules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from relcache.caching.history import History
from relcache.caching.predictors import Predictor

GRANULARITIES = ("module", "block", "stack")
STACK = "stack"  # the inner predictor's name for the whole stack's residual
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_granularity(granularity: object, factors_dtype: object) -> None:
    """A known granularity and factor dtype (the fix in the message)."""
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}: "
            "'module' predicts each attention / MLP output (the paper), 'block' each "
            "transformer block's residual, 'stack' the whole block stack's residual"
        )
    if factors_dtype is not None and factors_dtype not in DTYPES:
        raise ValueError(
            f"factors_dtype must be one of {', '.join(DTYPES)} or None (the model's dtype "
            f"for bfloat16 / float16 models, float32 otherwise), got {factors_dtype!r}"
        )


def unit_label(granularity: str, factors_dtype: str | None) -> str:
    """A non-default granularity or factor dtype in a method's label."""
    label = "" if granularity == "module" else f" {granularity}"
    return label + ("" if factors_dtype is None else f" {factors_dtype} factors")


def pairing(outputs: list[Tensor], carried: list[Tensor], name: str) -> list[int]:
    """For each output tensor, the index of the carried input it adds to: by position when
    the counts agree, else the one input of the same shape (SD3's last block drops its text
    stream)."""
    if len(outputs) == len(carried):
        return list(range(len(outputs)))
    picks = []
    for o in outputs:
        same = [j for j, x in enumerate(carried) if x.shape == o.shape]
        if len(same) != 1:
            raise ValueError(
                f"block {name!r} returns {len(outputs)} tensors for {len(carried)} carried "
                "inputs and their shapes do not tell which output belongs to which input; "
                "use granularity='module' for this model"
            )
        picks.append(same[0])
    return picks


class BlockUnits(Predictor):
    """``granularity="block"``: ``inner`` predicts each block's residual O - I (per stream)."""

    def __init__(self, inner: Predictor, factors_dtype: torch.dtype | None) -> None:
        self.inner = inner
        self.wide = factors_dtype  # residuals are formed in promote(output, this) precision
        self.pairs: dict[str, list[int]] = {}  # per block: output k adds to carried input j
        self.dtypes: dict[str, list[torch.dtype]] = {}  # per block: the outputs' dtypes

    def _residuals(self, name: str, outputs: list[Tensor], carried: list[Tensor]) -> list[Tensor]:
        """O - I per output, in the residual's precision. (B, ...) each"""
        if name not in self.pairs:
            self.pairs[name] = pairing(outputs, carried, name)
            self.dtypes[name] = [o.dtype for o in outputs]
        pairs = zip(outputs, self.pairs[name], strict=True)
        return [torch.sub(self._wide(o), carried[j]) for o, j in pairs]

    def _wide(self, o: Tensor) -> Tensor:
        return o if self.wide is None else o.to(torch.promote_types(o.dtype, self.wide))

    def _outputs(self, name: str, residuals: list[Tensor], carried: list[Tensor]) -> list[Tensor]:
        """I + predicted residual per output, in the output's dtype. (B, ...) each"""
        pairs = zip(residuals, self.pairs[name], self.dtypes[name], strict=True)
        return [torch.add(carried[j], r).to(dt) for r, j, dt in pairs]

    def record(self, name, history, rows, outputs, inputs) -> None:
        self.inner.record(name, history, rows, self._residuals(name, outputs, inputs), inputs)

    def predict(self, name: str, history: History, inputs: list[Tensor]) -> list[Tensor]:
        return self._outputs(name, self.inner.predict(name, history, inputs), inputs)

    def ready(self, name: str) -> bool:
        return self.inner.ready(name)

    def prepare(self, history: History) -> None:
        self.inner.prepare(history)

    def tensors(self) -> list[Tensor]:
        return self.inner.tensors()


class StackUnit(BlockUnits):
    """``granularity="stack"``: ``inner`` predicts the chain's residual, last block's output
    minus first block's input; at a cached step the first block returns the prediction and the
    others pass their input through (they run at full steps only)."""

    def __init__(self, inner: Predictor, chain: list[str], factors_dtype) -> None:
        super().__init__(inner, factors_dtype)
        self.first, self.last = chain[0], chain[-1]
        self.entry: list[Tensor] = []  # this full step's stack input (the first block's)
        self.versions: list[int] = []  # their version counters: an in-place change is an error
        self.stream: list[int] = []  # stack output k adds to the stack input's stream j

    def record(self, name, history, rows, outputs, inputs) -> None:
        if name not in self.pairs:
            self.pairs[name] = pairing(outputs, inputs, name)
            self.dtypes[name] = [o.dtype for o in outputs]
        if name == self.first:
            self.entry, self.versions = inputs, [x._version for x in inputs]
        elif not self.entry:
            raise RuntimeError(
                f"block {name!r} ran before {self.first!r}, the stack's first block: the "
                "model does not call its blocks in the order of its modules; use "
                "granularity='block'"
            )
        if name != self.last:
            return
        if [x._version for x in self.entry] != self.versions:
            raise RuntimeError(
                f"the stack's input was modified in place before {self.last!r} ran; use "
                "granularity='block' for this model"
            )
        pairs = zip(outputs, pairing(outputs, self.entry, name), strict=True)
        residuals = [torch.sub(self._wide(o), self.entry[j]) for o, j in pairs]
        self.inner.record(STACK, history, rows, residuals, self.entry)
        self.stream = pairing(outputs, self.entry, name)  # stack output k <- entry stream j
        self.entry = []

    def predict(self, name: str, history: History, inputs: list[Tensor]) -> list[Tensor]:
        if name != self.first:
            return [inputs[j] for j in self.pairs[name]]  # pass the predicted stream through
        predicted = dict(zip(self.stream, self.inner.predict(STACK, history, inputs), strict=True))
        return [
            (torch.add(inputs[j], predicted[j]).to(dt) if j in predicted else inputs[j])
            for j, dt in zip(self.pairs[name], self.dtypes[name], strict=True)
        ]  # per first-block output: its stream plus the stack's residual (B, ...)

    def ready(self, name: str) -> bool:
        return name in self.pairs and self.inner.ready(STACK)

    def tensors(self) -> list[Tensor]:
        return self.inner.tensors() + self.entry


def unit_predictor(config: Any, names: list[str]) -> Predictor:
    """A method's predictor of module outputs at its granularity over the cached ``names``."""
    inner, granularity = config.predictor(), config.granularity
    dtype = None if config.factors_dtype is None else DTYPES[config.factors_dtype]
    if hasattr(inner, "factors_dtype"):
        inner.factors_dtype = dtype
    if granularity == "module":
        return inner
    if granularity == "block":
        return BlockUnits(inner, dtype)
    return StackUnit(inner, names, dtype)
