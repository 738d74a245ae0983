"""One pass over Q or K: per-block INT8 quantization fused with the stage-1 block statistics.

For each block of ``BLOCK`` tokens the kernel reads the tile once and writes the INT8 values, the per-block scale,
the mean token and the self-similarity (SpargeAttn, arXiv 2502.18137, Sec. 3.2; INT8 per block with K smoothing
after SageAttention, arXiv 2410.02367). A second kernel quantizes V to FP8 e4m3 with a per-channel scale and stores
it transposed (``[B, H, D, S]``) so that the P·V product reads V K-major, as Hopper's FP8 tensor cores require.
Ground truth: `reference.naive_quantize_int8`, `reference.naive_block_mean`, `reference.naive_block_self_similarity`,
`reference.naive_quantize_v_fp8`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

FP8_E4M3_MAX = 448.0


@triton.jit
def _quant_pool_fwd_kernel(
    X, X_INT8, SCALE, MEAN, SIM, SHIFT, SQ_MEAN,
    stride_xb, stride_xh, stride_xs, stride_xd,
    H, S, NB, scale_mult,
    BLOCK: tl.constexpr, D: tl.constexpr, SMOOTH: tl.constexpr, QUANTIZE: tl.constexpr, POOL: tl.constexpr,
    SECOND_MOMENT: tl.constexpr,
):
    # x: [B, H, S, D] (any strides); x_int8: [B, H, NB * BLOCK, D] contiguous, zero padded;
    # scale, sim: [B, H, NB]; mean, sq_mean: [B, H, NB, D]
    # shift: [B, H, D] fp32 (token mean used for smoothing)
    pid_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    offs_s = pid_blk * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D)
    row_valid = offs_s < S
    x_ptrs = X + off_b * stride_xb + off_h * stride_xh + offs_s[:, None] * stride_xs + offs_d[None, :] * stride_xd
    x = tl.load(x_ptrs, mask=row_valid[:, None], other=0.0).to(tl.float32)  # [BLOCK, D]
    n = tl.minimum(S - pid_blk * BLOCK, BLOCK).to(tl.float32)
    stat_off = pid_bh * NB + pid_blk
    if POOL:
        tl.store(MEAN + stat_off * D + offs_d, tl.sum(x, axis=0) / n)
        if SECOND_MOMENT:
            tl.store(SQ_MEAN + stat_off * D + offs_d, tl.sum(x * x, axis=0) / n)
        inv_norms = tl.math.rsqrt(tl.maximum(tl.sum(x * x, axis=1), 1e-24))  # [BLOCK]
        unit = x * inv_norms[:, None]
        unit_sum = tl.sum(unit, axis=0)  # [D]
        tl.store(SIM + stat_off, tl.sum(unit_sum * unit_sum, axis=0) / (n * n))
    if QUANTIZE:
        if SMOOTH:
            shift = tl.load(SHIFT + pid_bh * D + offs_d)
            x = tl.where(row_valid[:, None], x - shift[None, :], 0.0)
        amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-12)
        scale = amax / 127.0
        q = x * (127.0 / amax)
        q = q + tl.where(q >= 0, 0.5, -0.5)
        out_ptrs = X_INT8 + pid_bh * NB * BLOCK * D + offs_s[:, None] * D + offs_d[None, :]
        tl.store(out_ptrs, q.to(tl.int8))
        tl.store(SCALE + stat_off, scale * scale_mult)


def quant_pool_fwd(
    x: torch.Tensor,
    block: int,
    *,
    smooth: bool = False,
    scale_mult: float = 1.0,
    quantize: bool = True,
    pool: bool = True,
    second_moment: bool = False,
) -> Tuple[Optional[torch.Tensor], ...]:
    """Quantize ``x: [B, H, S, D]`` per block and/or compute its block statistics in one pass.

    Args:
        block: tokens per block.
        smooth: subtract the token mean before quantizing (K smoothing).
        scale_mult: multiplied into the stored scales (the attention kernel folds softmax scale · log2 e into Q's).
        second_moment: also return the per-block mean of squares (``pool`` only; the "lse" predictor's variance).
    Returns:
        ``(x_int8 [B, H, NB * block, D] (zero padded to whole blocks), scales [B, H, NB] fp32, means [B, H, NB, D] fp32, sims [B, H, NB] fp32)``;
        entries not asked for are None. Means and self-similarities are of the unsmoothed tokens. With
        ``second_moment`` a fifth entry, ``sq_means [B, H, NB, D]`` fp32.
    """
    b, h, s, d = x.shape
    if not (quantize or pool):
        return (None,) * (5 if second_moment else 4)
    nb = triton.cdiv(s, block)
    dev = x.device
    x_int8 = torch.empty((b, h, nb * block, d), dtype=torch.int8, device=dev) if quantize else None
    scales = torch.empty((b, h, nb), dtype=torch.float32, device=dev) if quantize else None
    means = torch.empty((b, h, nb, d), dtype=torch.float32, device=dev) if pool else None
    sims = torch.empty((b, h, nb), dtype=torch.float32, device=dev) if pool else None
    second_moment = second_moment and pool
    sq_means = torch.empty((b, h, nb, d), dtype=torch.float32, device=dev) if second_moment else None
    shift = torch.mean(x, dim=-2, dtype=torch.float32).contiguous() if (smooth and quantize) else None
    dummy = torch.empty(1, device=dev)
    _quant_pool_fwd_kernel[(nb, b * h)](
        x, x_int8 if quantize else dummy, scales if quantize else dummy, means if pool else dummy,
        sims if pool else dummy, shift if shift is not None else dummy, sq_means if second_moment else dummy,
        *x.stride(), h, s, nb, scale_mult,
        BLOCK=block, D=d, SMOOTH=bool(smooth and quantize), QUANTIZE=quantize, POOL=pool, SECOND_MOMENT=second_moment,
        num_warps=4 if block * d <= 8192 else 8,
    )
    if second_moment:
        return x_int8, scales, means, sims, sq_means
    return x_int8, scales, means, sims


@triton.jit
def _quant_v_fp8_fwd_kernel(
    V, V_OUT, V_SCALE,
    stride_vb, stride_vh, stride_vs, stride_vd,
    H, S, S_PAD,
    BLOCK: tl.constexpr, D: tl.constexpr,
):
    # v: [B, H, S, D] (any strides); v_scale: [B, H, D] fp32; v_out: [B, H, D, S_PAD] fp8 e4m3 (zero padded)
    pid_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    offs_s = pid_blk * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D)
    v_ptrs = V + off_b * stride_vb + off_h * stride_vh + offs_s[:, None] * stride_vs + offs_d[None, :] * stride_vd
    v = tl.load(v_ptrs, mask=(offs_s < S)[:, None], other=0.0).to(tl.float32)  # [BLOCK, D]
    inv_scale = 1.0 / tl.load(V_SCALE + pid_bh * D + offs_d)  # [D]
    v8 = (v * inv_scale[None, :]).to(tl.float8e4nv)
    out_ptrs = V_OUT + pid_bh * D * S_PAD + offs_d[None, :] * S_PAD + offs_s[:, None]
    tl.store(out_ptrs, v8, mask=(offs_s < S_PAD)[:, None])


def quant_v_fp8_fwd(v: torch.Tensor, block_n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """FP8 e4m3 V with a per-channel scale, stored transposed.

    Returns:
        v_fp8_t: float8_e4m3fn ``[B, H, D, S_pad]`` with ``S_pad`` a multiple of ``block_n`` (padding is 0).
        v_scale: fp32 ``[B, H, D]`` with ``v ≈ v_fp8_t.transpose(-1, -2) · v_scale``.
    """
    b, h, s, d = v.shape
    s_pad = triton.cdiv(s, block_n) * block_n
    amax = torch.linalg.vector_norm(v, ord=float("inf"), dim=-2, dtype=torch.float32)
    v_scale = (amax.clamp_min(1e-12) / FP8_E4M3_MAX).contiguous()
    v_out = torch.empty((b, h, d, s_pad), dtype=torch.float8_e4m3fn, device=v.device)
    block = 64
    _quant_v_fp8_fwd_kernel[(triton.cdiv(s_pad, block), b * h)](
        v, v_out, v_scale, *v.stride(), h, s, s_pad, BLOCK=block, D=d, num_warps=4,
    )
    return v_out, v_scale
