"""What a branch has done so far: its step and each row's full steps (read by schedulers and
predictors, advanced only by the engine)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from relcache.caching import taylor


@dataclass
class History:
    """One branch's trajectory so far; ``n_full`` / ``last_full`` are per batch row."""

    step: int = 0
    n_full: Tensor | None = None  # (B,) full steps seen per row
    last_full: Tensor | None = None  # (B,) step index of each row's last full step
    full_steps: list[int] = field(default_factory=list)  # steps where any row ran fully
    _coeff: dict[int, Tensor] = field(default_factory=dict)  # this step's k^r / r!, per order

    def start_rows(self, batch: int, device: torch.device) -> None:
        """First call of the trajectory: no row has a full step yet."""
        self.n_full = torch.zeros(batch, dtype=torch.long, device=device)
        self.last_full = torch.zeros(batch, dtype=torch.long, device=device)

    @property
    def started(self) -> bool:
        """Whether the rows' counters exist (a cached module ran in this trajectory)."""
        return self.n_full is not None

    def gaps(self, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        """(d, n_full) of the given rows at a full step: d = i - j, the gap to the last (§2)."""
        gap = (self.step - self.last_full).clamp_min(1)  # (B,)
        if rows is None:
            return gap, self.n_full
        return gap.index_select(0, rows), self.n_full.index_select(0, rows)

    def coefficients(self, order: int) -> Tensor:
        """Taylor coefficients k^r / r! of this step for orders 0..m, per row (§2). (B, m+1)"""
        if order not in self._coeff:
            k = self.step - self.last_full  # (B,)
            self._coeff[order] = taylor.taylor_coefficients(k, self.n_full, order)
        return self._coeff[order]

    def advance(self, rows: Tensor | None, any_full: bool) -> None:
        """End of a step: count the full rows (all when ``rows`` is None) and move on."""
        if any_full and self.started:
            if rows is None:
                self.n_full = self.n_full + 1
                self.last_full = torch.full_like(self.last_full, self.step)
            else:
                self.n_full = self.n_full.index_add(0, rows, torch.ones_like(rows))
                self.last_full = self.last_full.index_fill(0, rows, self.step)
            self.full_steps.append(self.step)
        self.step += 1
        self._coeff.clear()
