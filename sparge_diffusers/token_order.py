"""The visual-token order applied once at the transformer boundary, in a form ``torch.compile`` traces without a
graph break.

`TokenPermutation` builds its index tensors in Python (a generalized Hilbert curve, cached per grid); dynamo would
trace that construction into the graph. Here the indices come from one custom op, ``sparge_diffusers::token_order``,
whose eager implementation reads the same cache and whose fake implementation only declares the shapes, so a compiled
transformer keeps one graph and still pays for the curve once per grid.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from .hilbert import TokenPermutation


@torch.library.custom_op("sparge_diffusers::token_order", mutates_args=())
def _token_order(grid: List[int], kind: str, offset: int, total_len: int,
                 device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    perm = TokenPermutation.for_grid(tuple(grid), kind, device=device, offset=offset, total_len=total_len)
    return perm.forward_index.clone(), perm.inverse_index.clone()


@_token_order.register_fake
def _(grid, kind, offset, total_len, device):
    empty = torch.empty(total_len, dtype=torch.long, device=device)
    return empty, torch.empty_like(empty)


# ids-based order (Flux, Flux.2): the grid is read from the position ids, which is data-dependent; the op reads them
# eagerly (cached by the family), so the compiled graph holds one opaque call
_IDS_ORDER_FNS: dict = {}


def register_ids_order(name: str, fn) -> None:
    """``fn(ids, kind) -> (forward_index, inverse_index)`` for `ids_token_order` under ``name``."""
    _IDS_ORDER_FNS[name] = fn


@torch.library.custom_op("sparge_diffusers::ids_token_order", mutates_args=())
def _ids_token_order(ids: torch.Tensor, name: str, kind: str) -> Tuple[torch.Tensor, torch.Tensor]:
    forward, inverse = _IDS_ORDER_FNS[name](ids, kind)
    return forward.clone(), inverse.clone()


@_ids_token_order.register_fake
def _(ids, name, kind):
    empty = torch.empty(ids.shape[0], dtype=torch.long, device=ids.device)
    return empty, torch.empty_like(empty)


class BoundaryOrder:
    """Visual tokens ``[0, prod(grid))`` of a ``total_len`` visual stream in curve order; later tokens in place.

    ``apply(x, dim)`` puts row-major visual tokens in curve order along ``dim``; ``revert`` undoes it. A tensor whose
    ``dim`` is longer than ``total_len`` (e.g. ``[visual, text]``) is permuted on its first ``total_len`` positions.
    ``offset`` leading tokens (e.g. the text of ``[text, visual]``) keep their place in front of the stream; the
    attribute ``total_len`` then counts them too. The indices are cached per geometry either way (under
    ``torch.compile`` they come from the ``token_order`` op, so no curve construction is traced).
    """

    __slots__ = ("grid", "kind", "total_len", "forward_index", "inverse_index")

    def __init__(self, grid: Sequence[int], kind: str, total_len: int, device, *, indices=None,
                 offset: int = 0) -> None:
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        self.kind = kind
        self.total_len = int(offset) + int(total_len)
        device = torch.device(device)
        if indices is not None:
            self.forward_index, self.inverse_index = indices
        elif torch.compiler.is_compiling():
            self.forward_index, self.inverse_index = _token_order(list(self.grid), kind, int(offset),
                                                                  self.total_len, device)
        else:
            perm = TokenPermutation.for_grid(self.grid, kind, device=device, offset=offset, total_len=self.total_len)
            self.forward_index, self.inverse_index = perm.forward_index, perm.inverse_index

    @property
    def is_identity(self) -> bool:
        return self.kind == "rowmajor"

    def apply(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return self._gather(x, dim, self.forward_index)

    def revert(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return self._gather(x, dim, self.inverse_index)

    def _gather(self, x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        length = x.shape[dim]
        if length < self.total_len:
            raise ValueError(f"a tensor with {length} positions along dim {dim} cannot hold the {self.total_len} "
                             f"visual tokens of grid {self.grid}")
        if index.device != x.device:
            index = index.to(x.device)
        if length == self.total_len:
            return x.index_select(dim, index)
        head, tail = x.split([self.total_len, length - self.total_len], dim=dim)
        return torch.cat([head.index_select(dim, index), tail], dim=dim)

    def __repr__(self) -> str:
        return f"BoundaryOrder(grid={self.grid}, kind={self.kind!r}, total_len={self.total_len})"


def ids_boundary_order(ids: torch.Tensor, name: str, kind: str) -> "BoundaryOrder":
    """The boundary order of the image tokens described by position ``ids`` ``[N, C]`` (grid unknown to the graph)."""
    indices = _ids_token_order(ids, name, kind)
    return BoundaryOrder(None, kind, ids.shape[0], ids.device, indices=indices)


__all__ = ["BoundaryOrder", "ids_boundary_order", "register_ids_order"]
