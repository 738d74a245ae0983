"""The error budget ε: per-head drop masses measured on sampled exact rows of the same call. `naive` (plain
PyTorch, the ground truth and the CPU path) and `kernel` (Triton: the same measurement in four launches).

`budget_drop_mass` picks the Triton path for CUDA tensors when it can run there and the naive one otherwise. The
Triton launchers load on first use (``<package>.<name>`` or ``<package>.kernel``), so importing the references needs
neither a GPU nor a working Triton.
"""

from __future__ import annotations

import functools
import logging
from typing import Optional

import torch

from .._lazy import kernel_attributes, triton_device_reason
from .naive import *  # noqa: F401,F403
from .naive import GUARD_MARGIN, GUARD_ROWS, naive_budget_drop_mass
from .naive import __all__ as _naive_all

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "triton", "naive")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__getattr__ = kernel_attributes(__name__)


def triton_budget_unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_n: int) -> Optional[str]:
    """None when the Triton measurement supports these shapes and dtypes (on any device), else a short reason."""
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _FLOAT_DTYPES:
        return f"q, k, v must share one of fp16, bf16, fp32, got {q.dtype}, {k.dtype}, {v.dtype}"
    if block_n < 16 or block_n > 256 or block_n & (block_n - 1):
        return f"block_n must be a power of two in [16, 256], got {block_n}"
    if q.shape[-1] > 256:
        return f"head dim must be <= 256, got {q.shape[-1]}"
    return None


def _load_kernel() -> None:
    from . import kernel  # noqa: F401


@functools.lru_cache(maxsize=16)
def _device_reason(device: torch.device) -> Optional[str]:
    return triton_device_reason(device, _load_kernel)


@torch.no_grad()
def budget_drop_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probs: torch.Tensor, *, target_error: float,
                     block_m: int, block_n: int, scale: float, forced_rows: torch.Tensor, forced_cols: torch.Tensor,
                     rows: int = GUARD_ROWS, margin: float = GUARD_MARGIN, implementation: str = "auto",
                     low_precision: Optional[bool] = None, **triton_options) -> torch.Tensor:
    """Per-(batch, head) drop mass δ meeting the error budget ε on sampled exact rows (`naive` module docstring).

    Args:
        q: ``[B, H, Sq, D]``; k, v: ``[B, H, Sk, D]`` (any strides).
        probs: ``[B, H, NQ, NK]`` predicted block masses (the softmax the selection kernel uses).
        forced_rows: bool ``[NQ]`` (or ``[B, H, NQ]``), forced_cols: bool ``[NK]`` (or ``[B, H, NK]``).
        rows: sampled rows per (batch, head); margin: the share of ε the sampled error may use.
        implementation: ``"auto"`` (Triton for CUDA tensors it supports, else naive), ``"triton"``
            (`kernel.budget_drop_mass_fwd`; any device, e.g. the CPU under ``TRITON_INTERPRET=1``) or ``"naive"``
            (`naive.naive_budget_drop_mass`).
        low_precision: naive path only (`naive.naive_row_partials`).
        triton_options: Triton path only (`kernel.budget_drop_mass_fwd`: ``partials_dtype``, ``block_r``,
            ``max_partials_bytes``).
    Returns:
        fp32 ``[B, H]`` drop masses (`KEEP_ALL` where no δ meets the budget).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    common = dict(target_error=target_error, block_m=block_m, block_n=block_n, scale=scale, forced_rows=forced_rows,
                  forced_cols=forced_cols, rows=rows, margin=margin)
    if implementation == "naive" and triton_options:
        raise ValueError(f"{sorted(triton_options)} apply to implementation='triton' only")
    if implementation == "auto":
        reason = _device_reason(q.device) or triton_budget_unsupported(q, k, v, block_n)
        if reason is not None and q.is_cuda:
            logger.debug("error budget measured in PyTorch: %s", reason)
        implementation = "naive" if reason is not None else "triton"
    elif implementation == "triton":
        reason = triton_budget_unsupported(q, k, v, block_n)
        if reason is not None:
            raise ValueError(f"implementation='triton': {reason}")
    if implementation == "naive":
        return naive_budget_drop_mass(q, k, v, probs, low_precision=low_precision, **common)
    from .kernel import budget_drop_mass_fwd

    return budget_drop_mass_fwd(q, k, v, probs, **common, **triton_options)


__all__ = list(_naive_all) + ["IMPLEMENTATIONS", "budget_drop_mass", "triton_budget_unsupported"]
