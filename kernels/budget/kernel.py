"""The error budget's sampled-row measurement in four Triton launches (ground truth: `naive`).

`naive.naive_budget_drop_mass` spends its time on fp32 temporaries (``[G, R, Sk]`` scores, ``[G, R, NK, D]``
block sums, their gathers and cumulative sums) in a chunk loop of about twenty launches per chunk, while the
arithmetic is a ``rows / Sq`` share of dense attention. Here the same measurement (`naive` module docstring,
steps 1-4) is:

1. `budget_partials_fwd`, one program per (batch·head, tile of ``BLOCK_R`` sampled rows): the flash-attention inner
   loop (FlashAttention-2, arXiv 2307.08691) without its running rescale: for each key block ``j`` the scores
   ``s = q Kⱼᵀ · scale`` (tensor cores, input dtype, fp32 accumulation), the block max ``mⱼ``,
   ``zⱼ = Σ exp(s − mⱼ)`` and ``uⱼ = exp(s − mⱼ) Vⱼ``. K and V are read once per row tile; nothing of size ``Sk``
   is written.
2. `budget_buckets_fwd`, one program per sampled row: each key block's place in the drop order (the stable
   ascending order of the predicted masses of the row's query block, forced blocks last, the most massive block
   never dropped) and the mass dropped up to and including it give its *bucket*: how many drop masses of the
   ladder drop it (candidate ``c`` keeps the blocks of buckets ``0..c``).
3. `budget_drop_errors_fwd`, one program per sampled row: the block sums, rescaled to the row max
   (``exp(mⱼ − M)``), summed per bucket with one one-hot matmul per tile of blocks; a prefix sum over buckets gives
   the kept sums of every candidate, and the error of candidate ``c`` on the row is
   ``Σ_d |kept_u_c / kept_z_c − u / z|`` (`naive.drop_errors` before its sum over rows).
4. `budget_choose_fwd`, one program per (batch·head): the relative L1 over the sampled rows of each candidate and the
   largest drop mass whose error, and that of every smaller one, stays within the target (`naive.choose_drop_mass`).

The drop sets are the naive ones (same order, same ties; the dropped mass is summed in another order, so a cut
that falls within rounding of a ladder entry may move by one block); the sums differ from the naive ones only in
rounding (input-dtype matmuls, as the naive ``low_precision`` path, tf32 per-bucket sums, another summation order).

Layout: ``q: [B, H, Sq, D]``, ``k, v: [B, H, Sk, D]`` (any strides); ``probs: [B·H, NQ, NK]``; partials
``m, z: [G, R, NK]`` fp32, ``u: [G, R, NK, D]`` (G = the batch·heads of a chunk).
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .._launch import launch
from ..geometry import num_blocks
from .naive import DROP_MASS_LADDER, GUARD_MARGIN, GUARD_ROWS, KEEP_ALL, sample_rows

__all__ = ["budget_buckets_fwd", "budget_choose_fwd", "budget_drop_errors_fwd", "budget_drop_mass_fwd",
           "budget_partials_fwd", "ladder_tensor", "per_head_mask", "sampled_rows"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Sampled rows per program of the partials kernel (the smallest tile of a tensor-core dot): 96 rows are 6 programs
# per (batch, head), so a 48-head call fills an H200's 132 SMs about twice.
BLOCK_R = 16
# Key blocks per step of the bucket and error kernels (the inner size of the one-hot matmul).
BLOCK_J = 32
# Key blocks compared at once when the bucket kernel places a block in the drop order.
BLOCK_I = 128
# Precision of the per-bucket sums (a one-hot fp32 matmul): "tf32" rounds the weights and block sums to 10 mantissa
# bits (relative 2^-11), below the rounding the block sums already carry from the bf16 P·V (2^-9); sm90 compile:
# 128 registers at head dim 128, against 220 for "tf32x3" (fp32-exact) and FMA-bound "ieee".
SUM_PRECISION = "tf32"
# Partial sums of one launch of the first two kernels stay below this many bytes (heads are chunked beyond it).
MAX_PARTIALS_BYTES = 1 << 30


@triton.jit
def _budget_partials_fwd_kernel(
    Q, K, V, ROWS, M, Z, U,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    H, R, NK, SK, D, bh_start, qk_scale,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, WITH_VALUES: tl.constexpr,
):
    # q: [B, H, SQ, D], k, v: [B, H, SK, D] (any strides); rows: int32 [R] sampled query rows;
    # m, z: fp32 [G, R, NK] (m in natural-log units); u: [G, R, NK, D] fp32 or bf16 (not written without
    # WITH_VALUES); qk_scale = scale · log2 e.
    pid_r = tl.program_id(0)
    pid_g = tl.program_id(1)
    bh = bh_start + pid_g
    off_b = bh // H
    off_h = bh % H
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_valid = offs_r < R
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < D
    offs_n = tl.arange(0, BLOCK_N)
    rows = tl.load(ROWS + offs_r, mask=r_valid, other=0)
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :] * stride_qd,
                mask=r_valid[:, None] & d_valid[None, :], other=0.0)  # [BLOCK_R, BLOCK_D]
    k_base = K + off_b * stride_kb + off_h * stride_kh + offs_d[:, None] * stride_kd
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_d[None, :] * stride_vd
    out_rows = pid_g * R + offs_r  # [BLOCK_R]
    for kb in range(0, NK):
        cols = kb * BLOCK_N + offs_n
        c_valid = cols < SK
        k = tl.load(k_base + cols[None, :] * stride_ks, mask=d_valid[:, None] & c_valid[None, :],
                    other=0.0)  # [BLOCK_D, BLOCK_N]
        s = tl.dot(q, k) * qk_scale  # [BLOCK_R, BLOCK_N] fp32, log2 units
        s = tl.where(c_valid[None, :], s, float("-inf"))
        m = tl.max(s, 1)  # [BLOCK_R]
        p = tl.math.exp2(s - m[:, None])  # [BLOCK_R, BLOCK_N]
        z = tl.sum(p, 1)
        tl.store(M + out_rows * NK + kb, m * 0.6931471805599453, mask=r_valid)
        tl.store(Z + out_rows * NK + kb, z, mask=r_valid)
        if WITH_VALUES:
            v = tl.load(v_base + cols[:, None] * stride_vs, mask=c_valid[:, None] & d_valid[None, :],
                        other=0.0)  # [BLOCK_N, BLOCK_D]
            u = tl.dot(p.to(v.dtype), v)  # [BLOCK_R, BLOCK_D] fp32
            tl.store(U + (out_rows[:, None] * NK + kb) * D + offs_d[None, :], u.to(U.dtype.element_ty),
                     mask=r_valid[:, None] & d_valid[None, :])


@triton.jit
def _drop_order_key(p_base, forced_base, idx, valid, stride_pk):
    # The value the drop order sorts by: the predicted mass, +inf for forced blocks (never dropped). [len(idx)]
    p = tl.load(p_base + idx * stride_pk, mask=valid, other=0.0).to(tl.float32)
    forced = tl.load(forced_base + idx, mask=valid, other=0) != 0
    return tl.where(forced, float("inf"), tl.where(p > 0, p, 0.0))


@triton.jit
def _budget_buckets_fwd_kernel(
    PROBS, ROW_BLOCK, FORCED_ROWS, FORCED_COLS, LADDER, BUCKET,
    stride_pg, stride_pq, stride_pk, stride_frg, stride_fcg,
    R, NK, bh_start,
    C: tl.constexpr, C_PAD: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_I: tl.constexpr,
):
    # probs: [B·H, NQ, NK]; row_block: int32 [R] (query block of each sampled row); forced_rows: int8 [B·H or 1, NQ];
    # forced_cols: int8 [B·H or 1, NK] (last dim contiguous); ladder: fp32 [C] drop masses, largest first;
    # bucket: int8 [G, R, NK]: how many ladder entries drop each key block.
    # A block's place in the stable ascending order of (mass, index) is found by comparing it with every block
    # (NK² compares per row, no sort: a few µs of a GPU, and fast under the interpreter).
    pid_r = tl.program_id(0)
    pid_g = tl.program_id(1)
    bh = bh_start + pid_g
    q_block = tl.load(ROW_BLOCK + pid_r)
    p_base = PROBS + bh * stride_pg + q_block * stride_pq
    forced_base = FORCED_COLS + bh * stride_fcg
    forced_row = tl.load(FORCED_ROWS + bh * stride_frg + q_block) != 0
    offs_c = tl.arange(0, C_PAD)
    ladder = tl.load(LADDER + offs_c, mask=offs_c < C, other=float("-inf"))  # [C_PAD]; padding drops nothing
    offs_j = tl.arange(0, BLOCK_J)
    offs_i = tl.arange(0, BLOCK_I)
    for j0 in range(0, NK, BLOCK_J):
        j = j0 + offs_j  # [BLOCK_J]
        j_valid = j < NK
        key_j = _drop_order_key(p_base, forced_base, j, j_valid, stride_pk)
        # mass dropped up to and including block j, and how many blocks that is
        cum = tl.zeros([BLOCK_J], dtype=tl.float32)
        upto = tl.zeros([BLOCK_J], dtype=tl.int32)
        for i0 in range(0, NK, BLOCK_I):
            i = i0 + offs_i  # [BLOCK_I]
            i_valid = i < NK
            key_i = _drop_order_key(p_base, forced_base, i, i_valid, stride_pk)
            before = (key_i[None, :] < key_j[:, None]) | ((key_i[None, :] == key_j[:, None]) &
                                                          (i[None, :] <= j[:, None]))
            before = before & i_valid[None, :]  # [BLOCK_J, BLOCK_I]
            cum += tl.sum(tl.where(before, key_i[None, :], 0.0), 1)
            upto += tl.sum(before.to(tl.int32), 1)
        bucket = tl.sum((cum[:, None] <= ladder[None, :]).to(tl.int32), 1)  # [BLOCK_J] ladder entries dropping j
        bucket = tl.where((upto >= NK) | forced_row, 0, bucket)  # the last in the order always stays
        tl.store(BUCKET + (pid_g * R + pid_r) * NK + j, bucket.to(tl.int8), mask=j_valid)


@triton.jit
def _budget_drop_errors_fwd_kernel(
    M, Z, U, BUCKET, ERR, REF_NORM, R, NK, D, bh_start,
    C: tl.constexpr, C_PAD: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    # m, z: fp32 [G, R, NK]; u: [G, R, NK, D]; bucket: int8 [G, R, NK] (`_budget_buckets_fwd_kernel`);
    # err: fp32 [B·H, R, C] Σ_d |out_c − ref|; ref_norm: fp32 [B·H, R] Σ_d |ref|.
    pid_r = tl.program_id(0)
    pid_g = tl.program_id(1)
    row = pid_g * R + pid_r  # partials row of this chunk
    out_row = (bh_start + pid_g) * R + pid_r
    offs_c = tl.arange(0, C_PAD)
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < D
    row_max = tl.full([BLOCK_J], float("-inf"), tl.float32)
    for j0 in range(0, NK, BLOCK_J):
        row_max = tl.maximum(row_max, tl.load(M + row * NK + j0 + offs_j, mask=j0 + offs_j < NK,
                                              other=float("-inf")))
    big_m = tl.max(row_max, 0)
    acc_u = tl.zeros([C_PAD, BLOCK_D], dtype=tl.float32)  # block sums per bucket
    acc_z = tl.zeros([C_PAD], dtype=tl.float32)
    for j0 in range(0, NK, BLOCK_J):
        j = j0 + offs_j  # [BLOCK_J]
        j_valid = j < NK
        bucket = tl.load(BUCKET + row * NK + j, mask=j_valid, other=C_PAD).to(tl.int32)  # padding: no bucket
        w = tl.exp(tl.load(M + row * NK + j, mask=j_valid, other=float("-inf")) - big_m)  # [BLOCK_J]
        z = tl.load(Z + row * NK + j, mask=j_valid, other=0.0) * w
        u = tl.load(U + (row * NK + j)[:, None] * D + offs_d[None, :], mask=j_valid[:, None] & d_valid[None, :],
                    other=0.0).to(tl.float32)  # [BLOCK_J, BLOCK_D]
        onehot = offs_c[:, None] == bucket[None, :]  # [C_PAD, BLOCK_J]
        acc_u += tl.dot(tl.where(onehot, w[None, :], 0.0), u, input_precision=PRECISION)
        acc_z += tl.sum(tl.where(onehot, z[None, :], 0.0), 1)
    # candidate c keeps the blocks of buckets 0..c
    kept_u = tl.cumsum(acc_u, 0)  # [C_PAD, BLOCK_D]
    kept_z = tl.cumsum(acc_z, 0)  # [C_PAD]
    ref = tl.sum(acc_u, 0) / tl.maximum(tl.sum(acc_z, 0), 1e-30)  # [BLOCK_D]
    out = kept_u / tl.maximum(kept_z, 1e-30)[:, None]
    err = tl.sum(tl.where(d_valid[None, :], tl.abs(out - ref[None, :]), 0.0), 1)  # [C_PAD]
    tl.store(ERR + out_row * C + offs_c, err, mask=offs_c < C)
    tl.store(REF_NORM + out_row, tl.sum(tl.where(d_valid, tl.abs(ref), 0.0), 0))


@triton.jit
def _budget_choose_fwd_kernel(
    ERR, REF_NORM, LADDER, ERRORS, DROP, R, target, keep_all,
    C: tl.constexpr, C_PAD: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # err: fp32 [B·H, R, C]; ref_norm: fp32 [B·H, R]; ladder: fp32 [C] (largest first);
    # errors: fp32 [B·H, C] relative L1 over the sampled rows; drop: fp32 [B·H].
    g = tl.program_id(0)
    offs_c = tl.arange(0, C_PAD)
    c_valid = offs_c < C
    offs_r = tl.arange(0, BLOCK_R)
    err = tl.zeros([C_PAD], dtype=tl.float32)
    norm = tl.zeros([BLOCK_R], dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + offs_r
        r_valid = r < R
        err += tl.sum(tl.load(ERR + (g * R + r)[:, None] * C + offs_c[None, :],
                              mask=r_valid[:, None] & c_valid[None, :], other=0.0), 0)
        norm += tl.load(REF_NORM + g * R + r, mask=r_valid, other=0.0)
    errors = err / tl.maximum(tl.sum(norm, 0), 1e-30)
    tl.store(ERRORS + g * C + offs_c, errors, mask=c_valid)
    # the largest δ whose error and that of every smaller δ is within the target: just after the last failure
    ok = errors <= target  # NaN is not ok
    first = tl.max(tl.where(c_valid, tl.where(ok, 0, offs_c + 1), 0), 0)
    ladder = tl.load(LADDER + offs_c, mask=c_valid, other=0.0)
    delta = tl.sum(tl.where(offs_c == first, ladder, 0.0), 0)
    tl.store(DROP + g, tl.where(first < C, delta, keep_all))


@functools.lru_cache(maxsize=64)
def sampled_rows(seq_len_q: int, block_m: int, rows: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """`naive.sample_rows` and their query blocks as int32 ``[R]`` on ``device`` (cached per geometry)."""
    index = sample_rows(seq_len_q, block_m, rows)
    block = torch.div(index, block_m, rounding_mode="floor")
    return index.to(device=device, dtype=torch.int32), block.to(device=device, dtype=torch.int32)


@functools.lru_cache(maxsize=16)
def ladder_tensor(device) -> torch.Tensor:
    """`DROP_MASS_LADDER` as an fp32 tensor on ``device`` (cached): the rungs the bucket and choice stages take."""
    return torch.tensor(DROP_MASS_LADDER, dtype=torch.float32, device=device)


def _pow2(x: int) -> int:
    return max(16, triton.next_power_of_2(x))


def budget_partials_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, *, scale: float,
                        block_n: int, partials_dtype: torch.dtype = torch.float32, bh_start: int = 0,
                        bh_count: Optional[int] = None, block_r: int = BLOCK_R, num_warps: int = 4,
                        num_stages: Optional[int] = None, values: bool = True,
                        ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Per-key-block softmax partials of the sampled rows, each block shifted by its own max.

    Args:
        q: ``[B, H, Sq, D]``; k, v: ``[B, H, Sk, D]`` (any strides, one float dtype); rows: int32 ``[R]``.
        bh_start, bh_count: the batch·heads of this launch (all by default).
        values: False computes ``m`` and ``z`` only (no P·V; ``v`` is not read and ``u`` is None): the block
            masses of the rows, as the ``"mixed"`` predictor needs them (`predict.kernel.sampled_rows_block_probs_fwd`).
        block_r, num_warps, num_stages: launch settings (sampled rows per program, a power of two >= 16; None
            stages: two while a K and a V tile take at most 128 KiB, else one. Compiled for sm90, bf16 at head dim
            128 takes 143 KiB of shared memory with three stages (one program per SM), about half with two).
    Returns:
        ``m [G, R, NK]`` fp32 block maxima of ``s = q·kᵀ·scale``; ``z [G, R, NK]`` fp32 ``Σ exp(s − m)``;
        ``u [G, R, NK, D]`` in ``partials_dtype``, ``Σ exp(s − m) v``. With ``M`` the row max,
        ``z · exp(m − M)`` and ``u · exp(m − M)`` are `naive.naive_row_partials`.
    """
    b, h, _, d = q.shape
    sk = k.shape[2]
    nk = num_blocks(sk, block_n)
    r = rows.numel()
    g = b * h - bh_start if bh_count is None else bh_count
    m = torch.empty((g, r, nk), dtype=torch.float32, device=q.device)
    z = torch.empty_like(m)
    u = torch.empty((g, r, nk, d), dtype=partials_dtype, device=q.device) if values else None
    block_d = _pow2(d)
    if num_stages is None:
        tiles = 2 if values else 1
        num_stages = 2 if tiles * block_n * block_d * q.element_size() <= (128 << 10) else 1
    launch(_budget_partials_fwd_kernel, (triton.cdiv(r, block_r), g),
        q, k, v, rows, m, z, m if u is None else u, *q.stride(), *k.stride(), *v.stride(), h, r, nk, sk, d,
        bh_start, scale * LOG2E,
        BLOCK_R=block_r, BLOCK_N=block_n, BLOCK_D=block_d, WITH_VALUES=values, num_warps=num_warps,
        num_stages=num_stages,
    )
    return m, z, u


