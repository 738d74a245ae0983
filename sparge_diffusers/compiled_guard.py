"""The error budget's `BudgetGuard` inside a ``torch.compile`` graph.

A guard decides in Python, per call, whether to reuse its drop masses or measure new ones, and adapts its interval
to how much they moved (a read of the device). Traced by dynamo, that state would be frozen into the graph, so a
compiled ``target_error`` call used to measure its drop masses in every call (8% of a dense call at CogVideoX-2b
length on an H200). Here the whole guarded call is one opaque custom op, ``sparge_diffusers::guarded_sparge_attention``:
its eager body asks the guard (found by its ``key``), launches the fused Triton sequence with the reused drop masses
or measures them, and updates the guard, exactly as an eager call does; its fake implementation declares the output.
The graph stays whole and the guard keeps working across compiled calls.
"""

from __future__ import annotations

import contextlib
from typing import List, Optional

import torch

from .budget_guard import call_key, guard_by_key
from .kernels.dispatch import output_like, sparge_attention_launch
from .kernels.selection import Selection


@torch.library.custom_op("sparge_diffusers::guarded_sparge_attention", mutates_args=())
def guarded_sparge_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, block_m: int,
                             block_n: int, target_error: float, sim_threshold: Optional[float],
                             pv_threshold: Optional[float], precision: str, keep_ranges: List[int], predictor: str,
                             guard_key: str, map_reuse: int = 1) -> torch.Tensor:
    """`kernels.dispatch.sparge_attention_launch` with the ``"budget"`` rule, drop masses (and, up to ``map_reuse``
    calls, block maps) reused from or stored in the guard ``guard_key``. q: ``[B, H, Sq, D]``; k, v: ``[B, H, Sk, D]``
    (D in 64, 128); ``keep_ranges`` flat."""
    guard = guard_by_key(guard_key)
    key = call_key(q, k)
    drop = guard.reuse(key)
    stored = guard.reuse_map(key, map_reuse, "triton") if drop is not None else None
    device_scope = torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()
    with device_scope:
        out, lut, counts, used = sparge_attention_launch(q, k, v, scale, block_m, block_n,
                                                         Selection("budget", target_error), sim_threshold,
                                                         pv_threshold, precision, keep_ranges, predictor, drop,
                                                         stored)
    if drop is None:
        guard.update(key, used)
    if stored is None and map_reuse > 1:
        guard.store_map(key, "triton", (lut, counts))
    return out


@guarded_sparge_attention.register_fake
def _(q, k, v, scale, block_m, block_n, target_error, sim_threshold, pv_threshold, precision, keep_ranges, predictor,
      guard_key, map_reuse=1):
    return output_like(q)


__all__ = ["guarded_sparge_attention"]
