"""The NaN / inf check of `sparge_attn`'s inputs, kept on the device.

Why check at all: the quantized path does not propagate a NaN the way softmax attention does. A NaN in ``q`` or
``k`` becomes a finite INT8 value (the GPU's float-to-int conversion of NaN gives 0) and the output is finite
garbage instead of NaN, so a broken input would go unnoticed. Checking costs one extra read of q, k and v.

Why on the device: ``bool(torch.isfinite(x).all())`` synchronizes the host with the GPU, three times per call; in
eager mode every synchronization drains the launch queue, so the next layer's kernels start only after the host
has launched them again. Here each call adds the fp32 L1 norms of q, k and v (one ``torch._foreach_norm``, no
synchronization): a NaN or ±inf anywhere makes the norm NaN or inf. The sums are in fp32, so a finite input could
only be reported once ``sum |x|`` exceeds 3.4e38, far beyond any activation a model survives.

Who reads it: `sparge_attn` called alone reads the norms at once (one synchronization per call, instead of three);
the diffusers integration passes the `FiniteCheck` of its context, and `apply_sparge`'s forward hook reads it once
at the end of every transformer forward (one synchronization per denoising forward) and raises ``ValueError``
naming the first layer whose inputs were not finite. Calls traced by ``torch.compile`` or captured in a CUDA graph
are not checked (a read inside them would break the graph).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

NAMES = ("q", "k", "v")
# entries kept before they are folded into one on the device (a forward that is never finished must not grow them)
MAX_ENTRIES = 512


def input_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """fp32 ``[len(tensors)]`` L1 norms (non-finite iff a tensor holds NaN or ±inf); no host synchronization."""
    return torch.stack(torch._foreach_norm(list(tensors), 1, dtype=torch.float32))


def skip_check() -> bool:
    """True where a host read is impossible: tracing by ``torch.compile`` or capturing a CUDA graph."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def raise_if_not_finite(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """The immediate check (one host synchronization): ValueError naming the first non-finite input."""
    finite = torch.isfinite(input_norms((q, k, v))).tolist()
    for name, ok in zip(NAMES, finite):
        if not ok:
            raise ValueError(f"{name} contains NaN or inf; sparge_attn needs finite inputs")


class FiniteCheck:
    """Deferred NaN / inf check of many `sparge_attn` calls, read with one host synchronization (`raise_if_set`).

    ``add(layer, q, k, v)`` queues the norms of one call on the device; ``raise_if_set(where)`` reads every queued
    norm at once, forgets them, and raises ``ValueError`` naming the first layer (and input) that was not finite.
    """

    __slots__ = ("_layers", "_norms")

    def __init__(self) -> None:
        self._layers: List[Optional[int]] = []
        self._norms: List[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self._norms)

    def add(self, layer: Optional[int], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if len(self._norms) >= MAX_ENTRIES:
            self._fold()
        self._layers.append(layer)
        self._norms.append(input_norms((q, k, v)))

    def _fold(self) -> None:
        # one device value per device that is non-finite iff any queued norm was; the layer is no longer known
        folded: dict = {}
        for norms in self._norms:
            folded.setdefault(norms.device, []).append(norms)
        self._norms = [torch.stack(group).sum(dim=0) for group in folded.values()]
        self._layers = [None] * len(self._norms)

    def reset(self) -> None:
        self._layers, self._norms = [], []

    def first_bad(self) -> Optional[Tuple[Optional[int], str]]:
        """``(layer, input name)`` of the first queued call with a non-finite input, or None; forgets the queue."""
        layers, norms = self._layers, self._norms
        self.reset()
        if not norms:
            return None
        bad: List[Tuple[int, int]] = []
        by_device: dict = {}
        for position, value in enumerate(norms):
            by_device.setdefault(value.device, []).append(position)
        for positions in by_device.values():
            finite = torch.isfinite(torch.stack([norms[p] for p in positions])).tolist()  # the one host read
            for position, row in zip(positions, finite):
                for index, ok in enumerate(row):
                    if not ok:
                        bad.append((position, index))
                        break
        if not bad:
            return None
        position, index = min(bad)
        return layers[position], NAMES[index]

    def raise_if_set(self, where: str) -> None:
        """Raise ``ValueError`` when a queued call had a NaN or inf input (``where`` describes the forward)."""
        found = self.first_bad()
        if found is None:
            return
        layer, name = found
        at = "an attention layer" if layer is None else f"attention layer {layer}"
        raise ValueError(f"sparge_attn: {name} of {at} contains NaN or inf ({where}); sparse attention needs "
                         "finite inputs (SpargeConfig(check_finite=False) turns the check off)")

    def __repr__(self) -> str:
        return f"FiniteCheck(queued={len(self)})"


__all__ = ["FiniteCheck", "input_norms", "raise_if_not_finite", "skip_check"]
