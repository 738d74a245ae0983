"""Hopper (sm90) schedule of the FP8 block-sparse kernel, written in Gluon (``triton.experimental.gluon``).

Same inputs and arithmetic as the FP8 mode of `kernel._block_sparse_attn_fwd_kernel` (INT8 Q·Kᵀ with per-block
scales, base-2 online softmax, P scaled by 448 into FP8 e4m3, FP8 P·V with a per-channel V scale; 128 × 128
blocks), scheduled by hand instead of by Triton's pipeliner, after FlashAttention-3 (Shah et al., arXiv 2407.08608):

- Warp specialization (Sec. 3.1): one producer warp issues TMA (bulk tensor) copies of the kept blocks' K and V
  tiles into a ring of ``STAGES`` shared-memory slots, each completing on a "ready" mbarrier; two consumer
  warpgroups own 64 query rows each of one 128-row query block, and each frees a slot on an "empty" mbarrier after
  its P·V, so the two run independently and one's softmax overlaps the other's wgmma. Registers move from the
  producer to the consumers (``setmaxnreg``).
- The next tile's Q·Kᵀ wgmma is issued before this tile's softmax and waited for after this tile's P·V is issued
  (the intra-warpgroup overlap, Sec. 3.2, with the Q·Kᵀ rather than the P·V in the softmax's shadow: a P·V kept in
  flight across the loop's back edge makes ptxas serialize every wgmma, warning C7514).
- Row maxima on the int32 dots (the scale is positive), then one conversion, one FMA and one ``ex2.approx.ftz`` per
  score.

Measured on an H200 in `benchmarks/results/kernels_notes.md`. Ground truth: `naive.naive_block_sparse_attention`
(precision ``int8-fp8``); `kernel.sm90_route` decides which calls come here.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (mbarrier, tma, warpgroup_mma, warpgroup_mma_init,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .._launch import launch

BLOCK = 128  # query and key block of the block map
# Triton 3.6 names the TMA load async_copy_global_to_shared; later versions name it async_load.
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared


@gluon.jit
def _exp2(x):
    # one MUFU.EX2, denormal results flushed to zero (P below 2**-126 is 0 in e4m3 anyway); libdevice's exp2f adds
    # a range fix-up of two multiplies and a select per element
    return gl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def _tile_probs(s, tile_scale, m_i, l_i):
    # Online softmax of one score tile of int32 dots (log2 units after tile_scale > 0), P already scaled by 448. The
    # row maxima are taken on the integers (the scale is positive), so each score costs one conversion and one FMA
    # before its exponential.
    m_new = gl.maximum(m_i, gl.max(s, 1).to(gl.float32) * tile_scale)
    p = _exp2(gl.fma(s.to(gl.float32), tile_scale, gl.expand_dims(8.807354922057604 - m_new, 1)))
    alpha = _exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_i


@gluon.jit
def _ws_produce(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, lut_row, count, q_row, k_row0,
                v_row0, STAGES: gl.constexpr, BLOCK_N: gl.constexpr, HALF_M: gl.constexpr):
    # One warp: Q's two halves, then the K and V tiles of every kept block, a slot as soon as both consumers freed it.
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    _tma_load(q_desc, [q_row, 0], q_bar, q_smem.index(0))
    _tma_load(q_desc, [q_row + HALF_M, 0], q_bar, q_smem.index(1))
    for t in range(0, count):
        slot = t % STAGES
        mbarrier.wait(empty.index(slot), ((t // STAGES) & 1) ^ 1, pred=t >= STAGES)
        kb = gl.load(lut_row + t)
        bar = ready.index(slot)
        mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        _tma_load(k_desc, [k_row0 + kb * BLOCK_N, 0], bar, k_smem.index(slot))
        _tma_load(v_desc, [v_row0, kb * BLOCK_N], bar, v_smem.index(slot))


@gluon.jit
def _ws_consume(q_half, k_smem, v_smem, q_bar, ready, empty, lut_row, count, q_scale, k_scale_row, V_SCALE, OUT,
                out_base, pid_bh, row0, SQ, SK, stride_os, stride_od,
                HALF_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr):
    # One warpgroup: HALF_M query rows from row0 against every kept block, releasing each slot after its P·V.
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 32])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 32])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    m_i = gl.full([HALF_M], float("-inf"), gl.float32, layout=s_rows)
    l_i = gl.zeros([HALF_M], gl.float32, layout=s_rows)
    s_zero = gl.zeros([HALF_M, BLOCK_N], gl.int32, layout=s_layout)
    acc = warpgroup_mma_init(gl.zeros([HALF_M, D], gl.float32, layout=o_layout))

    mbarrier.wait(q_bar, 0)
    mbarrier.wait(ready.index(0), 0, pred=count > 0)
    s_tok = warpgroup_mma(q_half, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=(s_tok, ))
    for j in range(0, count - 1):
        slot = j % STAGES
        nxt = j + 1
        nslot = nxt % STAGES
        mbarrier.wait(ready.index(nslot), (nxt // STAGES) & 1)
        s_tok = warpgroup_mma(q_half, k_smem.index(nslot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        tile_scale = q_scale * gl.load(k_scale_row + gl.load(lut_row + j))
        p, alpha, m_i, l_i = _tile_probs(s, tile_scale, m_i, l_i)
        acc_r = warpgroup_mma_wait(1, deps=(acc, ))
        acc_r = acc_r * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
        p8 = gl.convert_layout(p.to(gl.float8e4nv), p_layout)
        acc = warpgroup_mma(p8, v_smem.index(slot).permute((1, 0)), acc_r, is_async=True)
        s = warpgroup_mma_wait(0, deps=(s_tok, ))
        mbarrier.arrive(empty.index(slot), count=1)
    out = warpgroup_mma_wait(0, deps=(acc, ))
    if count > 0:
        j = count - 1
        kb = gl.load(lut_row + j)
        cols = kb * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        sf = gl.where(gl.expand_dims(cols < SK, 0), s.to(gl.float32) * (q_scale * gl.load(k_scale_row + kb)),
                      float("-inf"))
        m_new = gl.maximum(m_i, gl.max(sf, 1))
        p = _exp2(sf - gl.expand_dims(m_new - 8.807354922057604, 1))
        alpha = _exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, 1)
        out = out * gl.expand_dims(gl.convert_layout(alpha, o_rows), 1)
        p8 = gl.convert_layout(p.to(gl.float8e4nv), p_layout)
        out = warpgroup_mma(p8, v_smem.index(j % STAGES).permute((1, 0)), out)
    l_o = gl.convert_layout(l_i, o_rows)
    l_o = gl.where(l_o == 0.0, 1.0, l_o)
    offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    offs_m = row0 + gl.arange(0, HALF_M, layout=o_rows)
    out = out / gl.expand_dims(l_o, 1) * gl.expand_dims(gl.load(V_SCALE + pid_bh * D + offs_d), 0)
    o_ptrs = out_base + gl.expand_dims(offs_m, 1) * stride_os + gl.expand_dims(offs_d, 0) * stride_od
    mask = gl.expand_dims(offs_m < SQ, 1) & gl.expand_dims(offs_d < D, 0)
    gl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=mask)


@gluon.jit
def _sm90_ws_kernel(
    q_desc, k_desc, v_desc, Q_SCALE, K_SCALE, V_SCALE, LUT, COUNT, OUT,
    stride_ob, stride_oh, stride_os, stride_od,
    H, SQ, SK, NQ, NK, S_PAD_Q, S_PAD_K,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
    CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr, num_warps: gl.constexpr,
):
    # Warp-specialized: a producer warp issues the TMA copies; two consumer warpgroups own 64 rows each of one
    # 128-row query block and run independently of each other (FlashAttention-3's producer / consumer split).
    HALF_M: gl.constexpr = BLOCK_M // 2
    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    row = pid_bh * NQ + pid_m
    count = gl.load(COUNT + row)
    lut_row = LUT + row * NK
    q_scale = gl.load(Q_SCALE + row)
    k_scale_row = K_SCALE + pid_bh * NK
    out_base = OUT + off_b * stride_ob + off_h * stride_oh

    q_smem = gl.allocate_shared_memory(gl.int8, [2, HALF_M, D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, D, BLOCK_N], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)
    q_row = pid_bh * S_PAD_Q + pid_m * BLOCK_M
    row0 = pid_m * BLOCK_M
    gl.warp_specialize([
        (_ws_consume, (q_smem.index(0), k_smem, v_smem, q_bar, ready, empty, lut_row, count, q_scale, k_scale_row,
                       V_SCALE, OUT, out_base, pid_bh, row0, SQ, SK, stride_os, stride_od, HALF_M, BLOCK_N, D,
                       STAGES)),
        (_ws_consume, (q_smem.index(1), k_smem, v_smem, q_bar, ready, empty, lut_row, count, q_scale, k_scale_row,
                       V_SCALE, OUT, out_base, pid_bh, row0 + HALF_M, SQ, SK, stride_os, stride_od, HALF_M, BLOCK_N,
                       D, STAGES)),
        (_ws_produce, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, ready, empty, lut_row, count, q_row,
                       pid_bh * S_PAD_K, pid_bh * D, STAGES, BLOCK_N, HALF_M)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


# per head dim, chosen on an H200 (benchmarks/results/kernels_notes.md): K/V stages, consumer and producer registers
DEFAULT_SCHEDULE = {64: (3, 232, 40), 128: (3, 232, 40)}


def sm90_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lut: torch.Tensor,
    counts: torch.Tensor,
    out: torch.Tensor,
    *,
    seq_len_q: int,
    seq_len_k: int,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    schedule: Optional[tuple] = None,
) -> torch.Tensor:
    """Launch the Hopper kernel; writes and returns ``out [B, H, Sq, D]``.

    Args:
        q, k: contiguous INT8 ``[B, H, S_pad, D]`` (whole 128-token blocks) with ``q_scale [B, H, NQ]`` (softmax
            scale · log2 e folded in) and ``k_scale [B, H, NK]``.
        v: contiguous FP8 e4m3 ``[B, H, D, S_pad]`` (V transposed) with ``v_scale [B, H, D]``.
        lut, counts: kept key blocks per 128-row query block, ascending (`BlockMap.to_lut`).
        schedule: ``(stages, consumer_registers, producer_registers)``; None takes `DEFAULT_SCHEDULE`.
    """
    b, h, sq_pad, d = q.shape
    sk_pad = k.shape[2]
    nq, nk = lut.shape[2], lut.shape[3]
    stages, consumer_regs, producer_regs = schedule or DEFAULT_SCHEDULE[d]
    half = BLOCK // 2
    q2, k2, v2 = q.view(b * h * sq_pad, d), k.view(b * h * sk_pad, d), v.view(b * h * d, sk_pad)
    q_desc = TensorDescriptor.from_tensor(q2, [half, d], _shared_layout(half, d, "int8"))
    k_desc = TensorDescriptor.from_tensor(k2, [BLOCK, d], _shared_layout(BLOCK, d, "int8"))
    v_desc = TensorDescriptor.from_tensor(v2, [d, BLOCK], _shared_layout(d, BLOCK, "float8e4nv"))
    launch(_sm90_ws_kernel, (sq_pad // BLOCK, b * h),
        q_desc, k_desc, v_desc, q_scale, k_scale, v_scale, lut, counts, out, *out.stride(), h, seq_len_q,
        seq_len_k, nq, nk, sq_pad, sk_pad,
        BLOCK_M=BLOCK, BLOCK_N=BLOCK, D=d, STAGES=stages, CONSUMER_REGS=consumer_regs, PRODUCER_REGS=producer_regs,
        num_warps=4,
    )
    return out


@functools.lru_cache(maxsize=16)
def _shared_layout(rows: int, cols: int, dtype: str):
    # the TMA tile's shared-memory layout, built once (about 5 µs of host time each)
    return gl.NVMMASharedLayout.get_default_for([rows, cols], getattr(gl, dtype))


def sm90_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_m: int, block_n: int) -> bool:
    """Whether `sm90_fwd` takes these quantized operands: 128 × 128 blocks, head dim 64 or 128, contiguous."""
    return (block_m == BLOCK and block_n == BLOCK and q.shape[-1] in DEFAULT_SCHEDULE
            and q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
            and q.dtype == torch.int8 and k.dtype == torch.int8 and v.dtype == torch.float8_e4m3fn)
