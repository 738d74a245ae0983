"""The step context shared by the Sparge attention layers of one transformer: the config (stored here, once), the
geometry of the current forward, the denoising step, the statistics, and which layer is calling right now.

Two ways a layer reaches its context: a copied processor holds it (CogVideoX, Mochi); a layer that goes through
diffusers' attention dispatch is announced by a forward pre-hook on its attention module, which sets the ACTIVE
LAYER slot (`active_layer`) that the Sparge backend reads (the backend receives only q, k, v and the mask).
"""

from __future__ import annotations

import itertools
import logging
import weakref
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from ._logging import log_once
from .budget_guard import BudgetGuard
from .config import SpargeConfig
from .finite import FiniteCheck
from .geometry import ForwardGeometry, SpargeGeometry

logger = logging.getLogger(__name__)

REORDER_AT = ("boundary", "layer")


class SpargeContext:
    """State shared by the Sparge attention layers of one transformer: config, geometry of the current forward, stats.

    Step index: the geometry hook reads the first timestep of each forward. A timestep equal to the previous one is the
    same step (a second forward for true CFG), one that moves in the denoising direction (down, as diffusers 0.42
    pipelines call their transformers) is the next step, and one that moves back up starts a new generation at
    step 0. `apply_sparge` on a pipeline (through its scheduler, `sparge_diffusers.call_hook`) and the wrapped
    pipelines also restart the counter at the start of every call (`begin_call`); the layers' guards start afresh
    then. A fixed ``SpargeGeometry.step`` overrides all of this. Without ``dense_steps`` and statistics the step is
    not needed and not counted (reading the timestep would synchronize a GPU once per forward).
    """

    def __init__(self, config: SpargeConfig, *, collect_stats: bool = False, geometry: Optional[SpargeGeometry] = None,
                 reorder_at: str = "boundary", family: Optional[str] = None) -> None:
        from .run_stats import SpargeRunStats

        if not isinstance(config, SpargeConfig):
            raise ValueError(f"config must be a SpargeConfig or None, got {type(config).__name__}")
        if geometry is not None and not isinstance(geometry, SpargeGeometry):
            raise ValueError(f"geometry must be a SpargeGeometry or None, got {type(geometry).__name__}")
        if reorder_at not in REORDER_AT:
            raise ValueError(f"reorder_at must be one of {REORDER_AT}, got {reorder_at!r}")
        self.config = config
        self.collect_stats = bool(collect_stats)
        self.geometry = geometry or SpargeGeometry()
        self.reorder_at = reorder_at
        self.family = family
        self.stats = SpargeRunStats()
        self.current = ForwardGeometry()
        self.layer_ids: Dict[int, int] = {}
        self.seen_text_len: Optional[int] = None
        self.mask_cache: dict = {}
        self.calibration_recorder = None  # a `CalibrationRecorder` while `sparge-diffusers calibrate` runs
        self.pair_masks = False  # the family's masks are pair masks m[i, j] = valid[i] & valid[j] (HunyuanVideo 1.5)
        self.finite = FiniteCheck()  # the deferred NaN / inf check of this forward's calls (`end_forward` reads it)
        self.head_dim: Optional[int] = None  # the transformer's attention head dim (`reorder_pays`), when known
        self.heads: Optional[int] = None  # and its attention heads
        self._last_timestep: Optional[float] = None

    @property
    def reorder_kind(self) -> str:
        """Token order kind for ``config.reorder``: ``"hilbert"`` or ``"rowmajor"`` (identity)."""
        return "hilbert" if self.config.reorder == "hilbert" else "rowmajor"

    def text_keep_len(self, text_len: int) -> int:
        """Text tokens to keep of a text segment of ``text_len`` tokens (``SpargeGeometry.text_len`` clips it)."""
        return text_len if self.geometry.text_len is None else min(text_len, self.geometry.text_len)

    def collecting(self) -> bool:
        return self.collect_stats and not torch.compiler.is_compiling()

    def begin_call(self) -> None:
        """A new pipeline call: the next forward is step 0, and no layer reuses the drop masses or block map of the
        last call."""
        self._last_timestep = None
        self.forget_layer_state()

    def forget_layer_state(self) -> None:
        """Drop what the layers' guards carry across calls (`BudgetGuard.forget`)."""
        for layer in self.layers():
            layer.guard.forget()

    def layers(self) -> list:
        """The live `LayerCall`s made for this context."""
        return [layer for layer in list(_LAYERS.values()) if layer.context is self]

    def begin_forward(self, *, grid, num_visual: int, text_len: Optional[int], text_side: str, timestep,
                      batch: Optional[int] = None) -> None:
        """Called by the geometry hook at the start of every transformer forward (``batch``: of its hidden states)."""
        cur = self.current
        cur.batch = batch
        cur.forward_index += 1
        cur.active = True
        cur.grid = grid
        cur.num_visual = num_visual
        cur.text_len = text_len
        cur.text_side = text_side
        self._advance_step(timestep)
        cur.dense_step = cur.step < self.config.dense_steps
        cur.permutation = None
        cur.entry_permutation = None
        self.finite.reset()  # what a forward that raised left behind

    def end_forward(self) -> None:
        """Called by the transformer's forward hook: reads the deferred finite check of this forward (one host
        synchronization when it queued anything; nothing while ``torch.compile`` traces)."""
        if torch.compiler.is_compiling() or not len(self.finite):
            return
        cur = self.current
        self.finite.raise_if_set(f"forward {cur.forward_index}, step {cur.step}")

    def _advance_step(self, timestep) -> None:
        cur = self.current
        if self.geometry.step is not None:
            cur.step = self.geometry.step
            return
        if self.config.dense_steps == 0 and not self.collecting():
            return  # nobody needs the step: skip reading the timestep (a device-to-host sync on a GPU)
        value = _read_first_value(timestep)
        last = self._last_timestep
        restarted = False
        if last is None or value is None:
            restarted = last is not None or cur.forward_index > 0
            cur.step = 0
        elif value > last:
            restarted = True
            cur.step = 0
        elif value < last:
            cur.step += 1
        if restarted:  # a new generation starts from noise
            cur.generation += 1
            self.forget_layer_state()
        self._last_timestep = value

    def permutation_for(self, device):
        """The boundary order of the visual tokens for the current grid, or None (row-major kept)."""
        from .token_order import BoundaryOrder

        cur = self.current
        if cur.grid is None or self.reorder_kind == "rowmajor" or self.reorder_at != "boundary":
            return None
        if not self.reorder_pays(device):
            return None
        return BoundaryOrder(cur.grid, self.reorder_kind, cur.num_visual, device)

    def reorder_pays(self, device) -> bool:
        """False when the speed rule (`speed_rule.dense_for`) sends this forward's attention calls, of the visual
        (and joint text) length, to dense SDPA: then reordering the tokens only costs time (Flux.1-dev at 4,608
        tokens, compiled, measured 0.995x stock with the order applied and every call dense). True when unknown."""
        from .speed_rule import dense_for

        cur = self.current
        if self.head_dim is None or self.heads is None or cur.batch is None:
            return True
        text = cur.text_len or 0 if cur.text_side != "none" else 0
        seq_len = cur.num_visual + text
        forced = (self.text_keep_len(text) if text else 0) / seq_len if seq_len else 0.0
        if not dense_for(device, self.head_dim, seq_len, cur.batch * self.heads, self.config, forced):
            return True
        if not torch.compiler.is_compiling():
            log_once(logger, f"reorder-skip:{seq_len}:{self.head_dim}", "sparge: the speed rule sends attention "
                     "calls of %d tokens (head dim %d) to dense SDPA on this GPU; the token order is kept as is",
                     seq_len, self.head_dim, level=logging.INFO)
        return False

    def layer_index(self, key) -> int:
        """Layer index of an attention module without a fixed one (standalone processors): order of first call."""
        return self.layer_ids.setdefault(id(key), len(self.layer_ids))


