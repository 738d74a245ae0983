"""Everything attention needs before its main loop: quantization and the predictor's block statistics.

`prepare_fwd` reads Q, K and V twice at most and produces, as asked:
    * Q in INT8 with one scale per query block, and per-block means / self-similarities;
    * K in INT8 with one scale per key block after subtracting the per-channel token mean (K smoothing, which leaves
      every softmax row unchanged), and per-block means / self-similarities;
    * V in FP8 e4m3 with a per-channel scale, stored transposed (``[B, H, D, S_pad]``) so that P·V reads it
      K-major as Hopper's FP8 tensor cores require;
    * the "lse" predictor's block log-masses (`predict.lse_block_logits_fwd`).

Launch 1 (one program per key block; for small launches one per block and tensor) handles the query block of the
same index (INT8, pooled statistics, the "lse" operands q̄ · scale and ½ w scale² σ²) and records each key block's
mean and each value block's channel maxima;
launch 2 reduces those records to the per-(batch, head) K shift and V scale (a fixed-order sum, so results do not
depend on scheduling); launch 3 (one program per key block) quantizes K and V; with "lse" a fourth launch scores
the key blocks against the query-block operands. Papers: INT8 per block with K smoothing after SageAttention
(arXiv 2410.02367); FP8 V with a per-channel scale after SageAttention2 (arXiv 2411.10958); block means and
self-similarity after SpargeAttn (arXiv 2502.18137, Sec. 3.2). Ground truth: `naive.naive_quantize_int8`,
`naive.naive_quantize_v_fp8`, `predict.naive.naive_block_mean`, `predict.naive.naive_block_self_similarity`,
`predict.naive.naive_lse_block_logits`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .._launch import launch
from ..predict.kernel import lse_block_logits_fwd

FP8_E4M3_MAX = 448.0
STATS = ("none", "pooled", "lse")
SPLIT_ROLES_BELOW = 2048  # programs per launch (Flux at 1024²: 864; CogVideoX-2b: 4,170)


@triton.jit
def _load_rows_f32(X, off_b, off_h, offs_s, offs_d, rows, stride_b, stride_h, stride_s, stride_d):
    # [len(offs_s), D] tile of x [B, H, S, D] (any strides) in fp32; rows past the sequence end (``rows`` False) are 0
    ptrs = X + off_b * stride_b + off_h * stride_h + offs_s[:, None] * stride_s + offs_d[None, :] * stride_d
    return tl.load(ptrs, mask=rows[:, None], other=0.0).to(tl.float32)


@triton.jit
def _store_block_stats(x, n, MEAN, SIM, stat_off, offs_d, D: tl.constexpr):
    # x: [BLOCK, D] fp32 (rows past the sequence end are 0); n: valid rows
    tl.store(MEAN + stat_off * D + offs_d, tl.sum(x, axis=0) / n)
    inv_norms = tl.math.rsqrt(tl.maximum(tl.sum(x * x, axis=1), 1e-24))  # [BLOCK]
    unit_sum = tl.sum(x * inv_norms[:, None], axis=0)  # [D]
    tl.store(SIM + stat_off, tl.sum(unit_sum * unit_sum, axis=0) / (n * n))


@triton.jit
def _store_int8(x, OUT, SCALE, out_off, stat_off, offs_s, offs_d, scale_mult, D: tl.constexpr):
    # x: [BLOCK, D] fp32, zero past the sequence end; one scale for the block
    amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-12)
    rounded = x * (127.0 / amax)
    rounded = rounded + tl.where(rounded >= 0, 0.5, -0.5)
    tl.store(OUT + out_off + offs_s[:, None] * D + offs_d[None, :], rounded.to(tl.int8))
    tl.store(SCALE + stat_off, amax / 127.0 * scale_mult)


@triton.jit
def _first_pass_kernel(
    Q, K, V, Q_INT8, Q_SCALE, Q_MEAN, Q_SIM, Q_LSE_MEAN, Q_LSE_VAR, K_MEAN, K_SIM, V_AMAX,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    H, SQ, SK, NQ, NK, q_scale_mult, lse_mean_scale, lse_var_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    QUANTIZE_Q: tl.constexpr, POOL_Q: tl.constexpr, LSE_Q: tl.constexpr, VARIANCE: tl.constexpr,
    K_MEANS: tl.constexpr, POOL_K: tl.constexpr, V_CHANNEL_MAX: tl.constexpr, SPLIT_ROLES: tl.constexpr,
):
    # q: [B, H, SQ, D], k, v: [B, H, SK, D] (any strides); q_int8: [B, H, NQ * BLOCK_M, D] zero padded;
    # q_scale, q_sim: [B, H, NQ]; q_mean: [B, H, NQ, D] fp32; k_mean, v_amax: [B, H, NK, D]; k_sim: [B, H, NK];
    # q_lse_mean, q_lse_var: [B, H, NQ, D] in k's dtype, the "lse" operands q̄ · scale and ½ w scale² σ²
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    offs_d = tl.arange(0, D)
    role = tl.program_id(2)
    if (QUANTIZE_Q or POOL_Q or LSE_Q) and pid < NQ and (role == 0 or not SPLIT_ROLES):
        offs_s = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rows = offs_s < SQ
        x = _load_rows_f32(Q, off_b, off_h, offs_s, offs_d, rows, stride_qb, stride_qh, stride_qs, stride_qd)
        stat_off = pid_bh * NQ + pid
        n = tl.minimum(SQ - pid * BLOCK_M, BLOCK_M).to(tl.float32)
        if POOL_Q:
            _store_block_stats(x, n, Q_MEAN, Q_SIM, stat_off, offs_d, D)
        if LSE_Q:
            mean = tl.sum(x, axis=0) / n
            tl.store(Q_LSE_MEAN + stat_off * D + offs_d, (mean * lse_mean_scale).to(Q_LSE_MEAN.dtype.element_ty))
            if VARIANCE:
                variance = tl.maximum(tl.sum(x * x, axis=0) / n - mean * mean, 0.0)
                tl.store(Q_LSE_VAR + stat_off * D + offs_d, (variance * lse_var_scale).to(Q_LSE_VAR.dtype.element_ty))
        if QUANTIZE_Q:
            _store_int8(x, Q_INT8, Q_SCALE, pid_bh * NQ * BLOCK_M * D, stat_off, offs_s, offs_d, q_scale_mult, D)
    if pid < NK:
        offs_s = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = offs_s < SK
        stat_off = pid_bh * NK + pid
        if K_MEANS and (role == 1 or not SPLIT_ROLES):
            x = _load_rows_f32(K, off_b, off_h, offs_s, offs_d, rows, stride_kb, stride_kh, stride_ks, stride_kd)
            n = tl.minimum(SK - pid * BLOCK_N, BLOCK_N).to(tl.float32)
            if POOL_K:
                _store_block_stats(x, n, K_MEAN, K_SIM, stat_off, offs_d, D)
            else:
                tl.store(K_MEAN + stat_off * D + offs_d, tl.sum(x, axis=0) / n)
        if V_CHANNEL_MAX and (role == 2 or not SPLIT_ROLES):
            x = _load_rows_f32(V, off_b, off_h, offs_s, offs_d, rows, stride_vb, stride_vh, stride_vs, stride_vd)
            tl.store(V_AMAX + stat_off * D + offs_d, tl.max(tl.abs(x), axis=0))


@triton.jit
def _channel_stats_kernel(
    K_MEAN, V_AMAX, K_SHIFT, V_SCALE, NK, SK,
    BLOCK_N: tl.constexpr, D: tl.constexpr, CHANNELS: tl.constexpr, ROWS: tl.constexpr,
    K_SHIFT_OUT: tl.constexpr, V_SCALE_OUT: tl.constexpr,
):
    # k_mean, v_amax: [B, H, NK, D] per key block; k_shift: [B, H, D] token mean of K; v_scale: [B, H, D] = amax / 448
    pid_bh = tl.program_id(0)
    offs_c = tl.program_id(1) * CHANNELS + tl.arange(0, CHANNELS)
    total = tl.zeros([CHANNELS], dtype=tl.float32)
    amax = tl.zeros([CHANNELS], dtype=tl.float32)
    for start in range(0, NK, ROWS):
        blocks = start + tl.arange(0, ROWS)
        valid = blocks < NK
        offs = (pid_bh * NK + blocks)[:, None] * D + offs_c[None, :]
        if K_SHIFT_OUT:
            tokens = tl.minimum(SK - blocks * BLOCK_N, BLOCK_N).to(tl.float32)
            means = tl.load(K_MEAN + offs, mask=valid[:, None], other=0.0)
            total += tl.sum(means * tokens[:, None], axis=0)
        if V_SCALE_OUT:
            amax = tl.maximum(amax, tl.max(tl.load(V_AMAX + offs, mask=valid[:, None], other=0.0), axis=0))
    if K_SHIFT_OUT:
        tl.store(K_SHIFT + pid_bh * D + offs_c, total / SK)
    if V_SCALE_OUT:
        tl.store(V_SCALE + pid_bh * D + offs_c, tl.maximum(amax, 1e-12) / 448.0)


@triton.jit
def _second_pass_kernel(
    K, V, K_SHIFT, K_INT8, K_SCALE, V_SCALE, V_OUT,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    H, SK, S_PAD, NK,
    BLOCK_N: tl.constexpr, D: tl.constexpr, QUANTIZE_K: tl.constexpr, V_FP8: tl.constexpr, SPLIT_ROLES: tl.constexpr,
):
    # k, v: [B, H, SK, D] (any strides); k_shift, v_scale: [B, H, D]; k_int8: [B, H, S_PAD, D]; k_scale: [B, H, NK];
    # v_out: [B, H, D, S_PAD] fp8 e4m3
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = pid_bh // H
    off_h = pid_bh % H
    offs_s = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    rows = offs_s < SK
    role = tl.program_id(2)
    if QUANTIZE_K and (role == 0 or not SPLIT_ROLES):
        x = _load_rows_f32(K, off_b, off_h, offs_s, offs_d, rows, stride_kb, stride_kh, stride_ks, stride_kd)
        shift = tl.load(K_SHIFT + pid_bh * D + offs_d)
        x = tl.where(rows[:, None], x - shift[None, :], 0.0)
        _store_int8(x, K_INT8, K_SCALE, pid_bh * S_PAD * D, pid_bh * NK + pid, offs_s, offs_d, 1.0, D)
    if V_FP8 and (role == 1 or not SPLIT_ROLES):
        v = _load_rows_f32(V, off_b, off_h, offs_s, offs_d, rows, stride_vb, stride_vh, stride_vs, stride_vd)
        inv_scale = 1.0 / tl.load(V_SCALE + pid_bh * D + offs_d)
        v8 = (v * inv_scale[None, :]).to(tl.float8e4nv)
        tl.store(V_OUT + pid_bh * D * S_PAD + offs_d[None, :] * S_PAD + offs_s[:, None], v8)


@functools.lru_cache(maxsize=16)
def _placeholder(device: torch.device) -> torch.Tensor:
    """A one-element tensor passed for the pointers a launch does not use."""
    return torch.empty(1, dtype=torch.float32, device=device)


class PreparedInputs(NamedTuple):
    """What `prepare_fwd` produced; entries that were not asked for are None.

    ``q_int8 [B, H, NQ·block_m, D]`` and ``k_int8 [B, H, NK·block_n, D]`` are zero padded to whole blocks, with fp32
    scales ``q_scale [B, H, NQ]`` (times ``q_scale_mult``) and ``k_scale [B, H, NK]``; ``v_fp8 [B, H, D, NK·block_n]``
    (float8_e4m3fn, transposed, zero padded) with ``v ≈ v_fp8ᵀ · v_scale``, ``v_scale [B, H, D]``; pooled statistics
    in fp32: ``q_means [B, H, NQ, D]``, ``q_sims [B, H, NQ]``, ``k_means [B, H, NK, D]``, ``k_sims [B, H, NK]``;
    ``block_logits [B, H, NQ, NK]`` fp32.
    """

    q_int8: Optional[torch.Tensor] = None
    q_scale: Optional[torch.Tensor] = None
    k_int8: Optional[torch.Tensor] = None
    k_scale: Optional[torch.Tensor] = None
    v_fp8: Optional[torch.Tensor] = None
    v_scale: Optional[torch.Tensor] = None
    q_means: Optional[torch.Tensor] = None
    q_sims: Optional[torch.Tensor] = None
    k_means: Optional[torch.Tensor] = None
    k_sims: Optional[torch.Tensor] = None
    block_logits: Optional[torch.Tensor] = None


def prepare_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: Optional[torch.Tensor],
    *,
    block_m: int,
    block_n: int,
    quantize_qk: bool = True,
    v_fp8: bool = True,
    stats: str = "none",
    q_scale_mult: float = 1.0,
    softmax_scale: Optional[float] = None,
    variance_weight: float = 1.0,
    split_roles: Optional[bool] = None,
    num_warps: int = 4,
) -> PreparedInputs:
    """Quantize Q, K (and V) and compute the predictor's block statistics.

    Args:
        q: ``[B, H, Sq, D]``; k, v: ``[B, H, Sk, D]``; any strides, D a power of two ≥ 16. ``v`` may be None when
            ``v_fp8`` is False.
        block_m, block_n: query and key block sizes (the attention kernel's tiles).
        quantize_qk: INT8 Q and smoothed INT8 K.
        v_fp8: FP8 e4m3 V, transposed.
        stats: ``"none"``; ``"pooled"`` (block means and self-similarities of Q and K, the paper's stage 1) or
            ``"lse"`` (the "lse" block log-masses, which need ``softmax_scale``).
        q_scale_mult: multiplied into Q's scales (the attention kernel folds softmax scale · log2 e into them).
        variance_weight: weight w of the "lse" variance term (0 turns it off).
        split_roles, num_warps: launch settings. ``split_roles`` gives Q, K and V blocks programs of their own
            (instead of one program for the three blocks of an index); None splits when the launch would have
            fewer than `SPLIT_ROLES_BELOW` programs (H200: 6–7 µs faster at 4,608 tokens, 1–2% slower from
            17,776 tokens). 4 warps beat 2, 8 and 16 at every benchmark shape.
    """
    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}, got {stats!r}")
    if stats == "lse" and softmax_scale is None:
        raise ValueError("stats='lse' needs softmax_scale")
    b, h, sq, d = q.shape
    sk = k.shape[2]
    nq, nk = triton.cdiv(sq, block_m), triton.cdiv(sk, block_n)
    dev = q.device
    f32 = dict(dtype=torch.float32, device=dev)
    pooled, lse = stats == "pooled", stats == "lse"
    variance = lse and bool(variance_weight)
    k_means_needed = quantize_qk or pooled
    out = dict(
        q_int8=torch.empty((b, h, nq * block_m, d), dtype=torch.int8, device=dev) if quantize_qk else None,
        q_scale=torch.empty((b, h, nq), **f32) if quantize_qk else None,
        k_int8=torch.empty((b, h, nk * block_n, d), dtype=torch.int8, device=dev) if quantize_qk else None,
        k_scale=torch.empty((b, h, nk), **f32) if quantize_qk else None,
        v_fp8=torch.empty((b, h, d, nk * block_n), dtype=torch.float8_e4m3fn, device=dev) if v_fp8 else None,
        v_scale=torch.empty((b, h, d), **f32) if v_fp8 else None,
        q_means=torch.empty((b, h, nq, d), **f32) if pooled else None,
        q_sims=torch.empty((b, h, nq), **f32) if pooled else None,
        k_means=torch.empty((b, h, nk, d), **f32) if k_means_needed else None,
        k_sims=torch.empty((b, h, nk), **f32) if pooled else None,
    )
    lse_operands = torch.empty((2 if variance else 1, b, h, nq, d), dtype=k.dtype, device=dev) if lse else None
    v_amax = torch.empty((b, h, nk, d), **f32) if v_fp8 else None
    k_shift = torch.empty((b, h, d), **f32) if quantize_qk else None
    dummy = _placeholder(dev)

    def pick(tensor: Optional[torch.Tensor]) -> torch.Tensor:
        return dummy if tensor is None else tensor

    lse_mean = lse_operands[0] if lse else dummy
    lse_var = lse_operands[1] if variance else lse_mean
    scale = softmax_scale or 1.0
    v_or_k = v if v is not None else k
    key_side = k_means_needed or v_fp8
    blocks = max(nq, nk) if key_side else nq
    if split_roles is None:
        split_roles = blocks * b * h < SPLIT_ROLES_BELOW
    launch(_first_pass_kernel, (blocks, b * h, 3 if split_roles else 1),
        q, k, v_or_k, pick(out["q_int8"]), pick(out["q_scale"]), pick(out["q_means"]), pick(out["q_sims"]),
        lse_mean, lse_var, pick(out["k_means"]), pick(out["k_sims"]), pick(v_amax),
        *q.stride(), *k.stride(), *v_or_k.stride(), h, sq, sk, nq, nk, q_scale_mult, scale,
        0.5 * variance_weight * scale * scale,
        BLOCK_M=block_m, BLOCK_N=block_n, D=d, QUANTIZE_Q=quantize_qk, POOL_Q=pooled, LSE_Q=lse, VARIANCE=variance,
        K_MEANS=k_means_needed, POOL_K=pooled, V_CHANNEL_MAX=v_fp8, SPLIT_ROLES=split_roles, num_warps=num_warps,
    )
    if quantize_qk or v_fp8:
        channels = min(d, 32)
        launch(_channel_stats_kernel, (b * h, d // channels),
            pick(out["k_means"]), pick(v_amax), pick(k_shift), pick(out["v_scale"]), nk, sk,
            BLOCK_N=block_n, D=d, CHANNELS=channels, ROWS=64, K_SHIFT_OUT=quantize_qk, V_SCALE_OUT=v_fp8,
            num_warps=4,
        )
    if quantize_qk or v_fp8:
        launch(_second_pass_kernel, (nk, b * h, 2 if split_roles else 1),
            k, v_or_k, pick(k_shift), pick(out["k_int8"]), pick(out["k_scale"]), pick(out["v_scale"]),
            pick(out["v_fp8"]), *k.stride(), *v_or_k.stride(), h, sk, nk * block_n, nk,
            BLOCK_N=block_n, D=d, QUANTIZE_K=quantize_qk, V_FP8=v_fp8, SPLIT_ROLES=split_roles, num_warps=num_warps,
        )
    if lse:
        out["block_logits"] = lse_block_logits_fwd(lse_mean, lse_var if variance else None, k, block_n=block_n)
    if not pooled:
        out["k_means"] = None
    return PreparedInputs(**out)
