"""Ground truth of the stage-1 predictors (`predict.kernel`): block statistics, block-mass estimates, forced blocks
and the predicted block masks.

Block predictors beyond the paper's stage 1, the error-budget selection rule, and mask evaluation helpers.

Pure PyTorch, vectorised, device-agnostic: this is the reference each future Triton predictor is tested against and
also what runs on the GPU until one exists. Layout: ``q: [B, H, Sq, D]``, ``k, v: [B, H, Sk, D]``; block maps
``[B, H, NQ, NK]`` (``NQ = ceil(Sq / block_m)``, ``NK = ceil(Sk / block_n)``).

Predictors (all estimate the block mass ``M[i, j]``: the attention mass that the rows of query block ``i`` put on
key block ``j``, averaged over the rows, the quantity the ideal selector ranks by):

- ``"sparge"`` (the paper's stage 1, `naive_predict_block_mask`): ``softmax_j(q̄_i · k̄_j · scale)``.
  Pooling both sides loses the spread of the keys within a block (``exp`` is convex: a block with one very close
  key scores like a block of average keys) and the spread of the queries.
- ``"lse"``: ``M̂[i, j] ∝ Σ_{c ∈ j} exp(q̄_i · k_c · scale + ½ scale² Σ_d σ²_{i,d} k_{c,d}²)``: the mean query of each
  block scored against every key token, log-sum-exp'ed over each key block, with a second-moment (Gaussian,
  diagonal) correction for the spread ``σ²_i`` of the queries of the block. Keys are not pooled, so the spread of
  the keys is exact. Cost: two ``[NQ, D] x [D, Sk]`` matmuls per head, ``2·Sq·Sk·D / block_m`` multiply-adds,
  i.e. ``1 / block_m`` of dense attention's ``4·Sq·Sk·D`` FLOPs (0.8% at block_m = 128), plus ``Sq·Sk / block_m``
  exponentials.
- ``"mixed"``: ``MIXED_WEIGHT · lse + (1 − MIXED_WEIGHT) · sampled``, where *sampled* is the exact block mass of
  ``MIXED_ROWS`` evenly spaced query rows of each block (`naive_sampled_rows_block_probs`). The lse estimate scores
  each block's mean query, so it misranks blocks whose queries attend to different places (local windows, temporal
  diagonals, hub keys); a few exact rows see those places. Weight and row count were fixed before the evaluation
  (`predictor_eval.md`, `budget_eval.md`), not tuned on it. Cost on top of lse: ``MIXED_ROWS / block_m`` of dense
  attention's Q·Kᵀ and its exponentials (3% of the Q·Kᵀ at block_m = 128), no P·V.

Stage 1 of the paper (Sec. 3.2-3.3): mean-pool each block of Q and K, measure each block's self-similarity (mean
pairwise cosine similarity), score blocks with softmax(q̄ k̄ᵀ · scale), and keep key blocks by top-k or TopCdf (τ).
Blocks whose self-similarity is below θ are not represented by their mean and are always computed.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..geometry import block_token_counts, blocks_touching, num_blocks, split_blocks as _split_blocks
from ..selection import naive_select_blocks, naive_select_cdf, naive_select_topk, topk_block_count

_EPS = 1e-12

# Stage-1 predictors a setting can name (``"full"`` keeps every block).
PREDICTORS = ("sparge", "lse", "mixed", "full")
# Predictors that rank blocks by a block-mass estimate over all key blocks (a softmax row per query block).
MASS_PREDICTORS = ("sparge", "lse", "mixed")
# The "mixed" estimate: share of the lse estimate, and exact query rows sampled per block.
MIXED_WEIGHT = 0.5
MIXED_ROWS = 4


def check_predictor(predictor: str) -> str:
    """``predictor`` when it is one of `PREDICTORS`, else a one-line ValueError naming the allowed values."""
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    return predictor


def block_sample_rows(seq_len_q: int, block_m: int, rows: int, device=None) -> torch.Tensor:
    """Query rows of the sampled-rows estimate: long ``[NQ · rows]``, ``rows`` per query block (block-major), at the
    centres of ``rows`` equal parts of the block (a short last block repeats rows rather than leaving the block)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows!r}")
    nq = num_blocks(seq_len_q, block_m)
    counts = block_token_counts(seq_len_q, block_m, device).long()  # [NQ]
    offsets = torch.arange(rows, device=device) * 2 + 1  # odd multiples: centres of `rows` equal parts
    index = torch.arange(nq, device=device)[:, None] * block_m + (offsets[None, :] * counts[:, None]) // (2 * rows)
    return index.flatten()


