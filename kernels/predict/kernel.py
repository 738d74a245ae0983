"""Stage-1 block selection: from pooled scores to a compact list of kept key blocks per query block.

One program per (batch·head, query block) reads a row of block logits: pooled ``q̄ᵢ k̄ⱼᵀ`` (a small batched matmul
of the block means from `quantize.prepare_fwd`, or computed in the program for short sequences) or the "lse" block
log-masses that `quantize.prepare_fwd` computes.
It applies the softmax over key blocks, the self-similarity test θ and the always-kept ranges, selects by top-k,
TopCdf τ (SpargeAttn, arXiv 2502.18137, Sec. 3.2) or a dropped-mass budget with a bitonic sort in registers, and
writes the kept indices in ascending order. Ground truth: `naive.naive_predict_block_mask`,
`naive.naive_predict_block_mask_lse`.

The ``"mixed"`` predictor adds the exact block masses of a few sampled query rows per block
(`sampled_rows_block_probs_fwd`: the budget's row-partials kernel without its P·V, then a softmax over key blocks)
to the lse masses (`mixed_block_logits_fwd`; ground truth `naive.naive_mixed_block_probs`).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple, Union

import torch
import triton
import triton.language as tl

from .._launch import launch
from ..budget.kernel import budget_partials_fwd
from ..geometry import blocks_touching, num_blocks
from ..lut import lut_from_mask
from ..selection import MODE_CDF, MODE_DROP_MASS, MODE_TOPK
from .naive import MIXED_ROWS, MIXED_WEIGHT, block_sample_rows

__all__ = ["forced_blocks", "lse_block_logits_fwd", "lut_from_mask", "mixed_block_logits_fwd",
           "sampled_rows_block_probs_fwd", "select_blocks_fwd"]

# The sampled rows' block partials of one launch stay below this many bytes (heads are chunked beyond it).
MAX_SAMPLED_BYTES = 256 << 20
# Launch settings of the sampled rows' partials per kernel head dim: (rows per program, warps, stages), the fastest
# of 16 variants on an H200 (`scripts/bench_sampled_rows.py`, benchmarks/results/sampled_rows_h200.csv): at
# CogVideoX-2b length 0.43 ms (3.8% of dense cuDNN) against 0.97 ms for (16, 4, 1); at Mochi 2.53 ms (3.0%)
# against 8.31 ms. All variants gave the same masses (max difference 4e-7).
SAMPLED_LAUNCH = {64: (64, 4, 2), 128: (128, 8, 2)}

# Up to this many key blocks (padded to a power of two) the selection kernel computes its own row of pooled scores
# instead of reading the output of a separate batched matmul. H200, Flux at 1024² (36 key blocks): 6.0 µs for the
# merged launch against 6.8 µs (cuBLAS) + 3.9 µs (selection). From 139 key blocks on, every program would re-read
# all key-block means from L2.
POOL_IN_KERNEL_UP_TO = 64


@triton.jit
def _select_blocks_fwd_kernel(
    LOGITS, Q_MEAN, K_MEAN, Q_SIM, K_SIM, FORCED_Q, FORCED_K, LUT, COUNT, DROP,
    NQ, NK, SK, scale, sim_threshold, topk_count, cdf_threshold,
    BLOCK_N: tl.constexpr, NK_PAD: tl.constexpr, MODE: tl.constexpr, USE_SIM: tl.constexpr,
    POOLED: tl.constexpr, POOL_IN_KERNEL: tl.constexpr, D: tl.constexpr, PER_HEAD_DROP: tl.constexpr,
):
    # logits: [B, H, NQ, NK] fp32: q̄ k̄ᵀ unscaled (POOLED, the paper's stage 1) or finished block log-masses ("lse");
    # with POOL_IN_KERNEL the program computes its row q̄ᵢ k̄ᵀ from q_mean [B, H, NQ, D], k_mean [B, H, NK, D] instead;
    # q_sim: [B, H, NQ]; k_sim: [B, H, NK]; forced_q: [NQ] int8; forced_k: [NK] int8;
    # lut: [B, H, NQ, NK] int32; count: [B, H, NQ] int32.
    # MODE 0: top-k (forced columns count against the budget); 1: TopCdf τ over the non-forced blocks (softmax over
    # them alone, the paper's rule); 2: drop the least massive non-forced blocks while their mass (softmax over all
    # blocks) stays <= δ = cdf_threshold (or drop[b·h] with PER_HEAD_DROP: fp32 [B·H], the error budget's per-head
    # drop masses; δ < 0 keeps every block), keeping the most massive block when nothing is forced.
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    row = pid_bh * NQ + pid_q
    offs = tl.arange(0, NK_PAD)
    valid = offs < NK
    if POOL_IN_KERNEL:
        logits = tl.zeros([NK_PAD], dtype=tl.float32)
        for start in tl.static_range(0, D, 32):
            offs_d = start + tl.arange(0, 32)
            q_mean = tl.load(Q_MEAN + row * D + offs_d)  # [32]
            k_mean = tl.load(K_MEAN + (pid_bh * NK + offs)[:, None] * D + offs_d[None, :], mask=valid[:, None],
                             other=0.0)  # [NK_PAD, 32]
            logits += tl.sum(k_mean * q_mean[None, :], axis=1)
    else:
        logits = tl.load(LOGITS + row * NK + offs, mask=valid, other=0.0)
    if POOLED:
        tokens = tl.minimum(SK - offs * BLOCK_N, BLOCK_N).to(tl.float32)
        logits = logits * scale + tl.log(tl.maximum(tokens, 1.0))  # [NK_PAD]
    forced_col = (tl.load(FORCED_K + offs, mask=valid, other=0) != 0) & valid
    forced_row = tl.load(FORCED_Q + pid_q) != 0
    if USE_SIM:
        k_sim = tl.load(K_SIM + pid_bh * NK + offs, mask=valid, other=1.0)
        forced_col = forced_col | ((k_sim < sim_threshold) & valid)
        forced_row = forced_row | (tl.load(Q_SIM + row) < sim_threshold)
    candidate = valid & (forced_col == 0)
    if MODE == 2:
        logits = tl.where(valid, logits, float("-inf"))
    else:
        logits = tl.where(candidate, logits, float("-inf"))
    row_max = tl.max(logits, axis=0)
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    weights = tl.exp(logits - row_max)
    probs = weights / tl.maximum(tl.sum(weights, axis=0), 1e-30)  # [NK_PAD]
    if MODE == 2:
        keyed = tl.where(candidate, probs, 0.0)
    else:
        keyed = tl.where(candidate, probs, -1.0)
    ranked = tl.sort(keyed, 0, descending=True)
    if MODE == 0:
        num_keep = topk_count - tl.sum(forced_col.to(tl.int32), axis=0)
    elif MODE == 1:
        mass_before = tl.cumsum(tl.maximum(ranked, 0.0), 0) - tl.maximum(ranked, 0.0)
        num_keep = tl.maximum(tl.sum(((mass_before < cdf_threshold) & (ranked >= 0)).to(tl.int32), axis=0), 1)
    else:
        mass_before = tl.cumsum(ranked, 0) - ranked
        nothing_forced = tl.sum(forced_col.to(tl.int32), axis=0) == 0
        if PER_HEAD_DROP:
            drop = tl.load(DROP + pid_bh)
        else:
            drop = cdf_threshold
        num_keep = tl.sum((mass_before < tl.sum(keyed, axis=0) - drop).to(tl.int32), axis=0)
        num_keep = tl.maximum(num_keep, nothing_forced.to(tl.int32))
    # Keep the num_keep largest; ties at the cut are broken as a stable sort would: lowest index first (top-k and
    # TopCdf rank descending), highest index first (the drop rule drops in ascending order).
    cut = tl.sum(tl.where(offs == num_keep - 1, ranked, 0.0), axis=0)
    above = candidate & (keyed > cut)
    tie = candidate & (keyed == cut)
    need = num_keep - tl.sum(above.to(tl.int32), axis=0)
    if MODE == 2:
        tie_rank = tl.sum(tie.to(tl.int32), axis=0) - tl.cumsum(tie.to(tl.int32), 0) + tie.to(tl.int32)
    else:
        tie_rank = tl.cumsum(tie.to(tl.int32), 0)
    keep = (above | (tie & (tie_rank <= need))) & (num_keep > 0)
    keep = keep | forced_col | (forced_row & valid)
    position = tl.cumsum(keep.to(tl.int32), 0) - 1
    tl.store(LUT + row * NK + position, offs, mask=keep != 0)
    tl.store(COUNT + row, tl.sum(keep.to(tl.int32), axis=0))


@triton.jit
def _lse_block_logits_fwd_kernel(
    QM, QV, K, LOGITS,
    stride_kb, stride_kh, stride_ks, stride_kd,
    H, NQ, NK, SK,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr,
    VARIANCE: tl.constexpr,
):
    # qm, qv: [B, H, NQ, D] in k's dtype: q̄ · scale and ½ w scale² σ² per query block; k: [B, H, SK, D] (any
    # strides); logits: [B, H, NQ, NK] fp32 = logsumexp over the keys c of block j of (qm_i · k_c + qv_i · k_c²)
    # (as `naive.naive_lse_block_logits`).
    pid_q = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_bh = tl.program_id(2)
    off_b = pid_bh // H
    off_h = pid_bh % H
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q_valid = offs_q < NQ
    q_off = (pid_bh * NQ + offs_q)[:, None] * D + offs_d[None, :]
    qm = tl.load(QM + q_off, mask=q_valid[:, None], other=0.0)  # [BLOCK_Q, D]
    if VARIANCE:
        qv = tl.load(QV + q_off, mask=q_valid[:, None], other=0.0)
    k_base = K + off_b * stride_kb + off_h * stride_kh + offs_d[:, None] * stride_kd
    first = pid_n * BLOCKS_PER_PROGRAM
    for kb in range(first, tl.minimum(first + BLOCKS_PER_PROGRAM, NK)):
        cols = kb * BLOCK_N + offs_n
        k = tl.load(k_base + cols[None, :] * stride_ks, mask=(cols < SK)[None, :], other=0.0)  # [D, BLOCK_N]
        s = tl.dot(qm, k)  # [BLOCK_Q, BLOCK_N]
        if VARIANCE:
            s = tl.dot(qv, k * k, s)  # k * k rounded once to k's dtype
        s = tl.where((cols < SK)[None, :], s, float("-inf"))
        row_max = tl.max(s, 1)
        weights = tl.math.exp2(tl.fma(s, 1.4426950408889634, -1.4426950408889634 * row_max[:, None]))
        lse = row_max + tl.log(tl.sum(weights, 1))
        tl.store(LOGITS + (pid_bh * NQ + offs_q) * NK + kb, lse, mask=q_valid)


def lse_block_logits_fwd(q_lse_mean: torch.Tensor, q_lse_var: Optional[torch.Tensor], k: torch.Tensor, *,
                         block_n: int, block_q: Optional[int] = None, per_program: Optional[int] = None,
                         num_warps: int = 4, num_stages: Optional[int] = None) -> torch.Tensor:
    """Fused `naive.naive_lse_block_logits`: ``[B, H, NQ, NK]`` fp32 without the ``[NQ, Sk]`` score matrix.

    Args:
        q_lse_mean, q_lse_var: ``[B, H, NQ, D]`` contiguous in k's dtype, ``q̄ · scale`` and ``½ w scale² σ²`` per
            query block (`quantize.prepare_fwd` writes them); ``q_lse_var`` None leaves out the variance term.
        k: ``[B, H, Sk, D]`` (any strides).
        block_q, per_program, num_warps, num_stages: launch settings (query blocks per program, key blocks per
            program); None picks the H200 measurements: 64 query blocks, 128 from 256 query blocks on; 1 key block
            up to 64 key blocks, 4 up to 256, 16 beyond; one stage (a software-pipelined key loop was not faster at
            any benchmark shape).
    """
    b, h, nq, d = q_lse_mean.shape
    sk = k.shape[2]
    nk = triton.cdiv(sk, block_n)
    variance = q_lse_var is not None
    logits = torch.empty((b, h, nq, nk), dtype=torch.float32, device=k.device)
    block_q = block_q or (128 if nq >= 256 else 64)
    per_program = per_program or (1 if nk <= 64 else (4 if nk <= 256 else 16))
    num_stages = num_stages or 1
    launch(_lse_block_logits_fwd_kernel, (triton.cdiv(nq, block_q), triton.cdiv(nk, per_program), b * h),
        q_lse_mean, q_lse_var if variance else q_lse_mean, k, logits, *k.stride(), h, nq, nk, sk,
        BLOCK_Q=block_q, BLOCK_N=block_n, D=d, BLOCKS_PER_PROGRAM=per_program, VARIANCE=variance,
        num_warps=num_warps, num_stages=num_stages,
    )
    return logits


@functools.lru_cache(maxsize=256)
def _forced_blocks_cached(ranges: Tuple[Tuple[int, int], ...], seq_len: int, block: int, device) -> torch.Tensor:
    return blocks_touching(ranges, seq_len, block, "cpu").to(device=device, dtype=torch.int8)


def forced_blocks(ranges: Sequence[Tuple[int, int]], seq_len: int, block: int, device) -> torch.Tensor:
    """int8 ``[NB]``: 1 for blocks that hold a token of the always-kept ranges (cached per geometry and device)."""
    return _forced_blocks_cached(tuple(ranges), seq_len, block, torch.device(device))


def select_blocks_fwd(
    q_means: Optional[torch.Tensor],
    k_means: Optional[torch.Tensor],
    q_sims: Optional[torch.Tensor],
    k_sims: Optional[torch.Tensor],
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
    block_logits: Optional[torch.Tensor] = None,
    drop_mass: Union[None, float, torch.Tensor] = None,
    num_warps: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kept key blocks per query block.

    Args:
        q_means, k_means: fp32 ``[B, H, NQ, D]``, ``[B, H, NK, D]`` block means (the paper's pooled scores), or None
            with ``block_logits``.
        q_sims, k_sims: fp32 ``[B, H, NQ]``, ``[B, H, NK]`` block self-similarities (used with θ).
        block_logits: fp32 ``[B, H, NQ, NK]`` finished block log-masses (`quantize.prepare_fwd` with
            ``stats="lse"``); their softmax runs over all blocks, forced ones included.
        drop_mass: δ with ``topk=None``: drop the least massive non-forced blocks while their mass (softmax over all
            blocks) stays <= δ (`selection.select_by_drop_mass`); a number, or fp32 ``[B, H]`` per-head drop masses
            (the error budget). With pooled scores and ``drop_mass`` the drop rule runs over the pooled softmax.
    Returns:
        lut: int32 ``[B, H, NQ, NK]`` (kept indices ascending, then unspecified); counts: int32 ``[B, H, NQ]``.
    """
    pooled = block_logits is None
    rows = q_means if pooled else block_logits
    b, h, nq = rows.shape[:3]
    device = rows.device
    nk = k_means.shape[2] if pooled else block_logits.shape[3]
    d = q_means.shape[3] if pooled else 0
    nk_pad = max(16, triton.next_power_of_2(nk))
    pool_in_kernel = pooled and nk_pad <= POOL_IN_KERNEL_UP_TO and d % 32 == 0
    lut = torch.empty((b, h, nq, nk), dtype=torch.int32, device=device)
    counts = torch.empty((b, h, nq), dtype=torch.int32, device=device)
    dummy = counts
    if pool_in_kernel:
        q_means, k_means = q_means.contiguous(), k_means.contiguous()
        logits = dummy
    else:
        logits = torch.matmul(q_means, k_means.transpose(-1, -2)) if pooled else block_logits
    mode = MODE_TOPK if topk is not None else (MODE_DROP_MASS if drop_mass is not None else MODE_CDF)
    per_head = isinstance(drop_mass, torch.Tensor)
    topk_count = min(nk, max(1, int(topk * nk + 0.5))) if topk is not None else 0
    if mode == MODE_DROP_MASS:
        threshold = 0.0 if per_head else float(drop_mass)
    else:
        threshold = 1.0 if cdf_threshold is None else float(cdf_threshold)
    drop = drop_mass.float().reshape(b * h).contiguous() if per_head else dummy
    use_sim = sim_threshold is not None and pooled
    launch(_select_blocks_fwd_kernel, (nq, b * h),
        logits, q_means if pool_in_kernel else dummy, k_means if pool_in_kernel else dummy,
        q_sims if use_sim else dummy, k_sims if use_sim else dummy,
        forced_blocks(keep_ranges, seq_len_q, block_m, device),
        forced_blocks(keep_ranges, seq_len_k, block_n, device),
        lut, counts, drop, nq, nk, seq_len_k, scale,
        -2.0 if sim_threshold is None else float(sim_threshold), topk_count, float(threshold),
        BLOCK_N=block_n, NK_PAD=nk_pad, MODE=mode, USE_SIM=use_sim, POOLED=pooled, POOL_IN_KERNEL=pool_in_kernel, D=d,
        PER_HEAD_DROP=per_head,
        num_warps=num_warps or (1 if nk_pad <= 512 else (4 if nk_pad <= 1024 else 8)),
    )
    return lut, counts


