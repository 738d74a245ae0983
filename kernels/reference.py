"""Pure-PyTorch ground truth of SpargeAttn (Zhang et al., ICML 2025, arXiv 2502.18137).

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

FP8_E4M3_MAX = 448.0
INT8_MAX = 127.0
_EPS = 1e-12


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense softmax attention computed in ``dtype`` (the fp32 oracle by default): ``[B, H, Sq, D]``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v.to(dtype))


def num_blocks(seq_len: int, block: int) -> int:
    return -(-seq_len // block)


def _split_blocks(x: torch.Tensor, block: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the token dim to whole blocks.

    Returns:
        blocks: ``[B, H, NB, block, D]`` in x's dtype.
        valid: bool ``[NB, block]``, False on padding.
    """
    seq_len = x.shape[-2]
    nb = num_blocks(seq_len, block)
    pad = nb * block - seq_len
    padded = torch.nn.functional.pad(x, (0, 0, 0, pad))
    valid = (torch.arange(nb * block, device=x.device) < seq_len).view(nb, block)
    return padded.unflatten(-2, (nb, block)), valid


def block_token_counts(seq_len: int, block: int, device=None) -> torch.Tensor:
    """Tokens per block, float ``[NB]``."""
    starts = torch.arange(0, seq_len, block, device=device)
    return torch.clamp(seq_len - starts, max=block).float()


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