@torch.compiler.disable
def _read_first_value(timestep) -> Optional[float]:
    # a device-to-host read: kept out of compiled graphs (only with dense_steps, stats or no fixed step)
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().flatten()[0]) if timestep.numel() else None
    try:
        return float(timestep)
    except (TypeError, ValueError):
        return None


@dataclass
class LayerCall:
    """One attention layer as the Sparge backend sees it: its context, index and module path, and whether it is a
    layer where sparse attention pays (visual self-attention or joint attention), set by the family."""

    context: SpargeContext
    index: int
    name: Optional[str]
    sparse: bool = True
    text_hint: Optional[tuple] = None  # standalone processors only: (start, end) of the text when no hook ran
    # one LayerCall for the calls of many layers (the attention backend outside apply_sparge): state across calls
    # (the guard's drop masses and block maps) would pass from one layer to another, so it keeps none
    shared: bool = False
    guard: BudgetGuard = field(default_factory=BudgetGuard, compare=False)  # the error budget across calls
    map_reused: bool = field(default=False, compare=False)  # the last call attended a map of an earlier call
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # a name for opaque ops that need the layer back (compiled masked calls): see `layer_by_key`
        self.key = f"layer{next(_KEYS)}"
        _LAYERS[self.key] = self


_KEYS = itertools.count()
_LAYERS: "weakref.WeakValueDictionary[str, LayerCall]" = weakref.WeakValueDictionary()


def layer_by_key(key: str) -> LayerCall:
    return _LAYERS[key]


class _ActiveLayer:
    """The layer whose attention is being computed (set by the attention module's pre-hook, cleared after)."""

    __slots__ = ("call",)

    def __init__(self) -> None:
        self.call: Optional[LayerCall] = None


active_layer = _ActiveLayer()

__all__ = ["REORDER_AT", "LayerCall", "SpargeContext", "active_layer", "layer_by_key"]
