"""Pure-PyTorch ground truth of the whole SpargeAttn call (Zhang et al., ICML 2025, arXiv 2502.18137).

Each op's own reference lives beside its kernel (`quantize.naive`, `predict.naive`, `block_sparse_attn.naive`;
the selection rule in `selection`, the error budget in `budget`); this module composes them into the whole call
and re-exports them, so that tests and scripts have one place to import the ground truth from.

Device-agnostic and written for clarity, not speed: it is what runs on the CPU and what every Triton kernel is
tested against. Layout everywhere: ``q: [B, H, Sq, D]``, ``k, v: [B, H, Sk, D]``; block masks ``[B, H, NQ, NK]``
with ``NQ = ceil(Sq / block_m)``, ``NK = ceil(Sk / block_n)``; the last block of a sequence may be partial.

Stage 1 (Sec. 3.2-3.3 of the paper): mean-pool each block of Q and K, measure each block's self-similarity (mean
pairwise cosine similarity), score blocks with softmax(q̄ k̄ᵀ · scale), and keep key blocks by top-k or TopCdf (τ).
Blocks whose self-similarity is below θ are not represented by their mean and are always computed.

Stage 2 (Sec. 3.4): the block-sparse online-softmax attention visits kept key blocks in ascending order; a block
whose row maxima all lie more than -λ below the running maxima contributes nothing (its P·V is skipped).

Quantization (SageAttention, arXiv 2410.02367, and SageAttention2, arXiv 2411.10958): Q per query block and K per
key block to INT8 with a scale ``amax / 127`` (K first smoothed by subtracting its mean over tokens, which leaves
softmax unchanged); P·V in FP8 e4m3 with P scaled by 448 and V by a per-channel scale ``amax / 448``, or in FP16.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .block_sparse_attn.naive import naive_attention, naive_block_sparse_attention
from .budget import budget_drop_mass
from .evaluation import cosine_similarity, naive_block_mass, naive_ideal_block_mask, relative_l1
from .geometry import block_token_counts, blocks_touching, num_blocks
from .predict.naive import (
    check_predictor,
    naive_block_mean,
    naive_block_self_similarity,
    naive_forced_blocks,
    naive_pooled_scores,
    naive_predict_block_mask,
    naive_predict_block_mask_lse,
    naive_predicted_block_probs,
)
from .quantize.naive import FP8_E4M3_MAX, INT8_MAX, naive_quantize_int8, naive_quantize_v_fp8
from .selection import (naive_select_blocks, naive_select_cdf, naive_select_topk, resolve_selection,
                        topk_block_count)


def naive_sparge_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: Optional[float] = None,
    block_m: int = 128,
    block_n: int = 64,
    topk: Optional[float] = 0.5,
    cdf_threshold: Optional[float] = None,
    sim_threshold: Optional[float] = None,
    pv_threshold: Optional[float] = None,
    precision: str = "bf16",
    keep_ranges: Sequence[Tuple[int, int]] = (),
    predictor: str = "sparge",
    target_error: Optional[float] = None,
    drop_mass: Optional[torch.Tensor] = None,
    return_drop_mass: bool = False,
    block_mask: Optional[torch.Tensor] = None,
):
    """The whole algorithm: stage-1 prediction then stage-2 block-sparse attention.

    Args:
        predictor: ``"sparge"`` (`naive_predict_block_mask`), ``"lse"`` or ``"mixed"`` (their block masses,
            `naive_predicted_block_probs`, ranked as `naive_predict_block_mask_lse` ranks lse's; ``sim_threshold``
            unused) or ``"full"``.
        target_error, topk, cdf_threshold: the selection rule, resolved by `selection.resolve_selection` (ε first,
            then top-k, then τ). With ε the least massive blocks are dropped up to a per-(batch, head) drop mass
            that `budget.budget_drop_mass` measures on sampled exact rows; ``drop_mass`` (fp32 ``[B, H]``) gives
            those drop masses instead (a calibrated or reused budget).
        block_mask: bool ``[B, H, NQ, NK]`` of an earlier call (a reused map): attended instead of predicting one,
            unless the rule keeps every block.
    Returns:
        out: fp32 ``[B, H, Sq, D]``; block_mask: bool ``[B, H, NQ, NK]``; with ``return_drop_mass`` also the drop
        masses the budget used (fp32 ``[B, H]``; NaN for other rules).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    used = torch.full(q.shape[:2], float("nan"), device=q.device)
    check_predictor(predictor)
    selection = resolve_selection(predictor=predictor, topk=topk, cdf_threshold=cdf_threshold,
                                  target_error=target_error)
    shape = (*q.shape[:2], num_blocks(q.shape[-2], block_m), num_blocks(k.shape[-2], block_n))
    if selection.keeps_all:
        block_mask = torch.ones(shape, dtype=torch.bool, device=q.device)
    elif block_mask is not None and tuple(block_mask.shape) == shape:
        if drop_mass is not None:
            used = drop_mass.float()
    elif selection.rule == "budget":
        block_mask, used = naive_budget_block_mask(
            q, k, v, predictor=predictor, target_error=selection.value, block_m=block_m, block_n=block_n, scale=scale,
            keep_ranges=keep_ranges, sim_threshold=sim_threshold, drop_mass=drop_mass, return_drop_mass=True)
    elif predictor in ("lse", "mixed"):  # a block-mass estimate ranked by top-k or a fixed drop mass
        probs = naive_predicted_block_probs(predictor, q, k, block_m=block_m, block_n=block_n, scale=scale)
        forced_rows, forced_cols = naive_forced_blocks(q, k, block_m=block_m, block_n=block_n,
                                                       keep_ranges=keep_ranges)
        block_mask = naive_select_blocks(probs, forced_rows, forced_cols,
                                         topk=selection.value if selection.rule == "topk" else None,
                                         drop_mass=selection.fixed_drop_mass())
    else:
        block_mask = naive_predict_block_mask(
            q, k, block_m=block_m, block_n=block_n, scale=scale,
            topk=selection.value if selection.rule == "topk" else None,
            cdf_threshold=selection.value if selection.rule == "cdf" else None,
            sim_threshold=sim_threshold, keep_ranges=keep_ranges,
        )
    out = naive_block_sparse_attention(
        q, k, v, block_mask, block_m=block_m, block_n=block_n, scale=scale, precision=precision,
        pv_threshold=pv_threshold,
    )
    return (out, block_mask, used) if return_drop_mass else (out, block_mask)



