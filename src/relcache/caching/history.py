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

    step: int = 0  # this step's number (relcache.at_step's, else the count of calls)
    calls: int = 0  # root calls of this trajectory so far
    n_full: Tensor | None = None  # (B,) full steps seen per row
    last_full: Tensor | None = None  # (B,) step index of each row's last full step
    full_steps: list[int] = field(default_factory=list)  # steps where any row ran fully
    branches: int = 1  # branches of the trajectory at this step (2: sequential CFG)
    paired: bool = False  # batched CFG: rows j and j + B/2 are one sample's two branches
    row_steps: list[tuple[int, Tensor | None]] = field(default_factory=list)  # (step, rows)
    _coeff: dict[tuple, Tensor] = field(default_factory=dict)  # this step's k^r / r!
    _scale: dict[tuple, tuple] = field(default_factory=dict)  # r and [r < n_full] / r!
    _gaps: tuple | None = None  # (rows, (d, n_full)) of this step

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
        if self._gaps is not None and self._gaps[0] is rows:  # every module of the step asks
            return self._gaps[1]
        gap, n_full = (self.step - self.last_full).clamp_min(1), self.n_full  # (B,) each
        if rows is not None:
            gap, n_full = gap.index_select(0, rows), n_full.index_select(0, rows)
        self._gaps = rows, (gap, n_full)
        return gap, n_full

    def schedules(self) -> list[list[int]]:
        """Each row's full steps (reads the rows back: for reports, not for the hot path)."""
        if not self.started:
            return []
        out: list[list[int]] = [[] for _ in range(self.n_full.shape[0])]
        for step, rows in self.row_steps:
            for r in range(len(out)) if rows is None else rows.tolist():
                out[r].append(step)
        return out

    def coefficients(self, order: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """Taylor coefficients k^r / r! of this step for orders 0..m, per row (§2). (B, m+1)

        Computed once per step (4 kernels); the factorials and the per-row order masks only
        change at full steps, so they are kept until the next one.
        """
        key = (order, dtype)
        if key not in self._coeff:
            if key not in self._scale:
                self._scale[key] = taylor.coefficient_scale(self.n_full, order, dtype)
            k = self.step - self.last_full  # (B,)
            scale = self._scale[key]
            self._coeff[key] = taylor.taylor_coefficients(k, self.n_full, order, dtype, scale)
        return self._coeff[key]

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
            self.row_steps.append((self.step, rows))
            self._scale.clear()
        self.step += 1
        self.calls += 1
        self._coeff.clear()
        self._gaps = None
