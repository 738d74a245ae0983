"""The selection rule of stage 1, decided in one place.

A `SpargeConfig` names at most one of four rules; the reference, the Triton launcher and the config all ask
`resolve_selection` which one applies and what it means for the selection kernel:

- ``"all"``: every block is kept (``predictor="full"``, ``topk >= 1`` or ``τ >= 1``);
- ``"topk"``: the ``round(topk · NK)`` most probable key blocks per query block (the paper's top-k; forced columns
  count against the budget);
- ``"cdf"``: TopCdf τ (SpargeAttn, arXiv 2502.18137, Sec. 3.2). The pooled ``"sparge"`` predictor keeps the fewest
  blocks whose mass over the non-forced blocks reaches τ; the ``"lse"`` predictor drops the least massive blocks
  while their mass stays ``<= 1 − τ``;
- ``"budget"``: the error budget ε. The least massive blocks are dropped up to a drop mass δ chosen per (batch,
  head) so that the measured error of the selection on sampled exact rows stays within ε (`kernels.budget`).

Precedence when several are given: ``predictor="full"``, then ``target_error``, then ``topk``, then
``cdf_threshold`` (`SpargeConfig` uses ε = 0.05 when none is named).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

RULES = ("all", "topk", "cdf", "budget")

# Selection kernel modes (`predict.select_blocks_fwd`)
MODE_TOPK = 0
MODE_CDF = 1
MODE_DROP_MASS = 2


@dataclass(frozen=True)
class Selection:
    """One resolved selection rule.

    Attributes:
        rule: one of `RULES`.
        value: the rule's parameter: the top-k fraction, τ, or ε (1.0 for ``"all"``).
    """

    rule: str
    value: float = 1.0

    @property
    def keeps_all(self) -> bool:
        return self.rule == "all"

    def kernel_mode(self, predictor: str) -> int:
        """The selection-kernel mode for this rule under ``predictor`` (``"sparge"`` or ``"lse"``)."""
        if self.rule == "topk":
            return MODE_TOPK
        if self.rule == "cdf" and predictor == "sparge":
            return MODE_CDF
        if self.rule in ("cdf", "budget"):
            return MODE_DROP_MASS
        raise ValueError(f"the {self.rule!r} rule has no selection-kernel mode")

    def fixed_drop_mass(self) -> Optional[float]:
        """δ of a fixed drop-mass rule (``"cdf"`` under ``"lse"``): ``1 − τ``; None otherwise."""
        return 1.0 - self.value if self.rule == "cdf" else None


def resolve_selection(*, predictor: str, topk: Optional[float], cdf_threshold: Optional[float],
                      target_error: Optional[float]) -> Selection:
    """The rule a setting selects with (see the module docstring for the precedence)."""
    if predictor == "full":
        return Selection("all")
    if target_error is not None:
        return Selection("budget", float(target_error))
    if topk is not None:
        return Selection("all") if topk >= 1.0 else Selection("topk", float(topk))
    if cdf_threshold is not None:
        return Selection("all") if cdf_threshold >= 1.0 else Selection("cdf", float(cdf_threshold))
    raise ValueError("a selection needs target_error, topk or cdf_threshold (or predictor='full')")


def topk_block_count(topk: float, num_key_blocks: int) -> int:
    """Key blocks kept per query block for a top-k fraction: ``round(topk · NK)`` clipped to ``[1, NK]``."""
    return min(num_key_blocks, max(1, int(topk * num_key_blocks + 0.5)))


# Naive selectors (ground truth of the selection kernel, `predict.select_blocks_fwd`)


def naive_select_topk(probs: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Keep the ``budget`` most probable blocks of each row.

    Args:
        probs: ``[..., NK]`` block probabilities; entries < 0 are never chosen.
        budget: integer tensor broadcastable to ``probs.shape[:-1]``.
    Returns:
        bool ``[..., NK]``.
    """
    order = torch.argsort(probs, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(probs.shape[-1], device=probs.device).expand_as(order))
    return (rank < budget.unsqueeze(-1)) & (probs >= 0)