def naive_budget_block_mask(q, k, v, *, predictor: str, target_error: float, block_m: int, block_n: int,
                            scale: float, keep_ranges: Sequence[Tuple[int, int]] = (),
                            sim_threshold: Optional[float] = None,
                            drop_mass: Optional[torch.Tensor] = None, return_drop_mass: bool = False):
    """The error-budget selection: bool ``[B, H, NQ, NK]`` (and the drop masses ``[B, H]`` with
    ``return_drop_mass``).

    Ranks key blocks by the predictor's block masses (`naive_predicted_block_probs`), measures per (batch, head) the
    largest drop mass that meets ε on sampled exact rows (`budget.budget_drop_mass`) unless ``drop_mass`` (fp32
    ``[B, H]``) is given, and drops the least massive non-forced blocks up to it. Forced blocks (``keep_ranges``,
    and θ for ``"sparge"``) are always kept.
    """
    probs = naive_predicted_block_probs(predictor, q, k, block_m=block_m, block_n=block_n, scale=scale)
    forced_rows, forced_cols = naive_forced_blocks(
        q, k, block_m=block_m, block_n=block_n, keep_ranges=keep_ranges,
        sim_threshold=sim_threshold if predictor == "sparge" else None)
    if drop_mass is None:
        drop_mass = budget_drop_mass(q, k, v, probs, target_error=target_error, block_m=block_m, block_n=block_n,
                                     scale=scale, forced_rows=forced_rows, forced_cols=forced_cols)
    mask = naive_select_blocks(probs, forced_rows, forced_cols, drop_mass=drop_mass)
    return (mask, drop_mass) if return_drop_mass else mask


__all__ = [
    "FP8_E4M3_MAX",
    "INT8_MAX",
    "block_token_counts",
    "blocks_touching",
    "cosine_similarity",
    "naive_attention",
    "naive_block_mass",
    "naive_block_mean",
    "naive_block_self_similarity",
    "naive_block_sparse_attention",
    "naive_budget_block_mask",
    "naive_forced_blocks",
    "naive_ideal_block_mask",
    "naive_pooled_scores",
    "naive_predict_block_mask",
    "naive_predict_block_mask_lse",
    "naive_quantize_int8",
    "naive_quantize_v_fp8",
    "naive_select_cdf",
    "naive_select_topk",
    "naive_sparge_attention",
    "num_blocks",
    "relative_l1",
    "topk_block_count",
]