def per_head_mask(mask: torch.Tensor, groups: int, length: int) -> torch.Tensor:
    """The forced-block mask as the bucket stage reads it (a stage input, like `ladder_tensor`):
    int8 ``[groups or 1, length]`` (last dim contiguous) from a bool ``[length]`` or ``[..., length]`` mask."""
    flat = mask.reshape(-1, length)
    if flat.shape[0] not in (1, groups):
        raise ValueError(f"forced blocks must have shape [{length}] or [B, H, {length}], got {tuple(mask.shape)}")
    flat = flat.view(torch.int8) if flat.dtype == torch.bool else flat.to(torch.int8)  # a bool view: no copy
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def budget_buckets_fwd(probs: torch.Tensor, row_block: torch.Tensor, forced_rows: torch.Tensor,
                       forced_cols: torch.Tensor, ladder: torch.Tensor, *, bh_start: int = 0,
                       bh_count: Optional[int] = None) -> torch.Tensor:
    """int8 ``[G, R, NK]``: for each sampled row and key block, how many drop masses of ``ladder`` drop the block
    (module docstring, step 2; the order and ties of `naive.drop_errors`).

    Args:
        probs: ``[B·H, NQ, NK]`` predicted block masses; row_block: int32 ``[R]``;
        forced_rows: int8 ``[B·H or 1, NQ]``, forced_cols: int8 ``[B·H or 1, NK]`` (`per_head_mask`).
        bh_start, bh_count: the batch·heads of this launch (all by default).
    """
    groups, _, nk = probs.shape
    g = groups - bh_start if bh_count is None else bh_count
    r = row_block.numel()
    c = ladder.numel()
    bucket = torch.empty((g, r, nk), dtype=torch.int8, device=probs.device)
    launch(_budget_buckets_fwd_kernel, (r, g),
        probs, row_block, forced_rows, forced_cols, ladder, bucket, *probs.stride(),
        forced_rows.stride(0) if forced_rows.shape[0] > 1 else 0,
        forced_cols.stride(0) if forced_cols.shape[0] > 1 else 0, r, nk, bh_start,
        C=c, C_PAD=_pow2(c + 1), BLOCK_J=BLOCK_J, BLOCK_I=BLOCK_I, num_warps=4,
    )
    return bucket


