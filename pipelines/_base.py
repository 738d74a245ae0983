"""What the model files share: `SpargePipelineMixin` (a diffusers pipeline class turned into a Sparge one:
``from_pretrained(path, sparge_config=...)``, stats after a call) and small geometry helpers.

The family interface itself (`Family`, `Boundary`, `BoundArguments`, the registry) is core
(`sparge_diffusers.family`); the model files implement it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, List, Optional, Sequence

import torch

from sparge_diffusers._logging import log_once
from sparge_diffusers.config import SpargeConfig
from sparge_diffusers.context import SpargeContext
from sparge_diffusers.family import BoundArguments, Boundary, Family, video_grid
from sparge_diffusers.geometry import SpargeGeometry, resolve_grid
from sparge_diffusers.integration import (
    apply_sparge,
    begin_sparge_call,
    get_sparge_context,
    get_sparge_stats,
    remove_sparge,
)

logger = logging.getLogger(__name__)


def revert_output_hook(context: SpargeContext) -> Callable:
    """Forward hook for the final projection: visual tokens back to row-major order (dim 1) before unpatchify."""

    def hook(module, args, output):
        perm = context.current.permutation
        if perm is None:
            return None
        return perm.revert(output, dim=1)

    return hook


def boundary_permutation(context: SpargeContext, device) -> Optional[Any]:
    """The visual-token permutation for this forward when reordering at the boundary, else None."""
    return context.permutation_for(device)


# wrapped pipelines


def _null_components(path) -> List[str]:
    """Names of the components a local diffusers folder's ``model_index.json`` records as ``[null, null]``."""
    import json
    import os

    index = os.path.join(str(path), "model_index.json")
    if not os.path.isfile(index):
        return []
    try:
        with open(index, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return []
    if not isinstance(content, dict):
        return []
    return [name for name, value in content.items()
            if not name.startswith("_") and isinstance(value, list) and value[:1] == [None]]


class SpargePipelineMixin:
    """Mix into a diffusers pipeline class: Sparge attention on its transformer, statistics after each call.

    ``from_pretrained(local_path, sparge_config=..., **kwargs)`` loads the stock pipeline and applies
    `apply_sparge`; ``__call__`` is the stock one (the step counter restarts and, with stats on, the stats of the
    previous call are cleared first). A pipeline built from components gets ``SpargeConfig()`` at its first call
    unless `enable_sparge` or `disable_sparge` was called.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, sparge_config: Optional[SpargeConfig] = None,
                        sparge_geometry: Optional[SpargeGeometry] = None, collect_stats: bool = True, **kwargs):
        """Components a local folder saved as ``[null, null]`` (e.g. the tiny pipelines' missing text encoder and
        tokenizer) load as None; stock diffusers refuses such a folder unless they are passed explicitly."""
        for name in _null_components(pretrained_model_name_or_path):
            kwargs.setdefault(name, None)
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipe.enable_sparge(sparge_config, geometry=sparge_geometry, collect_stats=collect_stats)
        return pipe

    @classmethod
    def from_pipe(cls, pipeline, *, sparge_config: Optional[SpargeConfig] = None,
                  sparge_geometry: Optional[SpargeGeometry] = None, collect_stats: bool = True, **kwargs):
        """Wrap the components of an existing pipeline (the transformer is shared, so it gets Sparge too)."""
        pipe = super().from_pipe(pipeline, **kwargs)
        pipe.enable_sparge(sparge_config, geometry=sparge_geometry, collect_stats=collect_stats)
        return pipe

    def _sparge_extra_transformers(self):
        """Further denoisers of the pipeline (Wan 2.2 A14B: ``transformer_2``, the low-noise expert)."""
        extra = getattr(self, "transformer_2", None)
        return [extra] if isinstance(extra, torch.nn.Module) else []

    def enable_sparge(self, config: Optional[SpargeConfig] = None, *, geometry: Optional[SpargeGeometry] = None,
                      collect_stats: bool = True, reorder_at: str = "boundary"):
        self._sparge_disabled = False
        apply_sparge(self, config, geometry=geometry, collect_stats=collect_stats, reorder_at=reorder_at)
        for extra in self._sparge_extra_transformers():
            apply_sparge(extra, config, geometry=geometry, collect_stats=collect_stats, reorder_at=reorder_at)
        return self

    def disable_sparge(self):
        self._sparge_disabled = True
        remove_sparge(self)
        for extra in self._sparge_extra_transformers():
            remove_sparge(extra)
        return self

    @property
    def sparge_config(self) -> Optional[SpargeConfig]:
        context = get_sparge_context(self)
        return None if context is None else context.config

    @property
    def sparge_stats(self):
        """Statistics of the last call (`SpargeRunStats`; empty when stats are off)."""
        return get_sparge_stats(self)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        stock_call = next((base.__dict__["__call__"] for base in cls.__mro__[1:]
                           if "__call__" in base.__dict__ and base is not SpargePipelineMixin), None)
        if stock_call is None or "__call__" in cls.__dict__:
            return

        @functools.wraps(stock_call)  # same signature and docs as the stock pipeline call
        def __call__(self, *args, **kwargs):
            self._sparge_begin_call()
            return stock_call(self, *args, **kwargs)

        cls.__call__ = __call__

    def _sparge_begin_call(self) -> None:
        if get_sparge_context(self) is None and not getattr(self, "_sparge_disabled", False):
            log_once(logger, f"lazy-enable:{type(self).__name__}", "%s: no sparge_config given; using SpargeConfig()",
                     type(self).__name__, level=logging.INFO)
            self.enable_sparge()
        begin_sparge_call(self, reset_stats=True)
        for extra in self._sparge_extra_transformers():
            begin_sparge_call(extra, reset_stats=True)


def first_difference(ids: torch.Tensor) -> int:
    """Length of the leading run of equal values of a 1-D tensor."""
    diff = torch.nonzero(ids != ids[0])
    return int(diff[0, 0]) if diff.numel() else int(ids.numel())


__all__: Sequence[str] = [
    "BoundArguments",
    "Boundary",
    "Family",
    "first_difference",
    "video_grid",
    "SpargePipelineMixin",
    "boundary_permutation",
    "resolve_grid",
    "revert_output_hook",
]