def blocks_touching(ranges: Sequence[Tuple[int, int]], seq_len: int, block: int, device) -> torch.Tensor:
    """bool ``[NB]``: blocks that hold at least one token of the ``(start, end)`` ranges (clipped to seq_len)."""
    touched = torch.zeros(num_blocks(seq_len, block), dtype=torch.bool, device=device)
    for start, end in ranges:
        end = min(end, seq_len)
        if end > start:
            touched[start // block: (end - 1) // block + 1] = True
    return touched


def topk_block_count(topk: float, num_key_blocks: int) -> int:
    """Key blocks kept per query block for a top-k fraction: ``round(topk · NK)`` clipped to ``[1, NK]``."""
    return min(num_key_blocks, max(1, int(topk * num_key_blocks + 0.5)))


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


def naive_block_mass(q: torch.Tensor, k: torch.Tensor, block_m: int, block_n: int, scale: float) -> torch.Tensor:
    """True attention mass of each block, averaged over the query block's rows: ``[B, H, NQ, NK]``, rows sum to 1.

    Needs the dense ``[Sq, Sk]`` map per head: for evaluation only.
    """
    probs = torch.softmax(torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale, dim=-1)
    nq, nk = num_blocks(q.shape[-2], block_m), num_blocks(k.shape[-2], block_n)
    probs = torch.nn.functional.pad(probs, (0, nk * block_n - k.shape[-2], 0, nq * block_m - q.shape[-2]))
    mass = probs.unflatten(-1, (nk, block_n)).sum(-1).unflatten(-2, (nq, block_m)).sum(-2)
    return mass / block_token_counts(q.shape[-2], block_m, q.device)[:, None]


def naive_ideal_block_mask(q: torch.Tensor, k: torch.Tensor, *, block_m: int, block_n: int, scale: float,
                           cdf_threshold: float) -> torch.Tensor:
    """The ideal selector (evaluation only): TopCdf (τ) over the exact block mass of `naive_block_mass`."""
    return naive_select_cdf(naive_block_mass(q, k, block_m, block_n, scale), cdf_threshold)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.trunc(x + 0.5 * torch.sign(x))


def naive_quantize_int8(x: torch.Tensor, block: int, smooth: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-block symmetric INT8 quantization.

    Args:
        x: ``[B, H, S, D]``.
        smooth: subtract the mean over tokens first (K smoothing of SageAttention; leaves softmax(QKᵀ) unchanged).
    Returns:
        values: int8 ``[B, H, S, D]``; scales: fp32 ``[B, H, NB]`` with ``x ≈ values · scale`` per block.
    """
    x = x.float()
    if smooth:
        x = x - x.mean(dim=-2, keepdim=True)
    blocks, _ = _split_blocks(x, block)
    scales = blocks.abs().amax(dim=(-2, -1)).clamp_min(_EPS) / INT8_MAX
    values = _round_half_away(blocks / scales[..., None, None]).clamp(-INT8_MAX, INT8_MAX)
    return values.flatten(-3, -2)[..., : x.shape[-2], :].to(torch.int8), scales


def naive_quantize_v_fp8(v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel FP8 e4m3 quantization of V.

    Returns:
        values: float8_e4m3fn ``[B, H, S, D]``; scales: fp32 ``[B, H, D]`` with ``v ≈ values · scale``.
    """
    scales = v.float().abs().amax(dim=-2).clamp_min(_EPS) / FP8_E4M3_MAX
    return (v.float() / scales[..., None, :]).to(torch.float8_e4m3fn), scales


def _quantized_scores_fn(q, k, block_m, block_n, scale, precision):
    """Returns ``scores(j) -> [B, H, NQ, BM, n_j]`` computing Q·K_jᵀ·scale as the kernel does for ``precision``."""
    if precision == "bf16":
        q_blocks, _ = _split_blocks(q.float(), block_m)
        k_values = k.float()

        def scores(j):
            kj = k_values[..., j * block_n: (j + 1) * block_n, :]
            return torch.matmul(q_blocks, kj.unsqueeze(2).transpose(-1, -2)) * scale

        return scores
    q_int, q_scale = naive_quantize_int8(q, block_m)
    k_int, k_scale = naive_quantize_int8(k, block_n, smooth=True)
    q_blocks, _ = _split_blocks(q_int.float(), block_m)

    def scores(j):
        kj = k_int[..., j * block_n: (j + 1) * block_n, :].float()
        dots = torch.matmul(q_blocks, kj.unsqueeze(2).transpose(-1, -2))
        return dots * (q_scale[..., :, None, None] * k_scale[..., j, None, None, None] * scale)

    return scores


def _pv_fn(v, precision):
    """Returns ``(pv(p, j) -> [B, H, NQ, BM, D], out_scale)`` emulating the kernel's P·V operand precision."""
    if precision == "int8-fp8":
        v_fp8, v_scale = naive_quantize_v_fp8(v)
        v_values = v_fp8.float()

        def pv(p, j, block_n):
            p8 = (p * FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()
            return torch.matmul(p8, v_values[..., j * block_n: (j + 1) * block_n, :].unsqueeze(2))

        return pv, (v_scale / FP8_E4M3_MAX)[:, :, None, None, :]
    operand = torch.float16 if precision == "int8-fp16" else v.dtype
    v_values = v.to(operand).float()

    def pv(p, j, block_n):
        return torch.matmul(p.to(operand).float(), v_values[..., j * block_n: (j + 1) * block_n, :].unsqueeze(2))

    return pv, 1.0


def naive_block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    scale: float,
    precision: str = "bf16",
    pv_threshold: Optional[float] = None,
) -> torch.Tensor:
    """Stage 2: online-softmax attention over the kept blocks, emulating the kernel's arithmetic.

    Key blocks are visited in ascending order. With λ (``pv_threshold``), a kept block is dropped for query block
    ``i`` when every valid row satisfies ``rowmax_block − running_max < λ`` at the moment it is visited. Rows with no
    visited block return 0 (finite by construction).

    Args:
        block_mask: bool ``[B, H, NQ, NK]``.
        precision: ``"int8-fp8"``, ``"int8-fp16"`` or ``"bf16"`` (operands in the input dtype).
    Returns:
        fp32 ``[B, H, Sq, D]``.
    """
    sq = q.shape[-2]
    batch, heads, nq, nk = block_mask.shape
    scores_of = _quantized_scores_fn(q, k, block_m, block_n, scale, precision)
    pv_of, out_scale = _pv_fn(v, precision)
    _, valid_rows = _split_blocks(q, block_m)

    stats_shape = (batch, heads, nq, block_m)
    running_max = torch.full(stats_shape, float("-inf"), device=q.device)
    row_sum = torch.zeros(stats_shape, device=q.device)
    acc = torch.zeros(*stats_shape, v.shape[-1], device=q.device)
    for j in range(nk):
        scores = scores_of(j)  # [B, H, NQ, BM, n_j]
        block_max = scores.amax(dim=-1)
        new_max = torch.maximum(running_max, block_max)
        active = block_mask[..., j]
        if pv_threshold is not None:
            negligible = ((block_max - new_max) < pv_threshold) | ~valid_rows
            active = active & ~negligible.all(dim=-1)
        active_rows = active.unsqueeze(-1)
        new_max = torch.where(active_rows, new_max, running_max)
        safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        p = torch.exp(scores - safe_max.unsqueeze(-1))
        alpha = torch.exp(running_max - safe_max)
        row_sum = torch.where(active_rows, alpha * row_sum + p.sum(dim=-1), row_sum)
        acc = torch.where(active_rows.unsqueeze(-1), alpha.unsqueeze(-1) * acc + pv_of(p, j, block_n), acc)
        running_max = new_max
    out = acc * out_scale / row_sum.clamp_min(_EPS).unsqueeze(-1)
    out = torch.where((row_sum > 0).unsqueeze(-1), out, torch.zeros_like(out))
    return out.flatten(2, 3)[..., :sq, :]


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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The whole algorithm: stage-1 prediction then stage-2 block-sparse attention.

    Args:
        predictor: ``"sparge"`` (`naive_predict_block_mask`), ``"lse"``
            (`predictors.naive_predict_block_mask_lse`; ``sim_threshold`` unused) or ``"full"``.
        target_error: ε, an error budget that replaces ``topk`` / ``cdf_threshold``: ``"lse"`` drops per query
            block the least massive key blocks up to a predicted mass ``δ = ε · DROP_MASS_PER_ERROR``; ``"sparge"``
            uses TopCdf with ``τ = 1 − δ``. Otherwise ``topk`` wins over ``cdf_threshold``; ``"lse"`` maps τ to
            ``δ = 1 − τ``.
    Returns:
        out: fp32 ``[B, H, Sq, D]``; block_mask: bool ``[B, H, NQ, NK]``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if target_error is not None:
        from .predictors import DROP_MASS_PER_ERROR

        topk, cdf_threshold = None, 1.0 - target_error * DROP_MASS_PER_ERROR
    elif topk is not None:
        cdf_threshold = None
    if predictor == "full" or (topk is not None and topk >= 1.0) or (topk is None and cdf_threshold >= 1.0):
        shape = (*q.shape[:2], num_blocks(q.shape[-2], block_m), num_blocks(k.shape[-2], block_n))
        block_mask = torch.ones(shape, dtype=torch.bool, device=q.device)
    elif predictor == "lse":
        from .predictors import naive_predict_block_mask_lse

        block_mask = naive_predict_block_mask_lse(
            q, k, block_m=block_m, block_n=block_n, scale=scale, topk=topk,
            drop_mass=None if topk is not None else 1.0 - cdf_threshold, keep_ranges=keep_ranges,
        )
    elif predictor == "sparge":
        block_mask = naive_predict_block_mask(
            q, k, block_m=block_m, block_n=block_n, scale=scale, topk=topk, cdf_threshold=cdf_threshold,
            sim_threshold=sim_threshold, keep_ranges=keep_ranges,
        )
    else:
        raise ValueError(f"predictor must be 'sparge', 'lse' or 'full', got {predictor!r}")
    out = naive_block_sparse_attention(
        q, k, v, block_mask, block_m=block_m, block_n=block_n, scale=scale, precision=precision,
        pv_threshold=pv_threshold,
    )
    return out, block_mask


def relative_l1(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``Σ|out − ref| / Σ|ref|`` in fp32, the error measure of the paper and of ANCHORS.md."""
    ref = ref.float()
    return float((out.float() - ref).abs().sum() / ref.abs().sum().clamp_min(_EPS))


def cosine_similarity(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors."""
    return float(torch.nn.functional.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0))


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
    "naive_forced_blocks",
    "naive_ideal_block_mask",
    "naive_pooled_scores",
    "naive_predict_block_mask",
    "naive_quantize_int8",
    "naive_quantize_v_fp8",
    "naive_select_cdf",
    "naive_select_topk",
    "naive_sparge_attention",
    "num_blocks",
    "relative_l1",
    "topk_block_count",
]
