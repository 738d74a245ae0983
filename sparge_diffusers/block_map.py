"""`BlockMap`: which key blocks each query block attends to.

A documented sparse format in the spirit of ``torch.nn.attention.flex_attention.BlockMask``: the boolean
``mask[b, h, i, j]`` says whether query block ``i`` of head ``h`` in batch ``b`` computes key block ``j``.
Query block ``i`` holds tokens ``[i * block_m, min((i + 1) * block_m, seq_len_q))``; key blocks likewise with
``block_n``. The kernels consume the compact form ``to_lut()``: for each query block the ascending list of kept
key-block indices and its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from .kernels.reference import block_token_counts, num_blocks


@dataclass(frozen=True)
class BlockMap:
    """Kept (query block, key block) pairs.

    Attributes:
        mask: bool ``[B, H, NQ, NK]`` with ``NQ = ceil(seq_len_q / block_m)``, ``NK = ceil(seq_len_k / block_n)``.
        block_m, block_n: block sizes in tokens.
        seq_len_q, seq_len_k: sequence lengths the map was built for.
    """

    mask: torch.Tensor
    block_m: int
    block_n: int
    seq_len_q: int
    seq_len_k: int

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool or self.mask.dim() != 4:
            raise ValueError(f"mask must be a bool [B, H, NQ, NK] tensor, got {self.mask.dtype} {tuple(self.mask.shape)}")
        expected = (num_blocks(self.seq_len_q, self.block_m), num_blocks(self.seq_len_k, self.block_n))
        if tuple(self.mask.shape[-2:]) != expected:
            raise ValueError(
                f"mask has {tuple(self.mask.shape[-2:])} blocks but seq_len_q={self.seq_len_q}, "
                f"seq_len_k={self.seq_len_k} with blocks {self.block_m}x{self.block_n} need {expected}"
            )

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        return tuple(self.mask.shape)

    def kept_per_head(self) -> torch.Tensor:
        """Fraction of kept block pairs per (batch, head): float ``[B, H]``."""
        return self.mask.float().mean(dim=(-2, -1))

    def sparsity_per_head(self) -> torch.Tensor:
        """Fraction of skipped block pairs per (batch, head): float ``[B, H]``."""
        return 1.0 - self.kept_per_head()

    def sparsity(self) -> float:
        """Fraction of skipped block pairs over the whole map (0 = dense)."""
        return float(1.0 - self.mask.float().mean())

    def token_sparsity(self) -> float:
        """Fraction of skipped query-key token pairs: like `sparsity` but weighting partial last blocks by size."""
        rows = block_token_counts(self.seq_len_q, self.block_m, self.mask.device)
        cols = block_token_counts(self.seq_len_k, self.block_n, self.mask.device)
        kept = (self.mask.float() * rows[:, None] * cols[None, :]).sum(dim=(-2, -1))
        return float(1.0 - kept.mean() / (self.seq_len_q * self.seq_len_k))

    def to_dense(self) -> torch.Tensor:
        """Token-level bool mask ``[B, H, seq_len_q, seq_len_k]`` (True = computed)."""
        dense = self.mask.repeat_interleave(self.block_m, dim=-2).repeat_interleave(self.block_n, dim=-1)
        return dense[..., : self.seq_len_q, : self.seq_len_k]

    def to_lut(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Compact form for the kernels.

        Returns:
            lut: int32 ``[B, H, NQ, NK]``; row ``lut[b, h, i, :counts[b, h, i]]`` holds the kept key-block indices of
                query block ``i`` in ascending order, the rest is padding (0).
            counts: int32 ``[B, H, NQ]`` number of kept key blocks.
        """
        from .kernels.lut import lut_from_mask

        return lut_from_mask(self.mask)

    @classmethod
    def full(cls, batch: int, heads: int, seq_len_q: int, seq_len_k: int, block_m: int, block_n: int,
             device=None) -> "BlockMap":
        """A map that keeps every block (dense attention)."""
        shape = (batch, heads, num_blocks(seq_len_q, block_m), num_blocks(seq_len_k, block_n))
        return cls(torch.ones(shape, dtype=torch.bool, device=device), block_m, block_n, seq_len_q, seq_len_k)

    def __repr__(self) -> str:
        b, h, nq, nk = self.mask.shape
        return (
            f"BlockMap(batch={b}, heads={h}, query_blocks={nq}x{self.block_m}, key_blocks={nk}x{self.block_n}, "
            f"seq_len=({self.seq_len_q}, {self.seq_len_k}), sparsity={self.sparsity():.3f})"
        )


def block_mask_from_lut(lut: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Inverse of `BlockMap.to_lut`: bool ``[B, H, NQ, NK]`` from ``lut [B, H, NQ, NK]`` and ``counts [B, H, NQ]``."""
    listed = torch.arange(lut.shape[-1], device=lut.device) < counts.unsqueeze(-1)
    hits = torch.zeros(lut.shape, dtype=torch.int32, device=lut.device)
    hits.scatter_add_(-1, torch.where(listed, lut, 0).long(), listed.to(torch.int32))
    return hits > 0
