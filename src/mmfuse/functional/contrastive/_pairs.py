"""Which (query, key) pairs are positive in a contrastive loss (private)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["_Pairs"]


class _Pairs:
    """Which (query i, key j) pairs are positive: a shifted diagonal (``j = i + offset``),
    equal group ids, or an explicit bool matrix. ``tile`` returns None for a block without any."""

    def __init__(
        self,
        kind: str,
        n_q: int,
        n_k: int,
        *,
        offset: int = 0,
        gq: Tensor | None = None,
        gk: Tensor | None = None,
        matrix: Tensor | None = None,
    ) -> None:
        self.kind, self.n_q, self.n_k, self.offset = kind, n_q, n_k, offset
        self.gq, self.gk, self.matrix = gq, gk, matrix

    def diag_offset(self, i0: int, i1: int, j0: int, j1: int) -> int | None:
        """For the diagonal kind: the local diagonal offset of block (i0:i1, j0:j1), or None."""
        lo, hi = i0 + self.offset, i1 + self.offset
        if hi <= j0 or lo >= j1:
            return None
        return lo - j0

    def tile(self, i0: int, i1: int, j0: int, j1: int, device: torch.device) -> Tensor | None:
        if self.kind == "diag":
            if self.diag_offset(i0, i1, j0, j1) is None:
                return None
            rows = torch.arange(i0, i1, device=device) + self.offset
            cols = torch.arange(j0, j1, device=device)
            return rows[:, None] == cols[None, :]
        if self.kind == "group":
            assert self.gq is not None and self.gk is not None
            return self.gq[i0:i1, None] == self.gk[None, j0:j1]
        assert self.matrix is not None
        return self.matrix[i0:i1, j0:j1]

    def dense(self, device: torch.device) -> Tensor:
        out = self.tile(0, self.n_q, 0, self.n_k, device)
        if out is None:
            return torch.zeros(self.n_q, self.n_k, dtype=torch.bool, device=device)
        return out

    def diag_index(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """For the diagonal kind: (query rows, key columns) of the in-range pairs."""
        sq, _ = self.diag_slices()
        rows = torch.arange(sq.start, sq.stop, device=device)
        return rows, rows + self.offset

    def diag_slices(self) -> tuple[slice, slice]:
        """For the diagonal kind: the query rows and key rows of the in-range pairs."""
        lo = max(0, -self.offset)
        hi = max(lo, min(self.n_q, self.n_k - self.offset))
        return slice(lo, hi), slice(lo + self.offset, hi + self.offset)
