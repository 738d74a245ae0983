"""Live tensor memory on any device: a TorchDispatchMode that follows the bytes of every tensor storage created under
it while it is alive, and keeps the peak (and what was alive at the peak). The CPU has no caching allocator with
peak statistics, so the CPU benchmarks and tests measure peak memory with this; on a GPU it agrees with
``torch.cuda.max_memory_allocated`` up to allocator rounding for tensors made under the mode.

Storages that existed before the mode (weights, inputs) are not counted; a storage is released when the last tensor
object made under the mode that refers to it is garbage collected.
"""

from __future__ import annotations

import weakref
from typing import Dict, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created under the mode that are still alive; the peak, and a snapshot of the
    live storages (creating op, shape, dtype, bytes) at the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.at_peak: List[Tuple[str, tuple, str, int]] = []
        self._refs: Dict[int, int] = {}
        self._info: Dict[int, Tuple[str, tuple, str, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        before = {_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            key = _key(tensor)
            nbytes = tensor.untyped_storage().nbytes()
            if key in self._refs:
                self._refs[key] += 1
            elif key in before or nbytes == 0:
                continue  # an input's storage (made before the mode) or a view of one
            else:
                self._refs[key] = 1
                self._info[key] = (func.__name__, tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""), nbytes)
                self.live += nbytes
                if self.live > self.peak:
                    self.peak = self.live
                    self.at_peak = sorted(self._info.values(), key=lambda item: -item[3])[:12]
            weakref.finalize(tensor, self._release, key)
        return out

    def _release(self, key: int) -> None:
        count = self._refs.get(key)
        if count is None:
            return
        if count > 1:
            self._refs[key] = count - 1
            return
        del self._refs[key]
        self.live -= self._info.pop(key)[3]


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


__all__ = ["LiveBytes"]
