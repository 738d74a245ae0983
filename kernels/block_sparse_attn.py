"""Stage 2: block-sparse attention forward over a list of kept key blocks per query block.

Each program owns one query block and walks only its kept key blocks (``lut[i, :count[i]]``, ascending), so the
work is proportional to the kept blocks, with no branch per skipped block. Scores are INT8 Q·Kᵀ with one scalar
dequantization factor per tile (per-block scales, SageAttention arXiv 2410.02367); the online softmax runs in base 2
(FlashAttention-2, arXiv 2307.08691); P·V runs in FP8 e4m3 with P scaled by 448 and a per-channel V scale
(SageAttention2, arXiv 2411.10958), in FP16, or in the input dtype. With λ, a tile whose row maxima all lie more than
-λ below the running maxima is skipped (SpargeAttn, arXiv 2502.18137, Sec. 3.4). Ground truth:
`reference.naive_block_sparse_attention`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
PV_FP8, PV_FP16, PV_NATIVE = 0, 1, 2


@triton.jit
def _tile_scores(q, k_ptrs, kv_mask, tile_scale, col_bias, QK_INT8: tl.constexpr, MASK_KV: tl.constexpr):
    # q: [BLOCK_M, D]; k tile: [D, BLOCK_N]; col_bias: [BLOCK_N] (0, or -inf past the sequence end)
    if MASK_KV:
        k = tl.load(k_ptrs, mask=kv_mask[None, :], other=0.0)
    else:
        k = tl.load(k_ptrs)
    if QK_INT8:
        return tl.dot(q, k).to(tl.float32) * tile_scale + col_bias[None, :]  # [BLOCK_M, BLOCK_N], log2 units
    return tl.dot(q, k) * tile_scale + col_bias[None, :]


@triton.jit
def _softmax_pv(s, v_ptrs, kv_mask, m_i, l_i, acc, PV_MODE: tl.constexpr, MASK_KV: tl.constexpr):
    # s: [BLOCK_M, BLOCK_N]; v tile: [BLOCK_N, D]; m_i, l_i: [BLOCK_M]; acc: [BLOCK_M, D]
    # In FP8 mode P is produced already scaled by 448 (log2 448 added to the exponent), so l_i and acc carry the same
    # factor and the division at the end cancels it.
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if PV_MODE == 0:
        p = tl.math.exp2(s - (m_new - 8.807354922057604)[:, None])
    else:
        p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if MASK_KV:
        v = tl.load(v_ptrs, mask=kv_mask[:, None], other=0.0)
    else:
        v = tl.load(v_ptrs)
    if PV_MODE == 0:
        acc = tl.dot(p.to(tl.float8e4nv), v, acc)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return m_new, l_i, acc


@triton.jit
def _block_sparse_attn_fwd_kernel(
    Q, K, V, Q_SCALE, K_SCALE, V_SCALE, LUT, COUNT, OUT,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    H, SQ, SK, NQ, NK, qk_scale, pv_threshold,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    QK_INT8: tl.constexpr, PV_MODE: tl.constexpr, MASK_KV: tl.constexpr, USE_PV_THRESHOLD: tl.constexpr,
):
    # q: [B, H, SQ, D]; k, v: [B, H, SK, D] as (s, d) element strides (V may be stored [B, H, D, S_pad]);
    # q_scale: [B, H, NQ]; k_scale: [B, H, NK] (INT8 scales, softmax scale · log2 e folded into q_scale);
    # v_scale: [B, H, D]; lut: [B, H, NQ, NK] int32; count: [B, H, NQ] int32; out: [B, H, SQ, D]
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    row_valid = offs_m < SQ
    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    if MASK_KV:
        q = tl.load(q_ptrs, mask=row_valid[:, None], other=0.0)
    else:
        q = tl.load(q_ptrs)  # [BLOCK_M, D], zero padded to whole blocks
    k_base = K + off_b * stride_kb + off_h * stride_kh + offs_d[:, None] * stride_kd
    v_base = V + off_b * stride_vb + off_h * stride_vh + offs_d[None, :] * stride_vd
    row = pid_bh * NQ + pid_m
    count = tl.load(COUNT + row)
    lut_row = LUT + row * NK
    if QK_INT8:
        q_scale = tl.load(Q_SCALE + row)
    else:
        q_scale = qk_scale

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for it in range(0, count):
        kb = tl.load(lut_row + it)
        cols = kb * BLOCK_N + offs_n
        kv_mask = cols < SK
        col_bias = tl.where(kv_mask, 0.0, float("-inf"))
        if QK_INT8:
            tile_scale = q_scale * tl.load(K_SCALE + pid_bh * NK + kb)
        else:
            tile_scale = q_scale
        k_ptrs = k_base + cols[None, :] * stride_ks
        v_ptrs = v_base + cols[:, None] * stride_vs
        s = _tile_scores(q, k_ptrs, kv_mask, tile_scale, col_bias, QK_INT8, MASK_KV)
        if USE_PV_THRESHOLD:
            gap = tl.where(row_valid, tl.max(s, 1) - m_i, float("-inf"))
            if tl.max(gap, 0) >= pv_threshold:
                m_i, l_i, acc = _softmax_pv(s, v_ptrs, kv_mask, m_i, l_i, acc, PV_MODE, MASK_KV)
        else:
            m_i, l_i, acc = _softmax_pv(s, v_ptrs, kv_mask, m_i, l_i, acc, PV_MODE, MASK_KV)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    if PV_MODE == 0:
        out = out * tl.load(V_SCALE + pid_bh * D + offs_d)[None, :]
    o_ptrs = OUT + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_valid[:, None])


def block_sparse_attn_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lut: torch.Tensor,
    counts: torch.Tensor,
    out: torch.Tensor,
    *,
    seq_len_q: int,
    seq_len_k: int,
    block_m: int,
    block_n: int,
    pv_mode: int,
    q_scale: Optional[torch.Tensor] = None,
    k_scale: Optional[torch.Tensor] = None,
    v_scale: Optional[torch.Tensor] = None,
    softmax_scale: float = 1.0,
    pv_threshold: Optional[float] = None,
    v_transposed: bool = False,
    num_warps: Optional[int] = None,
    num_stages: Optional[int] = None,
) -> torch.Tensor:
    """Launch the block-sparse kernel; writes and returns ``out [B, H, Sq, D]``.

    Args:
        q, k: INT8 ``[B, H, S_pad, D]`` (zero padded to whole blocks) with ``q_scale [B, H, NQ]`` (softmax scale ·
            log2 e folded in) and ``k_scale [B, H, NK]``; or, with both scales None, tensors in the input dtype
            with any strides and exact lengths.
        v: FP8 ``[B, H, D, S_pad]`` (``v_transposed``) with ``v_scale [B, H, D]`` for ``pv_mode=PV_FP8``; otherwise
            ``[B, H, S, D]`` in fp16 or the input dtype.
        lut, counts: kept key blocks per query block (`BlockMap.to_lut` / `predict.select_blocks_fwd`).
        pv_threshold: λ in natural-log units (≤ 0) or None.
    """
    b, h, _, d = q.shape
    nq, nk = lut.shape[2], lut.shape[3]
    qk_int8 = q_scale is not None
    v_strides = (v.stride(0), v.stride(1), v.stride(3), v.stride(2)) if v_transposed else v.stride()
    num_warps = num_warps or 4
    num_stages = num_stages or 3
    dummy = lut
    _block_sparse_attn_fwd_kernel[(nq, b * h)](
        q, k, v,
        q_scale if qk_int8 else dummy, k_scale if qk_int8 else dummy, v_scale if v_scale is not None else dummy,
        lut, counts, out,
        *q.stride(), *k.stride(), *v_strides, *out.stride(),
        h, seq_len_q, seq_len_k, nq, nk, softmax_scale * LOG2E,
        (pv_threshold if pv_threshold is not None else -math.inf) * LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, D=d, QK_INT8=qk_int8, PV_MODE=pv_mode,
        MASK_KV=not qk_int8, USE_PV_THRESHOLD=pv_threshold is not None,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
