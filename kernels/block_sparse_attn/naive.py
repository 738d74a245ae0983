"""Ground truth of `block_sparse_attn.kernel`: dense softmax attention (the fp32 oracle) and stage 2 of SpargeAttn
(arXiv 2502.18137, Sec. 3.4): online-softmax attention over the kept blocks, emulating the kernel's INT8 / FP8 /
FP16 arithmetic."""

from __future__ import annotations

from typing import Optional

import torch

from ..geometry import split_blocks as _split_blocks
from ..quantize.naive import FP8_E4M3_MAX, naive_quantize_int8, naive_quantize_v_fp8

_EPS = 1e-12


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense softmax attention computed in ``dtype`` (the fp32 oracle by default): ``[B, H, Sq, D]``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v.to(dtype))


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


__all__ = ["naive_attention", "naive_block_sparse_attention"]
