"""Stage 2: block-sparse attention forward over a list of kept key blocks per query block.

Each program owns one query block and walks only its kept key blocks (``lut[i, :count[i]]``, ascending), so the
work is proportional to the kept blocks, with no branch per skipped block. Scores are INT8 Q·Kᵀ with one scalar
dequantization factor per tile (per-block scales, SageAttention arXiv 2410.02367); the online softmax runs in base 2
(FlashAttention-2, arXiv 2307.08691); P·V runs in FP8 e4m3 with P scaled by 448 and a per-channel V scale
(SageAttention2, arXiv 2411.10958), in FP16, or in the input dtype. With λ, a tile whose row maxima all lie more than
-λ below the running maxima is skipped (SpargeAttn, arXiv 2502.18137, Sec. 3.4). On Hopper, FP8-mode launches at
head dim 128 go to the hand-scheduled Gluon kernel of `kernel_sm90` instead (`sm90_route`). Ground truth:
`naive.naive_block_sparse_attention`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .._launch import launch

LOG2E = 1.4426950408889634
PV_FP8, PV_FP16, PV_NATIVE = 0, 1, 2
# Head dims the Hopper (Gluon) schedule of `kernel_sm90` takes by default. At head dim 64 (softmax-bound) it measured
# level with this kernel with a full mask and 2% slower at sparsity 0.5 on an H200, so head dim 64 stays here
# (kernels_notes.md, session 12).
SM90_HEAD_DIMS = (128,)
SM90_ENV = "SPARGE_SM90"  # "0" keeps every call on this kernel
# INT8 Q·Kᵀ tiles without the edge mask, λ or the magic-number conversion take their row maxima on the int32 dots,
# then one conversion and one FMA per score before exp2
INT_ROWMAX_DEFAULT = True

logger = logging.getLogger(__name__)


@triton.jit
def _tile_scale(q_scale, K_SCALE_ROW, kb, QK_INT8: tl.constexpr):
    # Dequantization factor of key block ``kb`` (q_scale already holds softmax scale · log2 e).
    if QK_INT8:
        return q_scale * tl.load(K_SCALE_ROW + kb)
    return q_scale


@triton.jit
def _attend_tile(q, cols, k_base, v_base, row_valid, tile_scale, m_i, l_i, acc, SK, stride_ks, stride_vs,
                 pv_threshold, QK_INT8: tl.constexpr, PV_MODE: tl.constexpr, MASK_KV: tl.constexpr,
                 EDGE: tl.constexpr, USE_PV_THRESHOLD: tl.constexpr, INT_MAGIC: tl.constexpr,
                 INT_ROWMAX: tl.constexpr):
    # Key columns ``cols`` [TILE_N]: scores, the λ test, the online softmax and P·V.
    kv_mask = cols < SK
    k_ptrs = k_base + cols[None, :] * stride_ks
    v_ptrs = v_base + cols[:, None] * stride_vs
    if EDGE and MASK_KV:
        k = tl.load(k_ptrs, mask=kv_mask[None, :], other=0.0)
    else:
        k = tl.load(k_ptrs)
    if QK_INT8 and INT_ROWMAX and not (INT_MAGIC or EDGE or USE_PV_THRESHOLD):
        # the row maxima on the int32 dots (tile_scale > 0), then one conversion and one FMA per score
        dots = tl.dot(q, k)
        m_new = tl.maximum(m_i, tl.max(dots, 1).to(tl.float32) * tile_scale)
        if PV_MODE == 0:
            shift = 8.807354922057604 - m_new
        else:
            shift = -m_new
        p = tl.math.exp2(tl.fma(dots.to(tl.float32), tile_scale, shift[:, None]))
        m_i, l_i, acc = _accumulate_pv(p, m_new, v_ptrs, kv_mask, m_i, l_i, acc, PV_MODE, EDGE and MASK_KV)
    else:
        m_i, l_i, acc = _attend_float_tile(q, k, v_ptrs, kv_mask, row_valid, tile_scale, m_i, l_i, acc,
                                           pv_threshold, QK_INT8, PV_MODE, MASK_KV, EDGE, USE_PV_THRESHOLD,
                                           INT_MAGIC)
    return m_i, l_i, acc


@triton.jit
def _attend_float_tile(q, k, v_ptrs, kv_mask, row_valid, tile_scale, m_i, l_i, acc, pv_threshold,
                       QK_INT8: tl.constexpr, PV_MODE: tl.constexpr, MASK_KV: tl.constexpr, EDGE: tl.constexpr,
                       USE_PV_THRESHOLD: tl.constexpr, INT_MAGIC: tl.constexpr):
    # Scores as fp32 first: the column mask of the edge tile, the λ test and the other modes.
    if QK_INT8 and INT_MAGIC:
        # int32 -> fp32 without the quarter-rate I2F: 1.5 * 2**23 + score is exact in fp32 for |score| < 2**22
        # (INT8 dots of D <= 128). The scale is cut to 22 mantissa bits so that 1.5 * 2**23 * scale is exact too.
        scale22 = (tile_scale.to(tl.int32, bitcast=True) & -4).to(tl.float32, bitcast=True)
        raw = (tl.dot(q, k) + 0x4B400000).to(tl.float32, bitcast=True)
        s = tl.fma(raw, scale22, -12582912.0 * scale22)  # [BLOCK_M, TILE_N], log2 units
    elif QK_INT8:
        s = tl.dot(q, k).to(tl.float32) * tile_scale  # [BLOCK_M, TILE_N], log2 units
    else:
        s = tl.dot(q, k) * tile_scale
    if EDGE:
        s = s + tl.where(kv_mask, 0.0, float("-inf"))[None, :]
    if USE_PV_THRESHOLD:
        gap = tl.where(row_valid, tl.max(s, 1) - m_i, float("-inf"))
        if tl.max(gap, 0) >= pv_threshold:
            m_i, l_i, acc = _softmax_pv(s, v_ptrs, kv_mask, m_i, l_i, acc, PV_MODE, EDGE and MASK_KV)
    else:
        m_i, l_i, acc = _softmax_pv(s, v_ptrs, kv_mask, m_i, l_i, acc, PV_MODE, EDGE and MASK_KV)
    return m_i, l_i, acc


@triton.jit
def _softmax_pv(s, v_ptrs, kv_mask, m_i, l_i, acc, PV_MODE: tl.constexpr, MASK_KV: tl.constexpr):
    # s: [BLOCK_M, TILE_N]; v tile: [TILE_N, D]; m_i, l_i: [BLOCK_M]; acc: [BLOCK_M, D]
    # In FP8 mode P is produced already scaled by 448 (log2 448 added to the exponent), so l_i and acc carry the same
    # factor and the division at the end cancels it.
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if PV_MODE == 0:
        p = tl.math.exp2(s - (m_new - 8.807354922057604)[:, None])
    else:
        p = tl.math.exp2(s - m_new[:, None])
    return _accumulate_pv(p, m_new, v_ptrs, kv_mask, m_i, l_i, acc, PV_MODE, MASK_KV)


@triton.jit
def _accumulate_pv(p, m_new, v_ptrs, kv_mask, m_i, l_i, acc, PV_MODE: tl.constexpr, MASK_KV: tl.constexpr):
    # The online-softmax update with this tile's probabilities p (row maxima m_new) and its P·V.
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
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_N: tl.constexpr, D: tl.constexpr,
    QK_INT8: tl.constexpr, PV_MODE: tl.constexpr, MASK_KV: tl.constexpr, USE_PV_THRESHOLD: tl.constexpr,
    PEEL_EDGE: tl.constexpr, INT_MAGIC: tl.constexpr, INT_ROWMAX: tl.constexpr,
):
    # q: [B, H, SQ, D]; k, v: [B, H, SK, D] as (s, d) element strides (V may be stored [B, H, D, S_pad]);
    # q_scale: [B, H, NQ]; k_scale: [B, H, NK] (INT8 scales, softmax scale · log2 e folded into q_scale);
    # v_scale: [B, H, D]; lut: [B, H, NQ, NK] int32; count: [B, H, NQ] int32; out: [B, H, SQ, D].
    # Each kept block is computed in tiles of TILE_N keys (TILE_N divides BLOCK_N). PEEL_EDGE: the main loop runs
    # without the end-of-sequence column mask and the partial last key block (always last in the ascending list)
    # runs once after it.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, TILE_N)
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
    k_scale_row = K_SCALE + pid_bh * NK
    if QK_INT8:
        q_scale = tl.load(Q_SCALE + row)
    else:
        q_scale = qk_scale

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    n_main = count
    if PEEL_EDGE:
        if (SK % BLOCK_N != 0) and count > 0:
            if tl.load(lut_row + count - 1) == NK - 1:
                n_main = count - 1
    SUBS: tl.constexpr = BLOCK_N // TILE_N
    for it in range(0, n_main * SUBS):
        kb = tl.load(lut_row + it // SUBS)
        cols = kb * BLOCK_N + (it % SUBS) * TILE_N + offs_n
        m_i, l_i, acc = _attend_tile(q, cols, k_base, v_base, row_valid, _tile_scale(q_scale, k_scale_row, kb, QK_INT8),
                                     m_i, l_i, acc, SK, stride_ks, stride_vs, pv_threshold, QK_INT8, PV_MODE, MASK_KV,
                                     not PEEL_EDGE, USE_PV_THRESHOLD, INT_MAGIC, INT_ROWMAX)
    if PEEL_EDGE:
        if n_main < count:
            tile_scale = _tile_scale(q_scale, k_scale_row, NK - 1, QK_INT8)
            for sub in range(0, SUBS):
                first = (NK - 1) * BLOCK_N + sub * TILE_N
                if first < SK:  # a tile wholly past the end has no valid column
                    m_i, l_i, acc = _attend_tile(q, first + offs_n, k_base, v_base, row_valid, tile_scale, m_i, l_i,
                                                 acc, SK, stride_ks, stride_vs, pv_threshold, QK_INT8, PV_MODE,
                                                 MASK_KV, True, USE_PV_THRESHOLD, INT_MAGIC, INT_ROWMAX)
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
    peel_edge: Optional[bool] = None,
    tile_n: Optional[int] = None,
    int_magic: Optional[bool] = None,
    max_registers: Optional[int] = None,
    int_rowmax: Optional[bool] = None,
    hopper: Optional[bool] = None,
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
        num_warps, num_stages, peel_edge, tile_n, int_magic, max_registers: launch settings; None picks the ones
            measured on an H200 (`benchmarks/results/kernels_notes.md`): 4 warps; 3 stages (2 for 16-bit P·V at
            head dim 128, or where three K/V stages would not fit in shared memory); a separate pass for the partial
            last key block, except with 64-key tiles at head dim 64; key tiles of ``block_n`` tokens, except 64 for
            128-key blocks at head dim 128 outside the FP8 mode; INT32 scores converted by the magic-number add
            instead of I2F in the INT8/FP16 mode only (2–6% faster there, slower with FP8 P·V); a 168-register cap
            (three CTAs per SM) for the FP8 mode at head dim 64 on Hopper only (2–4% faster there, slower
            elsewhere).
        int_rowmax: row maxima of INT8 score tiles taken on the int32 dots (None: `INT_ROWMAX_DEFAULT`).
        hopper: the warp-specialized Gluon schedule of `kernel_sm90` (FP8 mode, 128 × 128 blocks, no λ, no launch
            setting given). None takes it where `sm90_route` says so (Hopper, head dim in `SM90_HEAD_DIMS`, Triton
            with Gluon, ``SPARGE_SM90`` not "0"); False never; True requires it.
    """
    overrides = any(x is not None for x in (num_warps, num_stages, peel_edge, tile_n, int_magic, max_registers,
                                            int_rowmax))
    if hopper is not False:
        reason = sm90_route(q, k, v, block_m=block_m, block_n=block_n, pv_mode=pv_mode, pv_threshold=pv_threshold,
                            scales=(q_scale, k_scale, v_scale), v_transposed=v_transposed, overrides=overrides,
                            head_dims=SM90_HEAD_DIMS if hopper is None else None)
        if reason is None:
            launched = _sm90_launch(q, k, v, lut, counts, out, seq_len_q=seq_len_q, seq_len_k=seq_len_k,
                                    q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, required=bool(hopper))
            if launched is not None:
                return launched
            reason = "the Hopper kernel failed to build"
        if hopper:
            raise ValueError(f"hopper=True: the Hopper schedule cannot take this call: {reason}")
    b, h, _, d = q.shape
    nq, nk = lut.shape[2], lut.shape[3]
    qk_int8 = q_scale is not None
    v_strides = (v.stride(0), v.stride(1), v.stride(3), v.stride(2)) if v_transposed else v.stride()
    num_warps = num_warps or 4
    if tile_n is None:
        tile_n = 64 if (block_n == 128 and d == 128 and pv_mode != PV_FP8) else block_n
    if block_n % tile_n:
        raise ValueError(f"tile_n must divide block_n={block_n}, got {tile_n}")
    if peel_edge is None:
        peel_edge = tile_n == 128 or d == 128
    if int_magic is None:
        int_magic = qk_int8 and pv_mode == PV_FP16
    if int_magic and (not qk_int8 or d * 127 * 127 >= 1 << 22):
        raise ValueError(f"int_magic needs INT8 Q·Kᵀ with head dim <= 128 (|scores| < 2**22), got head dim {d}")
    if max_registers is None and pv_mode == PV_FP8 and d == 64 and _is_hopper(q.device):
        max_registers = 168
    num_stages = num_stages or _default_stages(q, k, v, block_m, tile_n, d, pv_mode)
    dummy = lut
    launch(_block_sparse_attn_fwd_kernel, (nq, b * h),
        q, k, v,
        q_scale if qk_int8 else dummy, k_scale if qk_int8 else dummy, v_scale if v_scale is not None else dummy,
        lut, counts, out,
        *q.stride(), *k.stride(), *v_strides, *out.stride(),
        h, seq_len_q, seq_len_k, nq, nk, softmax_scale * LOG2E,
        (pv_threshold if pv_threshold is not None else -math.inf) * LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, TILE_N=tile_n, D=d, QK_INT8=qk_int8, PV_MODE=pv_mode,
        MASK_KV=not qk_int8, USE_PV_THRESHOLD=pv_threshold is not None, PEEL_EDGE=peel_edge,
        INT_MAGIC=int_magic, INT_ROWMAX=INT_ROWMAX_DEFAULT if int_rowmax is None else int_rowmax,
        num_warps=num_warps, num_stages=num_stages,
        **({} if max_registers is None else dict(maxnreg=max_registers)),
    )
    return out


