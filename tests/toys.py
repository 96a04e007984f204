"""Toy models whose cached modules' outputs can be computed by hand."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Chain(nn.Module):
    """root(x, t, y) -> mods[-1](...mods[0](x + y)); every child is a cacheable module."""

    def __init__(self, *mods: nn.Module) -> None:
        super().__init__()
        self.mods = nn.ModuleList(mods)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if y is not None:  # a conditioning that tells CFG's branches apart
            x = x + y
        for m in self.mods:
            x = m(x)
        return x


class Scale(nn.Module):
    """Output exactly ``factor`` times the input."""

    def __init__(self, factor: float = 2.0) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return self.factor * x


def run_trajectory(model: nn.Module, inputs: list[Tensor]) -> list[Tensor]:
    """Call the model once per step with a decreasing timestep, like a sampler."""
    n = len(inputs)
    return [model(x, torch.full((x.shape[0],), float(n - i))) for i, x in enumerate(inputs)]


def linear_module(dim: int = 6, seed: int = 0) -> nn.Linear:
    """A random affine map O = A I + b."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(dim, dim)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(dim, dim, generator=g))
        lin.bias.copy_(torch.randn(dim, generator=g))
    return lin.double()