def naive_block_mean(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean token of each block over its valid tokens: ``[B, H, S, D] -> [B, H, NB, D]`` (fp32)."""
    blocks, _ = _split_blocks(x.float(), block)
    return blocks.sum(dim=-2) / block_token_counts(x.shape[-2], block, x.device)[:, None]


def naive_block_self_similarity(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean pairwise cosine similarity of the tokens of each block (diagonal included): ``[B, H, NB]``.

    Equals ``‖Σᵢ x̂ᵢ‖² / n²`` with ``x̂ᵢ`` the unit-normalised tokens; 1 for a block of identical directions, about
    ``1/n`` for random ones.
    """
    unit = x.float() / x.float().norm(dim=-1, keepdim=True).clamp_min(_EPS)
    blocks, _ = _split_blocks(unit, block)
    counts = block_token_counts(x.shape[-2], block, x.device)
    return blocks.sum(dim=-2).pow(2).sum(dim=-1) / counts.pow(2)


def naive_pooled_scores(q: torch.Tensor, k: torch.Tensor, block_m: int, block_n: int, scale: float) -> torch.Tensor:
    """Compressed attention logits ``q̄ k̄ᵀ · scale + log n_j``: ``[B, H, NQ, NK]``.

    The ``log n_j`` term (tokens in key block ``j``) makes a partial last key block carry proportionally less mass;
    for full blocks it is a constant and changes nothing.
    """
    logits = torch.matmul(naive_block_mean(q, block_m), naive_block_mean(k, block_n).transpose(-1, -2)) * scale
    return logits + torch.log(block_token_counts(k.shape[-2], block_n, k.device))


def naive_forced_blocks(q: torch.Tensor, k: torch.Tensor, *, block_m: int, block_n: int,
                        keep_ranges: Sequence[Tuple[int, int]] = (), sim_threshold: Optional[float] = None,
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(forced_rows [B, H, NQ], forced_cols [B, H, NK])``: blocks touching ``keep_ranges`` or below θ."""
    sq, sk = q.shape[-2], k.shape[-2]
    rows = blocks_touching(keep_ranges, sq, block_m, q.device).expand(*q.shape[:2], num_blocks(sq, block_m))
    cols = blocks_touching(keep_ranges, sk, block_n, k.device).expand(*k.shape[:2], num_blocks(sk, block_n))
    if sim_threshold is not None:
        rows = rows | (naive_block_self_similarity(q, block_m) < sim_threshold)
        cols = cols | (naive_block_self_similarity(k, block_n) < sim_threshold)
    return rows, cols


def naive_predict_block_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    scale: float,
    topk: Optional[float] = None,
    cdf_threshold: Optional[float] = None,
    sim_threshold: Optional[float] = None,
    keep_ranges: Sequence[Tuple[int, int]] = (),
) -> torch.Tensor:
    """Stage-1 prediction of the kept blocks: bool ``[B, H, NQ, NK]``.

    Key blocks below θ (``sim_threshold``) or touching ``keep_ranges`` are kept for every query block and are left
    out of the softmax over pooled scores; query blocks below θ or touching ``keep_ranges`` keep every key block.
    With ``topk``, the forced key blocks count against the per-row budget ``round(topk · NK)``; with TopCdf (τ) the
    selection runs over the remaining blocks only. Every row keeps at least one block.
    """
    if topk is None and cdf_threshold is None:
        raise ValueError("naive_predict_block_mask needs topk or cdf_threshold")
    nk = num_blocks(k.shape[-2], block_n)
    forced_rows, forced_cols = naive_forced_blocks(q, k, block_m=block_m, block_n=block_n, keep_ranges=keep_ranges,
                                                   sim_threshold=sim_threshold)

    logits = naive_pooled_scores(q, k, block_m, block_n, scale)
    logits = logits.masked_fill(forced_cols.unsqueeze(-2), float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)

    if topk is not None:
        budget = topk_block_count(topk, nk) - forced_cols.sum(dim=-1, keepdim=True)
        candidates = probs.masked_fill(forced_cols.unsqueeze(-2), -1.0)
        selected = naive_select_topk(candidates, budget.clamp_min(0))
    else:
        selected = naive_select_cdf(probs, cdf_threshold) & ~forced_cols.unsqueeze(-2)
    return selected | forced_cols.unsqueeze(-2) | forced_rows.unsqueeze(-1)


def _pad_keys(k: torch.Tensor, block_n: int) -> torch.Tensor:
    nk = num_blocks(k.shape[-2], block_n)
    return torch.nn.functional.pad(k, (0, 0, 0, nk * block_n - k.shape[-2]))


def naive_lse_block_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    scale: float,
    variance_weight: float = 1.0,
) -> torch.Tensor:
    """Log of the estimated block mass (unnormalised): ``[B, H, NQ, NK]`` fp32.

    ``logits[i, j] = logsumexp_{c ∈ j}(q̄_i · k_c · scale + variance_weight · ½ scale² Σ_d σ²_{i,d} k_{c,d}²)``
    with ``q̄_i`` and ``σ²_i`` the per-channel mean and variance of the valid queries of block ``i``. Padded key
    positions of a partial last block contribute nothing.
    """
    qf = q.float()
    q_mean = naive_block_mean(qf, block_m)  # [B, H, NQ, D]
    sk = k.shape[-2]
    # One GEMM with a 2·D inner dim: [q̄·scale, ½ w scale² σ²] · [k, k∘k]ᵀ
    query_side = [q_mean * scale]
    key_side = [k]
    if variance_weight:
        q_var = (naive_block_mean(qf * qf, block_m) - q_mean * q_mean).clamp_min(0.0)  # [B, H, NQ, D]
        query_side.append(q_var * (0.5 * variance_weight * scale * scale))
        key_side.append(k * k)
    lhs = torch.cat(query_side, dim=-1).to(k.dtype)  # [B, H, NQ, D or 2D]
    rhs = _pad_keys(torch.cat(key_side, dim=-1), block_n)  # [B, H, NK*bn, D or 2D]
    # operands rounded to the input dtype, products summed and kept in fp32 (as the Triton kernel does)
    logits = torch.matmul(lhs.float(), rhs.float().transpose(-1, -2))  # [B, H, NQ, NK*bn]
    if rhs.shape[-2] > sk:
        logits[..., sk:] = float("-inf")
    nk = num_blocks(sk, block_n)
    return torch.logsumexp(logits.unflatten(-1, (nk, block_n)), dim=-1).float()


def naive_lse_block_probs(q, k, *, block_m: int, block_n: int, scale: float, variance_weight: float = 1.0):
    """Estimated block mass, rows summing to 1: ``softmax_j`` of `naive_lse_block_logits`."""
    logits = naive_lse_block_logits(q, k, block_m=block_m, block_n=block_n, scale=scale,
                                    variance_weight=variance_weight)
    return torch.softmax(logits, dim=-1)


def naive_sampled_rows_block_probs(q, k, *, block_m: int, block_n: int, scale: float, rows: int = 4):
    """Block mass measured on ``rows`` evenly spaced query rows of each block (exact softmax over all keys).

    Cost: ``rows / block_m`` of the Q·Kᵀ of dense attention. Returns ``[B, H, NQ, NK]``, rows summing to 1.
    """
    sq, sk = q.shape[-2], k.shape[-2]
    nq, nk = num_blocks(sq, block_m), num_blocks(sk, block_n)
    sample = q.float()[..., block_sample_rows(sq, block_m, rows, q.device), :]  # [B, H, NQ*rows, D]
    kp = _pad_keys(k.float(), block_n)
    logits = torch.matmul(sample, kp.transpose(-1, -2)) * scale
    if kp.shape[-2] > sk:
        logits[..., sk:] = float("-inf")
    probs = torch.softmax(logits, dim=-1).unflatten(-1, (nk, block_n)).sum(-1)
    return probs.unflatten(-2, (nq, rows)).mean(-2)


def naive_mixed_block_probs(q, k, *, block_m: int, block_n: int, scale: float, rows: int = MIXED_ROWS,
                            weight: float = MIXED_WEIGHT):
    """The ``"mixed"`` estimate of block mass (module docstring): ``weight`` · `naive_lse_block_probs` +
    (1 − ``weight``) · `naive_sampled_rows_block_probs` (exact softmax of ``rows`` query rows per block).
    ``[B, H, NQ, NK]`` fp32, rows summing to 1. Cost: ``rows / block_m`` of the Q·Kᵀ of dense attention on top of
    the lse predictor.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    lse = naive_lse_block_probs(q, k, block_m=block_m, block_n=block_n, scale=scale)
    sampled = naive_sampled_rows_block_probs(q, k, block_m=block_m, block_n=block_n, scale=scale, rows=rows)
    return weight * lse + (1.0 - weight) * sampled


def naive_sparge_block_probs(q, k, *, block_m: int, block_n: int, scale: float) -> torch.Tensor:
    """The paper's pooled estimate ``softmax_j(q̄_i k̄_jᵀ · scale + log n_j)`` (no forced columns removed)."""
    q_mean = naive_block_mean(q, block_m)
    k_mean = naive_block_mean(k, block_n)
    logits = torch.matmul(q_mean, k_mean.transpose(-1, -2)) * scale
    logits = logits + torch.log(block_token_counts(k.shape[-2], block_n, k.device))
    return torch.softmax(logits, dim=-1)


def naive_predict_block_mask_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    scale: float,
    topk: Optional[float] = None,
    drop_mass: Optional[float] = None,
    keep_ranges: Sequence[Tuple[int, int]] = (),
    variance_weight: float = 1.0,
) -> torch.Tensor:
    """The ``"lse"`` predictor: bool ``[B, H, NQ, NK]`` kept blocks.

    Scores blocks with `naive_lse_block_probs` (softmax over all key blocks, forced ones included), then keeps
    per query block either the ``round(topk · NK)`` most probable blocks (forced columns count against the budget,
    as in the paper's top-k) or every block except the least probable ones whose cumulative mass is ``<= δ``
    (``drop_mass``). Rows and columns touching ``keep_ranges`` are always kept. Every row keeps at least one block.
    """
    if (topk is None) == (drop_mass is None):
        raise ValueError("naive_predict_block_mask_lse needs exactly one of topk or drop_mass")
    probs = naive_lse_block_probs(q, k, block_m=block_m, block_n=block_n, scale=scale,
                                  variance_weight=variance_weight)  # [B, H, NQ, NK] fp32
    forced_rows, forced_cols = naive_forced_blocks(q, k, block_m=block_m, block_n=block_n, keep_ranges=keep_ranges)
    return naive_select_blocks(probs, forced_rows, forced_cols, topk=topk, drop_mass=drop_mass)


def naive_predicted_block_probs(predictor: str, q: torch.Tensor, k: torch.Tensor, *, block_m: int, block_n: int,
                                scale: float) -> torch.Tensor:
    """The block masses a drop-mass selection ranks by: ``[B, H, NQ, NK]`` fp32, rows summing to 1 over all blocks.

    ``"lse"``: `naive_lse_block_probs`; ``"mixed"``: `naive_mixed_block_probs`; ``"sparge"``: the pooled
    `naive_sparge_block_probs` (the softmax the selection kernel's drop-mass mode takes, forced blocks included).
    """
    if predictor == "lse":
        return naive_lse_block_probs(q, k, block_m=block_m, block_n=block_n, scale=scale)
    if predictor == "mixed":
        return naive_mixed_block_probs(q, k, block_m=block_m, block_n=block_n, scale=scale)
    if predictor == "sparge":
        return naive_sparge_block_probs(q, k, block_m=block_m, block_n=block_n, scale=scale)
    raise ValueError(f"predictor must be one of {MASS_PREDICTORS} for block masses, got {predictor!r}")


__all__ = [
    "MASS_PREDICTORS",
    "MIXED_ROWS",
    "MIXED_WEIGHT",
    "PREDICTORS",
    "block_sample_rows",
    "check_predictor",
    "naive_predicted_block_probs",
    "naive_mixed_block_probs",
    "naive_block_mean",
    "naive_block_self_similarity",
    "naive_forced_blocks",
    "naive_lse_block_logits",
    "naive_lse_block_probs",
    "naive_pooled_scores",
    "naive_predict_block_mask",
    "naive_predict_block_mask_lse",
    "naive_sampled_rows_block_probs",
    "naive_sparge_block_probs",
]