def naive_select_cdf(probs: torch.Tensor, cdf_threshold: float) -> torch.Tensor:
    """TopCdf (τ): per row, the fewest most probable blocks whose mass reaches τ; at least one block.

    Args:
        probs: ``[..., NK]`` non-negative, rows summing to at most 1.
    Returns:
        bool ``[..., NK]``.
    """
    if cdf_threshold >= 1.0:
        return torch.ones_like(probs, dtype=torch.bool)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    keep_sorted = mass_before < cdf_threshold
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def select_by_drop_mass(probs: torch.Tensor, drop_mass, forced: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per row, drop the least probable blocks while their cumulative mass stays ``<= drop_mass`` (δ).

    Args:
        probs: ``[..., NK]`` non-negative block masses (rows summing to about 1).
        drop_mass: δ, a number or a tensor broadcastable to ``probs.shape[:-1] + (1,)`` (one δ per batch and head:
            ``[B, H, 1, 1]``). δ <= 0 keeps every block.
        forced: bool broadcastable to ``probs``; forced blocks are never dropped.
    Returns:
        bool ``[..., NK]`` kept blocks; every row keeps at least its most probable block.
    """
    if not isinstance(drop_mass, torch.Tensor) and drop_mass <= 0:
        return torch.ones_like(probs, dtype=torch.bool)
    p = probs.float()
    if forced is not None:
        p = p.masked_fill(forced, float("inf"))
    sorted_p, order = torch.sort(p, dim=-1, stable=True)  # ascending
    dropped_sorted = torch.cumsum(sorted_p, dim=-1) <= drop_mass
    if isinstance(drop_mass, torch.Tensor):
        dropped_sorted &= drop_mass > 0
    dropped_sorted[..., -1] = False  # the most probable block always stays
    dropped = torch.zeros_like(dropped_sorted).scatter(-1, order, dropped_sorted)
    return ~dropped

def naive_select_blocks(probs: torch.Tensor, forced_rows: torch.Tensor, forced_cols: torch.Tensor, *,
                        topk: Optional[float] = None, drop_mass=None) -> torch.Tensor:
    """Kept blocks of a predicted block-mass map under top-k or a drop mass, forced blocks always kept (the ground
    truth of the selection kernel's modes 0 and 2 over masses that include the forced blocks).

    Args:
        probs: ``[B, H, NQ, NK]`` predicted block masses (softmax over all key blocks).
        forced_rows: bool ``[B, H, NQ]``; forced_cols: bool ``[B, H, NK]``.
        topk: keep ``round(topk · NK)`` blocks per row, forced columns counting against it; or
        drop_mass: δ, a number or fp32 ``[B, H]`` (one per head, the error budget's).
    Returns:
        bool ``[B, H, NQ, NK]``.
    """
    if (topk is None) == (drop_mass is None):
        raise ValueError("naive_select_blocks needs exactly one of topk or drop_mass")
    cols = forced_cols.unsqueeze(-2)
    if topk is not None:
        budget = topk_block_count(topk, probs.shape[-1]) - cols.sum(dim=-1)
        selected = naive_select_topk(probs.masked_fill(cols, -1.0), budget.clamp_min(0))
    else:
        if isinstance(drop_mass, torch.Tensor):
            drop_mass = drop_mass.to(probs.device)[..., None, None]
        selected = select_by_drop_mass(probs, drop_mass, cols.expand_as(probs))
    return selected | cols | forced_rows.unsqueeze(-1)


__all__ = ["MODE_CDF", "MODE_DROP_MASS", "MODE_TOPK", "RULES", "Selection", "resolve_selection",
           "naive_select_blocks", "naive_select_cdf", "naive_select_topk", "select_by_drop_mass", "topk_block_count"]
