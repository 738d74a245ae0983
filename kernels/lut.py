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


def pack_lut(lut: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """A kept-block list as a bit mask, for keeping it across calls (1/32 of the list's memory): uint8
    ``[B, H, NQ, ceil(NK / 8)]``, bit ``j % 8`` of byte ``j // 8`` set when key block ``j`` is kept. Entries of
    ``lut`` past ``counts`` are ignored (they may hold anything)."""
    nk = lut.shape[-1]
    listed = torch.arange(nk, device=lut.device, dtype=torch.int32) < counts.unsqueeze(-1)
    index = torch.where(listed, lut, 0).long()
    values = torch.where(listed, torch.bitwise_left_shift(torch.ones_like(index), index & 7), 0)
    bits = torch.zeros((*lut.shape[:-1], (nk + 7) // 8), dtype=torch.int64, device=lut.device)
    bits.scatter_add_(-1, index >> 3, values)  # the bits of one byte are distinct: a sum is their OR
    return bits.to(torch.uint8)


def mask_from_bits(bits: torch.Tensor, num_k: int) -> torch.Tensor:
    """Inverse of `pack_lut` as a bool ``[B, H, NQ, NK]`` block mask."""
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    return ((bits.unsqueeze(-1) >> shifts) & 1).bool().flatten(-2)[..., :num_k]


def lut_from_bits(bits: torch.Tensor, num_k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack_lut`: ``(lut, counts)``, kept indices ascending (then the dropped ones; the kernels read
    only the first ``counts``). A scatter by running count instead of `lut_from_mask`'s sort."""
    mask = mask_from_bits(bits, num_k)
    kept = torch.cumsum(mask, dim=-1, dtype=torch.int32)
    counts = kept[..., -1].contiguous()
    dropped = torch.arange(1, num_k + 1, device=bits.device, dtype=torch.int32) - kept
    position = torch.where(mask, kept - 1, counts.unsqueeze(-1) + dropped - 1).long()
    index = torch.arange(num_k, device=bits.device, dtype=torch.int32).expand(mask.shape)
    lut = torch.empty(mask.shape, dtype=torch.int32, device=bits.device).scatter_(-1, position, index)
    return lut, counts