@functools.lru_cache(maxsize=64)
def _sample_rows_cached(seq_len_q: int, block_m: int, rows: int, device) -> torch.Tensor:
    return block_sample_rows(seq_len_q, block_m, rows).to(device=device, dtype=torch.int32)


def sampled_rows_block_probs_fwd(q: torch.Tensor, k: torch.Tensor, *, block_m: int, block_n: int, scale: float,
                                 rows: int = MIXED_ROWS, out: Optional[torch.Tensor] = None,
                                 max_bytes: int = MAX_SAMPLED_BYTES, block_r: Optional[int] = None,
                                 num_warps: Optional[int] = None, num_stages: Optional[int] = None) -> torch.Tensor:
    """`naive.naive_sampled_rows_block_probs` on the GPU: fp32 ``[B, H, NQ, NK]``, rows summing to 1.

    The budget's row-partials kernel (`budget.kernel.budget_partials_fwd` without P·V) gives each sampled row's
    per-key-block maxima ``m`` and sums ``z``; the row's block masses are ``softmax_j(m_j + log z_j)``, averaged
    over the ``rows`` rows of each query block. Heads are processed in chunks whose partials stay below
    ``max_bytes``. ``out`` (fp32 ``[B, H, NQ, NK]``) receives the result when given. ``block_r``, ``num_warps``,
    ``num_stages``: launch settings (None: `SAMPLED_LAUNCH` for the head dim).
    """
    b, h, sq, d = q.shape
    nq, nk = num_blocks(sq, block_m), num_blocks(k.shape[2], block_n)
    default_r, default_warps, default_stages = SAMPLED_LAUNCH[64 if d <= 64 else 128]
    index = _sample_rows_cached(sq, block_m, rows, q.device)
    r = index.numel()
    probs = torch.empty((b, h, nq, nk), dtype=torch.float32, device=q.device) if out is None else out
    flat = probs.view(b * h, nq, nk)
    chunk = max(1, min(b * h, max_bytes // (r * nk * 8)))
    for g0 in range(0, b * h, chunk):
        count = min(chunk, b * h - g0)
        m, z, _ = budget_partials_fwd(q, k, k, index, scale=scale, block_n=block_n, bh_start=g0, bh_count=count,
                                      values=False, block_r=block_r or default_r,
                                      num_warps=num_warps or default_warps,
                                      num_stages=num_stages or default_stages)
        masses = torch.softmax(m.add_(z.log_()), dim=-1)  # [G, NQ*rows, NK]
        torch.mean(masses.view(count, nq, rows, nk), dim=2, out=flat[g0:g0 + count])
    return probs


def mixed_block_logits_fwd(block_logits: torch.Tensor, q: torch.Tensor, k: torch.Tensor, *, block_m: int,
                           block_n: int, scale: float, rows: int = MIXED_ROWS,
                           weight: float = MIXED_WEIGHT) -> torch.Tensor:
    """Block log-masses of the ``"mixed"`` predictor from the lse ones: fp32 ``[B, H, NQ, NK]``,
    ``log(weight · softmax(block_logits) + (1 − weight) · sampled)`` (`naive.naive_mixed_block_probs`), which the
    selection kernel takes as it takes the lse logits (its softmax gives back the mixed masses)."""
    sampled = sampled_rows_block_probs_fwd(q, k, block_m=block_m, block_n=block_n, scale=scale, rows=rows)
    mixed = torch.softmax(block_logits, dim=-1).mul_(weight).add_(sampled, alpha=1.0 - weight)
    return mixed.log_()