def sm90_route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_m: int, block_n: int, pv_mode: int,
               pv_threshold: Optional[float], scales, v_transposed: bool, overrides: bool,
               head_dims=SM90_HEAD_DIMS) -> Optional[str]:
    """None when a launch goes to the Hopper schedule (`kernel_sm90.sm90_fwd`), else why not. The one place that
    decides it. ``head_dims``: the head dims taken (None: every one `kernel_sm90.sm90_supported` takes)."""
    if os.environ.get(SM90_ENV, "1") == "0":
        return f"{SM90_ENV}=0"
    if pv_mode != PV_FP8 or any(x is None for x in scales) or not v_transposed:
        return "only the INT8/FP8 mode has a Hopper schedule"
    if pv_threshold is not None:
        return "the Hopper schedule has no λ (pv_threshold)"
    if overrides:
        return "a Triton launch setting was given"
    if head_dims is not None and q.shape[-1] not in head_dims:
        return f"head dim {q.shape[-1]} is not in {tuple(head_dims)}"
    if not _is_hopper(q.device):
        return "not a Hopper GPU"
    module = _sm90_module()
    if module is None:
        return "this Triton has no usable Gluon (triton.experimental.gluon)"
    if not module.sm90_supported(q, k, v, block_m, block_n):
        return (f"the Hopper schedule needs contiguous INT8 Q, K, FP8 Vᵀ, 128 × 128 blocks and a head dim in "
                f"{tuple(module.DEFAULT_SCHEDULE)}")
    return None


