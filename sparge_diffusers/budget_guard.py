"""`BudgetGuard`: the error budget's per-layer state across the calls of a denoising loop.

Measuring the drop masses that meet ε (`kernels.budget.budget_drop_mass`) costs about 1% of a call's attention
work. Attention changes slowly from one denoising step to the next, so a layer that keeps a guard measures them
on its first call, reuses them for the next calls, and measures again when they are due: the interval doubles (up
to `MAX_INTERVAL` calls) while successive measurements agree, and falls back to every call when they drift (a head's
drop mass moves by more than 2× either way, or a head switches between sparse and keep-all). The integration keeps
one guard per attention layer; `sparge_attn` without one measures in every call.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

MAX_INTERVAL = 8
# Successive measurements agree when at least this share of heads keeps its drop mass within a factor of 2.
AGREEMENT = 0.9


class BudgetGuard:
    """Drop masses of one attention layer, reused across calls and re-measured when due.

    Attributes:
        measured, reused: calls that measured / reused drop masses (for statistics).
        interval: calls between measurements now (1 = every call).
    """

    def __init__(self, max_interval: int = MAX_INTERVAL) -> None:
        if not isinstance(max_interval, int) or max_interval < 1:
            raise ValueError(f"max_interval must be an integer >= 1, got {max_interval!r}")
        self.max_interval = max_interval
        self.interval = 1
        self.measured = 0
        self.reused = 0
        self._drop: Optional[torch.Tensor] = None
        self._key: Optional[Tuple[int, ...]] = None
        self._since = 0

    def reuse(self, key) -> Optional[torch.Tensor]:
        """The stored drop masses ``[B, H]`` when they are fresh and were measured for the same ``(B, H)``; None
        means measure them in this call (then pass the result to `update`)."""
        key = tuple(int(x) for x in key)
        if self._drop is None or key != self._key or self._since + 1 >= self.interval:
            return None
        self._since += 1
        self.reused += 1
        return self._drop

    def update(self, key, drop: torch.Tensor) -> None:
        """Store newly measured drop masses and adapt the interval to how much they moved."""
        key = tuple(int(x) for x in key)
        drop = drop.detach().float()
        if self._drop is not None and key == self._key:
            self.interval = min(self.max_interval, self.interval * 2) if _agree(self._drop, drop) else 1
        else:
            self.interval = 1
        self._drop, self._key, self._since = drop, key, 0
        self.measured += 1

    def reset(self) -> None:
        self.__init__(self.max_interval)

    def __repr__(self) -> str:
        return f"BudgetGuard(interval={self.interval}, measured={self.measured}, reused={self.reused})"


def _agree(old: torch.Tensor, new: torch.Tensor) -> bool:
    sparse_old, sparse_new = old > 0, new > 0
    same_kind = sparse_old == sparse_new
    ratio = torch.log2(new.clamp_min(1e-12) / old.clamp_min(1e-12)).abs()
    close = same_kind & (~sparse_new | (ratio <= 1.0))
    return float(close.float().mean()) >= AGREEMENT


__all__ = ["BudgetGuard", "MAX_INTERVAL"]
