"""Token permutations between row-major and curve order, and a locality measure of token blocks.

Block-sparse attention (SpargeAttn, Zhang et al., ICML 2025, arXiv 2502.18137) predicts which blocks of Q and K to
keep from the mean of each block, which works best when the tokens of a block are spatially close. Putting the
visual tokens of a video or image into generalized Hilbert order (``curve.hilbert_order``) makes consecutive
blocks compact; ``TokenPermutation`` applies and reverts that reordering along one dimension of a tensor while
leaving other tokens (text) in place.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .curve import checked_int, hilbert_order, validate_shape

__all__ = ["KINDS", "BlockLocality", "TokenPermutation", "block_locality"]

KINDS = ("hilbert", "rowmajor")


@dataclass(frozen=True, eq=False)
class TokenPermutation:
    """Reorder the visual tokens of a grid along one tensor dimension; other positions keep their place.

    Along the permuted dimension (length ``total_len``) the visual tokens of ``grid`` (``n = prod(grid)`` of
    them, row-major in the input) occupy ``[offset, offset + n)``; the positions before and after (e.g. text
    tokens) are untouched. ``apply`` puts the visual tokens into curve order, ``revert`` restores row-major order;
    each is the exact inverse of the other. ``kind="rowmajor"`` is the identity, for A/B comparisons.

    Build it with ``TokenPermutation.for_grid``, which caches one instance (and its index tensors on the wanted
    device) per argument set, so a diffusion loop pays for the indices once.

    Attributes:
        grid: ``(t, h, w)`` or ``(h, w)``.
        kind: ``"hilbert"`` or ``"rowmajor"``.
        offset: position of the first visual token along the permuted dimension.
        total_len: length of the permuted dimension.
        forward_index: int64 ``[total_len]``; ``apply(x)[i] = x[forward_index[i]]`` along the dimension.
        inverse_index: int64 ``[total_len]``; ``revert(y)[i] = y[inverse_index[i]]`` along the dimension.
    """

    grid: tuple[int, ...]
    kind: str
    offset: int
    total_len: int
    forward_index: torch.Tensor
    inverse_index: torch.Tensor

    @classmethod
    def for_grid(
        cls,
        grid: Sequence[int],
        kind: str = "hilbert",
        device: torch.device | str | None = None,
        offset: int = 0,
        total_len: int | None = None,
    ) -> TokenPermutation:
        """The cached permutation for ``grid`` with the index tensors on ``device``.

        Args:
            grid: ``(t, h, w)`` or ``(h, w)`` latent grid after patching; positive integers.
            kind: ``"hilbert"`` (generalized Hilbert curve) or ``"rowmajor"`` (identity).
            device: where the index tensors live; pass the device of the tensors to be permuted (default CPU).
            offset: number of positions before the first visual token along the permuted dimension.
            total_len: length of the permuted dimension; default ``offset + prod(grid)`` (nothing after the
                visual tokens). Must be at least ``offset + prod(grid)``.

        Raises:
            ValueError: a bad ``grid``, ``kind``, ``offset`` or ``total_len``.
        """
        grid = validate_shape(grid, "grid")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        offset = checked_int(offset, "offset", minimum=0)
        n = math.prod(grid)
        if total_len is None:
            total_len = offset + n
        total_len = checked_int(total_len, "total_len", minimum=0)
        if total_len < offset + n:
            raise ValueError(
                f"total_len must be at least offset + prod(grid) = {offset} + {n} = {offset + n}, got {total_len}"
            )
        device = torch.device("cpu") if device is None else torch.device(device)
        return _cached_permutation(grid, kind, offset, total_len, device)

    @property
    def num_visual(self) -> int:
        """Number of visual tokens, ``prod(grid)``."""
        return math.prod(self.grid)

    @property
    def is_identity(self) -> bool:
        return self.kind == "rowmajor"

    def apply(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Row-major → curve order along ``dim``: ``x: [..., total_len, ...] -> same shape``.

        A row-major permutation returns ``x`` itself.
        """
        return self._gather(x, dim, self.forward_index)

    def revert(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """Curve → row-major order along ``dim``: ``x: [..., total_len, ...] -> same shape``.

        A row-major permutation returns ``x`` itself.
        """
        return self._gather(x, dim, self.inverse_index)

    def _gather(self, x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        if not -x.dim() <= dim < x.dim():
            raise ValueError(
                f"dim must be in [{-x.dim()}, {x.dim()}) for a tensor of shape {tuple(x.shape)}, got {dim}"
            )
        if x.shape[dim] != self.total_len:
            raise ValueError(
                f"x.shape[{dim}] must be total_len = {self.total_len} (offset {self.offset} + {self.num_visual} "
                f"visual tokens of grid {self.grid} + {self.total_len - self.offset - self.num_visual} after), "
                f"got {x.shape[dim]} for x of shape {tuple(x.shape)}"
            )
        if self.is_identity:
            return x
        if index.device != x.device:
            index = index.to(x.device)
        return x.index_select(dim, index)

    def __repr__(self) -> str:
        return (
            f"TokenPermutation(grid={self.grid}, kind={self.kind!r}, offset={self.offset}, "
            f"total_len={self.total_len}, device={self.forward_index.device})"
        )


@functools.lru_cache(maxsize=64)
def _cached_permutation(
    grid: tuple[int, ...], kind: str, offset: int, total_len: int, device: torch.device
) -> TokenPermutation:
    forward = torch.arange(total_len, dtype=torch.long)
    if kind == "hilbert":
        n = math.prod(grid)
        forward[offset : offset + n] = hilbert_order(grid) + offset
    inverse = torch.empty_like(forward)
    inverse[forward] = torch.arange(total_len, dtype=torch.long)
    return TokenPermutation(grid, kind, offset, total_len, forward.to(device), inverse.to(device))


@dataclass(frozen=True)
class BlockLocality:
    """How compact consecutive blocks of tokens are on their grid (lower is more compact).

    Attributes:
        extents: per grid axis (``(t, h, w)`` or ``(h, w)``), the mean over blocks of the number of cells the
            block spans along that axis (bounding-box side, ``max - min + 1``).
        radius: mean over blocks of the RMS distance of a block's cells to their centroid, in grid cells (the
            radius of gyration). A block of ``b`` cells cannot beat the radius of a ball of ``b`` cells; a
            row-major block of a wide image is a long thin strip with a large radius.
        num_blocks: number of blocks averaged, the last one possibly partial.
    """

    extents: tuple[float, ...]
    radius: float
    num_blocks: int

    @property
    def mean_extent(self) -> float:
        """Mean bounding-box side, averaged over the axes of the grid."""
        return sum(self.extents) / len(self.extents)


def block_locality(order: torch.Tensor, shape: Sequence[int], block_size: int = 128) -> BlockLocality:
    """Spatial compactness of consecutive ``block_size`` blocks of tokens taken in ``order``.

    Block-sparse attention mean-pools each block of Q and K; the pooled vector represents the block well when its
    tokens are close on the grid. This measures that closeness as the mean radius of gyration of the blocks and
    their mean bounding-box sides (see ``BlockLocality``).

    Args:
        order: int ``[n]``, row-major token indices in the order to measure (``hilbert_order(shape)``, or
            ``torch.arange(n)`` for row-major); ``n = prod(shape)``.
        shape: ``(t, h, w)`` or ``(h, w)``.
        block_size: tokens per block (the attention kernel's block size); the last block may be partial.

    Raises:
        ValueError: ``shape`` is invalid, ``order`` is not 1-D of length ``prod(shape)``, or ``block_size`` < 1.
    """
    shape = validate_shape(shape)
    n = math.prod(shape)
    if order.dim() != 1 or order.numel() != n:
        raise ValueError(f"order must be 1-D of length prod(shape) = {n}, got shape {tuple(order.shape)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    coords = _coordinates(order.detach().to("cpu", torch.long), shape)
    num_full = n // block_size
    groups = [coords[: num_full * block_size].view(num_full, block_size, len(shape))]
    if n % block_size:
        groups.append(coords[num_full * block_size :].unsqueeze(0))
    extents, radii = [], []
    for group in groups:
        extents.append(group.amax(dim=1) - group.amin(dim=1) + 1)
        centred = group - group.mean(dim=1, keepdim=True)
        radii.append(centred.pow(2).sum(dim=-1).mean(dim=1).sqrt())
    extent = torch.cat(extents).mean(dim=0)
    return BlockLocality(
        extents=tuple(float(e) for e in extent),
        radius=float(torch.cat(radii).mean()),
        num_blocks=sum(len(r) for r in radii),
    )


def _coordinates(order: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Grid coordinates ``[n, len(shape)]`` (float64) of row-major token indices ``order: [n]``."""
    coords = []
    rest = order
    for size in reversed(shape):
        coords.append(rest % size)
        rest = rest // size
    return torch.stack(coords[::-1], dim=-1).to(torch.float64)