_SM90: list = []  # [kernel_sm90 or None, whether a launch has succeeded]


def _sm90_module():
    """`kernel_sm90`, or None when this Triton cannot build it (logged once); memoized in a list."""
    if not _SM90:
        try:
            from . import kernel_sm90
        except Exception as error:  # older Triton without Gluon, or a renamed Gluon API: the Triton kernel runs
            logger.info("sparge-diffusers: the Hopper attention schedule is unavailable (%s); using the Triton "
                        "kernel", error)
            kernel_sm90 = None
        _SM90.extend([kernel_sm90, False])
    return _SM90[0]


def _sm90_launch(*args, required: bool, **kwargs) -> Optional[torch.Tensor]:
    """`kernel_sm90.sm90_fwd`; None when its first launch fails to build (a Gluon this code does not know): the
    failure is logged once and every later call runs the Triton kernel. After one launch has succeeded, errors
    propagate."""
    try:
        out = _SM90[0].sm90_fwd(*args, **kwargs)
    except Exception as error:
        if _SM90[1] or required:
            raise
        logger.warning("sparge-diffusers: the Hopper attention kernel failed to build (%s: %s); using the Triton "
                       "kernel", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        _SM90[0] = None
        return None
    _SM90[1] = True
    return out


def _default_stages(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_m: int, tile_n: int, d: int,
                    pv_mode: int) -> int:
    """3 K/V pipeline stages where they fit in the device's shared memory (with 16 KiB to spare), else 2; 2 for the
    16-bit P·V modes at head dim 128 (H200: 2–5% faster with 64-key blocks; with 128-key blocks in 64-key tiles
    INT8/FP16 1–2% faster, bf16 0.4–1% slower)."""
    if pv_mode != PV_FP8 and d == 128:
        return 2
    stage_bytes = tile_n * d * (k.element_size() + v.element_size())
    needed = 3 * stage_bytes + block_m * d * q.element_size()
    return 3 if needed + 16 * 1024 <= _shared_memory_bytes(q.device) else 2


@functools.lru_cache(maxsize=16)
def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


@functools.lru_cache(maxsize=16)
def _shared_memory_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30  # the interpreter has no limit
    index = device.index if device.index is not None else torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]
