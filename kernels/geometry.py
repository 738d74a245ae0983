"""Block geometry shared by every op: block counts, tokens per block, padding to whole blocks, forced ranges.

Layout: a sequence of ``S`` tokens is cut into ``ceil(S / block)`` blocks; the last one may be partial.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch


def num_blocks(seq_len: int, block: int) -> int:
    return -(-seq_len // block)


def split_blocks(x: torch.Tensor, block: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the token dim to whole blocks.

    Returns:
        blocks: ``[B, H, NB, block, D]`` in x's dtype.
        valid: bool ``[NB, block]``, False on padding.
    """
    seq_len = x.shape[-2]
    nb = num_blocks(seq_len, block)
    pad = nb * block - seq_len
    padded = torch.nn.functional.pad(x, (0, 0, 0, pad))
    valid = (torch.arange(nb * block, device=x.device) < seq_len).view(nb, block)
    return padded.unflatten(-2, (nb, block)), valid


def block_token_counts(seq_len: int, block: int, device=None) -> torch.Tensor:
    """Tokens per block, float ``[NB]``."""
    starts = torch.arange(0, seq_len, block, device=device)
    return torch.clamp(seq_len - starts, max=block).float()


def blocks_touching(ranges: Sequence[Tuple[int, int]], seq_len: int, block: int, device) -> torch.Tensor:
    """bool ``[NB]``: blocks that hold at least one token of the ``(start, end)`` ranges (clipped to seq_len)."""
    touched = torch.zeros(num_blocks(seq_len, block), dtype=torch.bool, device=device)
    for start, end in ranges:
        end = min(end, seq_len)
        if end > start:
            touched[start // block: (end - 1) // block + 1] = True
    return touched


__all__ = ["block_token_counts", "blocks_touching", "num_blocks", "split_blocks"]
