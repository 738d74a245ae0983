"""Token geometry of one transformer forward: the user's override (`SpargeGeometry`) and what the geometry hook read
(`ForwardGeometry`).

The attention sequence of every supported model is the visual tokens (``num_visual`` of them, the first
``prod(grid)`` forming the latent grid) plus, on one side, the text tokens. The hook records the visual count and the
text side; the text range of any attention call follows from its sequence length, so it has exactly one source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

TEXT_SIDES = ("first", "last", "none")


@dataclass(frozen=True)
class SpargeGeometry:
    """Explicit geometry; any field left None is read from the transformer's forward.

    Attributes:
        grid: latent grid after patching, ``(t, h, w)`` for video or ``(h, w)`` for images. Its token count must
            equal the model's visual token count (image models: at most; the first ``prod(grid)`` image tokens are
            reordered, condition images after them keep their place).
        text_len: number of text tokens whose rows and columns are always computed (clipped to the model's text
            length); None = all text tokens of the call.
        step: fixed denoising step index used by the ``dense_steps`` policy and the statistics; None = counted from
            the timesteps the transformer sees.
    """

    grid: Optional[Tuple[int, ...]] = None
    text_len: Optional[int] = None
    step: Optional[int] = None

    def __post_init__(self) -> None:
        if self.grid is not None:
            try:
                grid = tuple(int(g) for g in self.grid)
            except (TypeError, ValueError):
                raise ValueError(
                    f"SpargeGeometry.grid must be (t, h, w) or (h, w) integers, got {self.grid!r}") from None
            if len(grid) not in (2, 3) or min(grid) < 1:
                raise ValueError(f"SpargeGeometry.grid must be 2 or 3 positive integers, got {self.grid!r}")
            object.__setattr__(self, "grid", grid)
        for name in ("text_len", "step"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"SpargeGeometry.{name} must be an integer >= 0 or None, got {value!r}")


class ForwardGeometry:
    """What the geometry hook found for the current transformer forward (one mutable object per transformer).

    Attributes:
        active: True once the geometry hook has seen a forward (False for standalone processors).
        grid: latent grid after patching, or None when unknown (no hooks, or an unexpected token count).
        num_visual: visual tokens of the hidden states (image models: condition-image tokens included).
        text_len: text tokens the model was given (Mochi: the padded length; valid tokens are per sample).
        batch: batch size of the hidden states, or None when the hook did not say.
        text_first: True when the attention sequence is ``[text, visual]``, False for ``[visual, text]``.
        text_side: ``"first"``, ``"last"`` or ``"none"`` (visual-only self-attention).
        step: denoising step index; ``generation``: how many times the step counter restarted at 0.
        forward_index: transformer forwards seen since `apply_sparge`.
        dense_step: ``step < config.dense_steps``.
        permutation: visual-token order applied at the boundary in this forward (``apply`` / ``revert`` along a
            dim), or None (row-major order kept).
        entry_permutation: the same order for the tensor where the hidden states enter when it also holds text
            (CogVideoX: the patch embedding output ``[text, visual]``), or None.
    """

    def __init__(self) -> None:
        self.active = False
        self.grid: Optional[Tuple[int, ...]] = None
        self.num_visual = 0
        self.text_len: Optional[int] = None
        self.batch: Optional[int] = None
        self.text_side = "first"
        self.step = 0
        self.generation = 0
        self.forward_index = -1
        self.dense_step = False
        self.permutation = None
        self.entry_permutation = None

    @property
    def text_first(self) -> bool:
        return self.text_side == "first"

    def text_range(self, seq_len: int) -> Tuple[int, int]:
        """``(start, end)`` of the text tokens in a self-attention sequence of ``seq_len`` tokens (empty when the
        sequence holds only visual tokens or the geometry is unknown)."""
        extra = seq_len - self.num_visual
        if not self.active or extra <= 0 or self.text_side == "none":
            return (0, 0)
        return (0, extra) if self.text_side == "first" else (self.num_visual, seq_len)

    def visual_offset(self, seq_len: int) -> int:
        """Position of the first visual token in a sequence of ``seq_len`` tokens."""
        start, end = self.text_range(seq_len)
        return end if self.text_side == "first" and end > start else 0

    def as_dict(self) -> dict:
        return {
            "grid": self.grid, "num_visual": self.num_visual, "text_len": self.text_len,
            "text_side": self.text_side, "step": self.step, "generation": self.generation,
            "forward_index": self.forward_index, "dense_step": self.dense_step,
            "reordered": self.permutation is not None,
        }

    def __repr__(self) -> str:
        return "ForwardGeometry(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


def resolve_grid(family: str, inferred: Optional[Tuple[int, ...]], num_visual: int, override: SpargeGeometry,
                 allow_partial: bool = False) -> Optional[Tuple[int, ...]]:
    """The grid of this forward: the override when given (checked against the token count), else the inferred one."""
    if override.grid is None:
        return inferred
    grid = override.grid
    count = math.prod(grid)
    if count == num_visual or (allow_partial and count <= num_visual):
        return grid
    raise ValueError(
        f"SpargeGeometry.grid={grid} has {count} tokens but this {family} forward has {num_visual} visual tokens"
    )


__all__ = ["TEXT_SIDES", "ForwardGeometry", "SpargeGeometry", "resolve_grid"]