def budget_drop_errors_fwd(m: torch.Tensor, z: torch.Tensor, u: torch.Tensor, bucket: torch.Tensor, num_ladder: int,
                           err: torch.Tensor, ref_norm: torch.Tensor, *, bh_start: int = 0,
                           sum_precision: str = SUM_PRECISION, num_warps: int = 4) -> None:
    """Per sampled row, ``Σ_d |out_c − ref|`` of each of the ``num_ladder`` drop masses into ``err [B·H, R, C]``
    and ``Σ_d |ref|`` into ``ref_norm [B·H, R]`` (rows ``bh_start ..`` of both; module docstring, step 2).

    Args:
        m, z, u: `budget_partials_fwd`; bucket: `budget_buckets_fwd` (both for ``G`` batch·heads from ``bh_start``).
        sum_precision: ``input_precision`` of the one-hot matmul that sums the block sums per bucket (`SUM_PRECISION`).
    """
    g, r, nk = m.shape
    launch(_budget_drop_errors_fwd_kernel, (r, g),
        m, z, u, bucket, err, ref_norm, r, nk, u.shape[-1], bh_start,
        C=num_ladder, C_PAD=_pow2(num_ladder + 1), BLOCK_J=BLOCK_J, BLOCK_D=_pow2(u.shape[-1]),
        PRECISION=sum_precision, num_warps=num_warps,
    )


