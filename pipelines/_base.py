"""What every model family of the diffusers integration provides, and the pieces they share.

A `Family` knows one transformer class of diffusers 0.42: its attention modules (in layer order), its stock
processor, how to read the geometry of a forward from the forward's arguments, and where its visual tokens enter and
leave the transformer (the boundary where the Hilbert order is applied once and reverted). `SpargePipelineMixin` turns
a diffusers pipeline class into a Sparge one (``from_pretrained(path, sparge_config=...)``, stats after a call).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from sparge_diffusers._logging import log_once
from sparge_diffusers.config import SpargeConfig
from sparge_diffusers.integration import (
    SpargeContext,
    SpargeGeometry,
    SpargeProcessor,
    apply_sparge,
    begin_sparge_call,
    get_sparge_context,
    get_sparge_stats,
    remove_sparge,
)

logger = logging.getLogger(__name__)


class BoundArguments:
    """Read and replace named arguments of a module call given as ``(args, kwargs)`` (as forward pre-hooks see them).

    Positions come from the signature of the module class's ``forward`` (not the instance attribute, which
    accelerate or diffusers hooks may have wrapped).
    """

    _signatures: Dict[type, List[str]] = {}

    def __init__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        cls = type(module)
        names = self._signatures.get(cls)
        if names is None:
            params = list(inspect.signature(cls.forward).parameters.values())[1:]
            names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            self._signatures[cls] = names
        self._names = names
        self.args = list(args)
        self.kwargs = dict(kwargs)
        self.changed = False

    def _position(self, name: str) -> Optional[int]:
        if name in self.kwargs:
            return None
        try:
            index = self._names.index(name)
        except ValueError:
            return None
        return index if index < len(self.args) else None

    def get(self, name: str, default=None):
        index = self._position(name)
        if index is not None:
            return self.args[index]
        return self.kwargs.get(name, default)

    def set(self, name: str, value) -> None:
        index = self._position(name)
        if index is not None:
            self.args[index] = value
        else:
            self.kwargs[name] = value
        self.changed = True

    def result(self):
        """What a ``with_kwargs`` pre-hook returns: None when nothing changed."""
        return (tuple(self.args), self.kwargs) if self.changed else None


@functools.lru_cache(maxsize=None)
def _import_class(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


class Family:
    """One transformer class of diffusers 0.42 and how Sparge attaches to it. Subclasses fill in the blanks."""

    name: str = ""
    processor_class: type = SpargeProcessor
    # diffusers classes as "module:Name", imported on first use (diffusers stays an optional import)
    transformer_path: str = ""
    attention_path: str = ""
    stock_processor_paths: Tuple[str, ...] = ()

    # identification

    def transformer_class(self) -> type:
        return _import_class(self.transformer_path)

    def attention_class(self) -> type:
        return _import_class(self.attention_path)

    def stock_processor_classes(self) -> Tuple[type, ...]:
        return tuple(_import_class(path) for path in self.stock_processor_paths)

    def stock_processor(self):
        """A fresh instance of the stock processor (for processors set without `apply_sparge`)."""
        return self.stock_processor_classes()[0]()

    def is_stock_processor(self, processor) -> bool:
        return type(processor) in self.stock_processor_classes()

    # attention layers

    def attention_layers(self, transformer) -> List[Tuple[int, str, torch.nn.Module]]:
        """``(layer index, module path, attention module)`` in the order the forward calls them."""
        attention_class = self.attention_class()
        layers = [(name, module) for name, module in transformer.named_modules() if isinstance(module, attention_class)]
        return [(index, name, module) for index, (name, module) in enumerate(layers)]

    def get_processor(self, attn):
        return attn.processor

    def set_processor(self, attn, processor) -> None:
        if hasattr(attn, "set_processor"):
            attn.set_processor(processor)
        else:  # MochiAttention has no set_processor in diffusers 0.42
            attn.processor = processor

    # geometry and boundary

    def install_hooks(self, transformer, context: SpargeContext) -> List[Any]:
        """Register the geometry pre-hook and the boundary reorder hooks; returns the removable handles."""
        family = self

        @torch.compiler.disable
        def geometry_hook(module, args, kwargs):
            bound = BoundArguments(module, args, kwargs)
            family.on_forward(module, context, bound)
            return bound.result()

        handles = [transformer.register_forward_pre_hook(geometry_hook, with_kwargs=True)]
        handles += self.install_boundary_hooks(transformer, context)
        return handles

    def on_forward(self, transformer, context: SpargeContext, bound: BoundArguments) -> None:
        """Read the geometry of this forward, start it on the context, permute what enters at the boundary."""
        raise NotImplementedError

    def install_boundary_hooks(self, transformer, context: SpargeContext) -> List[Any]:
        raise NotImplementedError


def resolve_grid(family: str, inferred: Tuple[int, ...], num_visual: int, override: SpargeGeometry,
                 allow_partial: bool = False) -> Tuple[int, ...]:
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
    if context.reorder_at != "boundary":
        return None
    perm = context.permutation_for(device)
    if perm is not None and perm.is_identity:
        return None
    return perm


# wrapped pipelines


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

    def enable_sparge(self, config: Optional[SpargeConfig] = None, *, geometry: Optional[SpargeGeometry] = None,
                      collect_stats: bool = True, reorder_at: str = "boundary"):
        self._sparge_disabled = False
        apply_sparge(self, config, geometry=geometry, collect_stats=collect_stats, reorder_at=reorder_at)
        return self

    def disable_sparge(self):
        self._sparge_disabled = True
        remove_sparge(self)
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


def first_difference(ids: torch.Tensor) -> int:
    """Length of the leading run of equal values of a 1-D tensor."""
    diff = torch.nonzero(ids != ids[0])
    return int(diff[0, 0]) if diff.numel() else int(ids.numel())


__all__: Sequence[str] = [
    "BoundArguments",
    "Family",
    "SpargePipelineMixin",
    "boundary_permutation",
    "resolve_grid",
    "revert_output_hook",
]
