"""`BudgetGuard`: the error budget's per-layer state across the calls of a denoising loop.

Measuring the drop masses that meet ε (`kernels.budget.budget_drop_mass`) costs about 1% of a call's attention
work. Attention changes slowly from one denoising step to the next, so a layer that keeps a guard measures them
on its first call, reuses them for the next calls, and measures again when they are due: the interval doubles (up
to `MAX_INTERVAL` calls) while successive measurements agree, and falls back to every call when they drift (a head's
drop mass moves by more than 2× either way, or a head switches between sparse and keep-all). The integration keeps
one guard per attention layer, with a separate state per call shape (batch, heads, query and key length): the
text-padding groups of a masked batch are separate calls of one layer and never share drop masses. `sparge_attn`
without a guard measures in every call.

The guard also keeps the block map of its last prediction per call shape, packed to bits (``SpargeConfig.map_reuse``):
while the drop masses are reused, a map may serve up to ``map_reuse`` calls before it is predicted again, so those
calls skip the prediction (its block statistics, the lse pass, the sampled rows and the selection) and only quantize
and attend. A re-measurement that finds drift resets the interval to every call, and then every call predicts again.
Top-k and τ calls, which have no drop masses, reuse a map for a fixed number of calls.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Dict, Optional, Tuple

import torch

from .kernels.lut import lut_from_bits, lut_from_mask, mask_from_bits, pack_lut

MAX_INTERVAL = 8
# call shapes (batch, heads, query length, key length) one guard keeps apart
MAX_SLOTS = 8
# Successive measurements agree when at least this share of heads keeps its drop mass within a factor of 2.
AGREEMENT = 0.9


class _Slot:
    """The guard's state for one call shape."""

    __slots__ = ("drop", "interval", "since", "block_map", "map_calls")

    def __init__(self) -> None:
        self.drop: Optional[torch.Tensor] = None
        self.interval = 1
        self.since = 0
        self.block_map: Optional[Tuple] = None  # the last predicted map: (backend, bits, NK), or None
        self.map_calls = 0  # calls the stored map has served


class BudgetGuard:
    """Drop masses of one attention layer, reused across calls and re-measured when due.

    A layer can see calls of more than one shape in one forward: a batch whose samples have different text padding
    is attended group by group (`backend`), e.g. the two halves of a CFG batch with prompts of different lengths.
    Each call shape ``key`` (batch, heads, query length, key length) keeps its own drop masses and interval, so one
    group's budget is never reused for another's; at most `MAX_SLOTS` shapes are kept (the oldest is dropped).

    Attributes:
        measured, reused: calls that measured / reused drop masses (for statistics).
        maps_reused: calls that reused a stored block map instead of predicting one.
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

    def reuse_map(self, key, limit: int, backend: str):
        """The block map stored for this call shape when it has served fewer than ``limit`` calls and was made by
        ``backend``, else None (then predict, and pass the new map to `store_map`): ``(lut, counts)`` for
        ``"triton"``, a bool ``[B, H, NQ, NK]`` mask otherwise. Ask only in a call whose drop masses are reused or
        given: a call that measures them predicts its own map."""
        slot = self._slots.get(tuple(int(x) for x in key))
        if limit <= 1 or slot is None or slot.block_map is None or slot.map_calls >= limit:
            return None
        made_by, bits, num_k = slot.block_map
        if made_by != backend:
            return None
        slot.map_calls += 1
        self.maps_reused += 1
        return lut_from_bits(bits, num_k) if backend == "triton" else mask_from_bits(bits, num_k)

    def store_map(self, key, backend: str, block_map) -> None:
        """Keep a newly predicted block map of this call shape (``(lut, counts)`` from ``"triton"``, a bool mask
        from other backends) as a bit mask (`kernels.lut.pack_lut`: 1/32 of the kernels' list, e.g. 1.7 MB for a
        Wan 2.1 14B 720p layer); it has served one call (the one that predicted it)."""
        key = tuple(int(x) for x in key)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._new_slot(key)
        lut, counts = block_map if backend == "triton" else lut_from_mask(block_map)
        slot.block_map, slot.map_calls = (backend, pack_lut(lut, counts), lut.shape[-1]), 1

    def update(self, key, drop: torch.Tensor) -> None:
        """Store newly measured drop masses of this call shape and adapt its interval to how much they moved."""
        key = tuple(int(x) for x in key)
        drop = drop.detach().float()
        slot = self._slots.get(key)
        if slot is None:
            slot = self._new_slot(key)
        elif slot.drop is not None:
            slot.interval = min(self.max_interval, slot.interval * 2) if _agree(slot.drop, drop) else 1
        slot.drop, slot.since = drop, 0
        self._last = key
        self.measured += 1

    def forget(self) -> None:
        """Drop every call shape's drop masses, interval and block map, keeping the statistics: a new generation
        starts from noise, and the last step's attention says little about its first steps."""
        self._slots: Dict[Tuple[int, ...], _Slot] = {}
        self._last: Optional[Tuple[int, ...]] = None

    def _new_slot(self, key) -> _Slot:
        if len(self._slots) >= MAX_SLOTS:
            self._slots.pop(next(iter(self._slots)))
        slot = self._slots[key] = _Slot()
        return slot

    def reset(self) -> None:
        """Forget every call shape's state (`forget`) and the statistics; the key stays."""
        self.measured = 0
        self.reused = 0
        self.maps_reused = 0
        self.forget()

    def __repr__(self) -> str:
        return (f"BudgetGuard(interval={self.interval}, measured={self.measured}, reused={self.reused}, "
                f"maps_reused={self.maps_reused}, shapes={len(self._slots)})")


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
