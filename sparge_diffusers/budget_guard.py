"""`BudgetGuard`: the error budget's per-layer state across the calls of a denoising loop.

Measuring the drop masses that meet ε (`kernels.budget.budget_drop_mass`) costs about 1% of a call's attention
work. Attention changes slowly from one denoising step to the next, so a layer that keeps a guard measures them
on its first call, reuses them for the next calls, and measures again when they are due: the interval doubles (up
to `MAX_INTERVAL` calls) while successive measurements agree, and falls back to every call when they drift (a head's
drop mass moves by more than 2× either way, or a head switches between sparse and keep-all). The integration keeps
one guard per attention layer, with a separate state per call shape (batch, heads, query and key length): the
text-padding groups of a masked batch are separate calls of one layer and never share drop masses. `sparge_attn`
without a guard measures in every call.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Dict, Optional, Tuple

import torch

MAX_INTERVAL = 8
# call shapes (batch, heads, query length, key length) one guard keeps apart
MAX_SLOTS = 8
# Successive measurements agree when at least this share of heads keeps its drop mass within a factor of 2.
AGREEMENT = 0.9


class _Slot:
    """The guard's state for one call shape."""

    __slots__ = ("drop", "interval", "since")

    def __init__(self) -> None:
        self.drop: Optional[torch.Tensor] = None
        self.interval = 1
        self.since = 0


class BudgetGuard:
    """Drop masses of one attention layer, reused across calls and re-measured when due.

    A layer can see calls of more than one shape in one forward: a batch whose samples have different text padding
    is attended group by group (`backend`), e.g. the two halves of a CFG batch with prompts of different lengths.
    Each call shape ``key`` (batch, heads, query length, key length) keeps its own drop masses and interval, so one
    group's budget is never reused for another's; at most `MAX_SLOTS` shapes are kept (the oldest is dropped).

    Attributes:
        measured, reused: calls that measured / reused drop masses (for statistics).
        interval: calls between measurements now (1 = every call), of the shape seen last.
    """

    def __init__(self, max_interval: int = MAX_INTERVAL) -> None:
        if not isinstance(max_interval, int) or max_interval < 1:
            raise ValueError(f"max_interval must be an integer >= 1, got {max_interval!r}")
        self.max_interval = max_interval
        # a name for the compiled path's opaque op, which finds the guard by it (`guard_by_key`)
        self.key = f"guard{next(_KEYS)}"
        _GUARDS[self.key] = self
        self.reset()

    @property
    def interval(self) -> int:
        slot = self._slots.get(self._last) if self._last is not None else None
        return 1 if slot is None else slot.interval

    def reuse(self, key) -> Optional[torch.Tensor]:
        """The stored drop masses ``[B, H]`` of this call shape when they are fresh; None means measure them in this
        call (then pass the result to `update` with the same key)."""
        key = tuple(int(x) for x in key)
        self._last = key
        slot = self._slots.get(key)
        if slot is None or slot.drop is None or slot.since + 1 >= slot.interval:
            return None
        slot.since += 1
        self.reused += 1
        return slot.drop

    def update(self, key, drop: torch.Tensor) -> None:
        """Store newly measured drop masses of this call shape and adapt its interval to how much they moved."""
        key = tuple(int(x) for x in key)
        drop = drop.detach().float()
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= MAX_SLOTS:
                self._slots.pop(next(iter(self._slots)))
            slot = self._slots[key] = _Slot()
        elif slot.drop is not None:
            slot.interval = min(self.max_interval, slot.interval * 2) if _agree(slot.drop, drop) else 1
        slot.drop, slot.since = drop, 0
        self._last = key
        self.measured += 1

    def reset(self) -> None:
        """Forget every call shape's drop masses and the statistics (the key stays)."""
        self.measured = 0
        self.reused = 0
        self._slots: Dict[Tuple[int, ...], _Slot] = {}
        self._last: Optional[Tuple[int, ...]] = None

    def __repr__(self) -> str:
        return (f"BudgetGuard(interval={self.interval}, measured={self.measured}, reused={self.reused}, "
                f"shapes={len(self._slots)})")


def call_key(q: torch.Tensor, k: torch.Tensor) -> Tuple[int, int, int, int]:
    """The call shape a guard keeps drop masses for: ``(B, H, Sq, Sk)`` of BHSD ``q`` / ``k``."""
    return (q.shape[0], q.shape[1], q.shape[-2], k.shape[-2])


_KEYS = itertools.count()
_GUARDS: "weakref.WeakValueDictionary[str, BudgetGuard]" = weakref.WeakValueDictionary()


def guard_by_key(key: str) -> BudgetGuard:
    """The live `BudgetGuard` named ``key`` (its ``key`` attribute)."""
    return _GUARDS[key]


def _agree(old: torch.Tensor, new: torch.Tensor) -> bool:
    sparse_old, sparse_new = old > 0, new > 0
    same_kind = sparse_old == sparse_new
    ratio = torch.log2(new.clamp_min(1e-12) / old.clamp_min(1e-12)).abs()
    close = same_kind & (~sparse_new | (ratio <= 1.0))
    return float(close.float().mean()) >= AGREEMENT


__all__ = ["BudgetGuard", "MAX_INTERVAL", "call_key", "guard_by_key"]
