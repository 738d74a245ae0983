"""Compact kept-block lists (the kernels' input format) from boolean block masks; pure PyTorch."""

from __future__ import annotations

from typing import Tuple

import torch


def lut_from_mask(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Compact kept-block list of a bool ``[B, H, NQ, NK]`` mask.

    Returns:
        lut: int32 ``[B, H, NQ, NK]``, kept key-block indices ascending then 0 padding; counts: int32 ``[B, H, NQ]``.
    """
    num_k = mask.shape[-1]
    index = torch.arange(num_k, device=mask.device, dtype=torch.int32)
    lut = torch.sort(torch.where(mask, index, num_k + index), dim=-1).values
    lut = torch.where(lut < num_k, lut, torch.zeros_like(lut))
    return lut.to(torch.int32).contiguous(), mask.sum(dim=-1, dtype=torch.int32).contiguous()