def budget_choose_fwd(err: torch.Tensor, ref_norm: torch.Tensor, ladder: torch.Tensor, target: float,
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Relative L1 per candidate over the sampled rows (fp32 ``[B·H, C]``) and the chosen drop masses (fp32
    ``[B·H]``, `naive.choose_drop_mass`) from `budget_drop_errors_fwd`'s ``err [B·H, R, C]``, ``ref_norm``."""
    g, r, c = err.shape
    errors = torch.empty((g, c), dtype=torch.float32, device=err.device)
    drop = torch.empty((g,), dtype=torch.float32, device=err.device)
    launch(_budget_choose_fwd_kernel, (g,), err, ref_norm, ladder, errors, drop, r, float(target), KEEP_ALL,
                                    C=c, C_PAD=_pow2(c + 1), BLOCK_R=min(64, _pow2(r)), num_warps=1)
    return errors, drop


@torch.no_grad()
def budget_drop_mass_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probs: torch.Tensor, *,
                         target_error: float, block_m: int, block_n: int, scale: float, forced_rows: torch.Tensor,
                         forced_cols: torch.Tensor, rows: int = GUARD_ROWS, margin: float = GUARD_MARGIN,
                         partials_dtype: torch.dtype = torch.float32, max_partials_bytes: int = MAX_PARTIALS_BYTES,
                         block_r: int = BLOCK_R, num_stages: Optional[int] = None,
                         sum_precision: str = SUM_PRECISION, return_errors: bool = False):
    """`naive.naive_budget_drop_mass` in four Triton launches (per chunk of heads for the first three).

    Args: as `naive.naive_budget_drop_mass`; ``block_n`` a power of two in [16, 256], head dim <= 256.
        partials_dtype: storage of the per-block sums ``u`` (fp32, or bf16 to halve their traffic).
        max_partials_bytes: heads are measured in chunks whose partials stay below this size.
        block_r, num_stages: launch settings of `budget_partials_fwd`; sum_precision: `budget_drop_errors_fwd`.
        return_errors: also return the measured relative L1 of every ladder entry, fp32 ``[B, H, C]``.
    Returns:
        fp32 ``[B, H]`` drop masses (`naive.KEEP_ALL` where no δ meets the budget).
    """
    b, h, sq, d = q.shape
    nq, nk = probs.shape[-2:]
    if nk != num_blocks(k.shape[2], block_n) or nq != num_blocks(sq, block_m):
        raise ValueError(f"probs must be [B, H, {num_blocks(sq, block_m)}, {num_blocks(k.shape[2], block_n)}], "
                         f"got {tuple(probs.shape)}")
    groups = b * h
    row_index, row_block = sampled_rows(sq, block_m, rows, q.device)
    r = row_index.numel()
    probs = probs.reshape(groups, nq, nk)
    forced_rows = per_head_mask(forced_rows, groups, nq)
    forced_cols = per_head_mask(forced_cols, groups, nk)
    ladder = ladder_tensor(q.device)
    err = torch.empty((groups, r, ladder.numel()), dtype=torch.float32, device=q.device)
    ref_norm = torch.empty((groups, r), dtype=torch.float32, device=q.device)
    per_head = r * nk * (d * torch.finfo(partials_dtype).bits // 8 + 8)
    chunk = max(1, min(groups, max_partials_bytes // per_head))
    for g0 in range(0, groups, chunk):
        count = min(chunk, groups - g0)
        m, z, u = budget_partials_fwd(q, k, v, row_index, scale=scale, block_n=block_n,
                                      partials_dtype=partials_dtype, bh_start=g0, bh_count=count, block_r=block_r,
                                      num_stages=num_stages)
        bucket = budget_buckets_fwd(probs, row_block, forced_rows, forced_cols, ladder, bh_start=g0,
                                    bh_count=count)
        budget_drop_errors_fwd(m, z, u, bucket, ladder.numel(), err, ref_norm, bh_start=g0,
                               sum_precision=sum_precision)
    errors, drop = budget_choose_fwd(err, ref_norm, ladder, margin * target_error)
    if return_errors:
        return drop.view(b, h), errors.view(b, h, -1)
    return drop.view(b, h)
