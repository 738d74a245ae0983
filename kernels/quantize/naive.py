"""Ground truth of `quantize.kernel.prepare_fwd`: per-block INT8 with K smoothing (SageAttention, arXiv 2410.02367)
and per-channel FP8 e4m3 V (SageAttention2, arXiv 2411.10958)."""

from __future__ import annotations

from typing import Tuple

import torch

from ..geometry import split_blocks as _split_blocks

FP8_E4M3_MAX = 448.0
INT8_MAX = 127.0
_EPS = 1e-12


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


__all__ = ["FP8_E4M3_MAX", "INT8_MAX", "naive_quantize_int8", "naive_quantize_v_fp8"]
