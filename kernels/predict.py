"""Stage-1 block selection: from pooled scores to a compact list of kept key blocks per query block.

One program per (batch·head, query block) reads the row of pooled logits ``q̄ᵢ k̄ⱼᵀ`` (a small batched matmul of
the block means produced by `quantize.quant_pool_fwd`), applies the softmax over key blocks, the self-similarity
test θ and the always-kept ranges, selects by top-k or TopCdf τ (SpargeAttn, arXiv 2502.18137, Sec. 3.2) with a
bitonic sort in registers, and writes the kept indices in ascending order. Ground truth:
`reference.naive_predict_block_mask`.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .lut import lut_from_mask

__all__ = ["forced_blocks", "lut_from_mask", "select_blocks_fwd"]


@triton.jit
def _select_blocks_fwd_kernel(
    SCORES, Q_SIM, K_SIM, FORCED_Q, FORCED_K, LUT, COUNT,
    NQ, NK, SK, scale, sim_threshold, topk_count, cdf_threshold,
    BLOCK_N: tl.constexpr, NK_PAD: tl.constexpr, USE_TOPK: tl.constexpr, USE_SIM: tl.constexpr,
):
    # scores: [B, H, NQ, NK] fp32 (q̄ k̄ᵀ, unscaled); q_sim: [B, H, NQ]; k_sim: [B, H, NK]
    # forced_q: [NQ] int8; forced_k: [NK] int8; lut: [B, H, NQ, NK] int32; count: [B, H, NQ] int32
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    row = pid_bh * NQ + pid_q
    offs = tl.arange(0, NK_PAD)
    valid = offs < NK
    tokens = tl.minimum(SK - offs * BLOCK_N, BLOCK_N).to(tl.float32)
    logits = tl.load(SCORES + row * NK + offs, mask=valid, other=0.0) * scale
    logits = logits + tl.log(tl.maximum(tokens, 1.0))  # [NK_PAD]
    forced_col = (tl.load(FORCED_K + offs, mask=valid, other=0) != 0) & valid
    forced_row = tl.load(FORCED_Q + pid_q) != 0
    if USE_SIM:
        k_sim = tl.load(K_SIM + pid_bh * NK + offs, mask=valid, other=1.0)
        forced_col = forced_col | ((k_sim < sim_threshold) & valid)
        forced_row = forced_row | (tl.load(Q_SIM + row) < sim_threshold)
    candidate = valid & (forced_col == 0)
    logits = tl.where(candidate, logits, float("-inf"))
    row_max = tl.max(logits, axis=0)
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    weights = tl.where(candidate, tl.exp(logits - row_max), 0.0)
    probs = weights / tl.maximum(tl.sum(weights, axis=0), 1e-30)  # [NK_PAD]
    if USE_TOPK:
        budget = topk_count - tl.sum(forced_col.to(tl.int32), axis=0)
        keyed = tl.where(candidate, probs, -1.0)
        ranked = tl.sort(keyed, 0, descending=True)
        cut = tl.sum(tl.where(offs == budget - 1, ranked, 0.0), axis=0)
        keep = candidate & (keyed >= cut) & (budget > 0)
    else:
        ranked = tl.sort(probs, 0, descending=True)
        mass_before = tl.cumsum(ranked, 0) - ranked
        kept_ranked = (mass_before < cdf_threshold) | (offs == 0)
        cut = tl.min(tl.where(kept_ranked, ranked, 2.0), axis=0)
        keep = candidate & (probs >= cut)
    keep = keep | forced_col | (forced_row & valid)
    position = tl.cumsum(keep.to(tl.int32), 0) - 1
    tl.store(LUT + row * NK + position, offs, mask=keep != 0)
    tl.store(COUNT + row, tl.sum(keep.to(tl.int32), axis=0))


@functools.lru_cache(maxsize=256)
def _forced_blocks_cached(ranges: Tuple[Tuple[int, int], ...], seq_len: int, block: int, device) -> torch.Tensor:
    forced = torch.zeros(triton.cdiv(seq_len, block), dtype=torch.int8)
    for start, end in ranges:
        end = min(end, seq_len)
        if end > start:
            forced[start // block: (end - 1) // block + 1] = 1
    return forced.to(device)


def forced_blocks(ranges: Sequence[Tuple[int, int]], seq_len: int, block: int, device) -> torch.Tensor:
    """int8 ``[NB]``: 1 for blocks that hold a token of the always-kept ranges (cached per geometry and device)."""
    return _forced_blocks_cached(tuple(ranges), seq_len, block, torch.device(device))


def select_blocks_fwd(
    q_means: torch.Tensor,
    k_means: torch.Tensor,
    q_sims: torch.Tensor,
    k_sims: torch.Tensor,
    *,
    seq_len_q: int,
    seq_len_k: int,
    block_m: int,
    block_n: int,
    scale: float,
    topk: Optional[float],
    cdf_threshold: Optional[float],
    sim_threshold: Optional[float],
    keep_ranges: Sequence[Tuple[int, int]] = (),
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kept key blocks per query block.

    Args:
        q_means, k_means: fp32 ``[B, H, NQ, D]``, ``[B, H, NK, D]`` block means.
        q_sims, k_sims: fp32 ``[B, H, NQ]``, ``[B, H, NK]`` block self-similarities.
    Returns:
        lut: int32 ``[B, H, NQ, NK]`` (kept indices ascending, then unspecified); counts: int32 ``[B, H, NQ]``.
    """
    b, h, nq, _ = q_means.shape
    nk = k_means.shape[2]
    scores = torch.matmul(q_means, k_means.transpose(-1, -2))
    lut = torch.empty((b, h, nq, nk), dtype=torch.int32, device=q_means.device)
    counts = torch.empty((b, h, nq), dtype=torch.int32, device=q_means.device)
    use_topk = topk is not None
    topk_count = min(nk, max(1, int(topk * nk + 0.5))) if use_topk else 0
    nk_pad = max(16, triton.next_power_of_2(nk))
    _select_blocks_fwd_kernel[(nq, b * h)](
        scores, q_sims, k_sims,
        forced_blocks(keep_ranges, seq_len_q, block_m, q_means.device),
        forced_blocks(keep_ranges, seq_len_k, block_n, q_means.device),
        lut, counts, nq, nk, seq_len_k, scale,
        -2.0 if sim_threshold is None else float(sim_threshold), topk_count,
        1.0 if cdf_threshold is None else float(cdf_threshold),
        BLOCK_N=block_n, NK_PAD=nk_pad, USE_TOPK=use_topk, USE_SIM=sim_threshold is not None,
        num_warps=4 if nk_pad <= 1024 else 8,
    )
    return lut, counts
