"""Model families: what Sparge needs to know about one diffusers transformer class, and the registry they live in.

The core defines the interface (`Family`) and the registry (`register_family`, `family_for`); the model files in
``sparge_diffusers.pipelines`` fill them in and register themselves when that package is imported (the package root
``sparge_diffusers`` imports it, so the public API always sees the built-in families). The core never imports a model
file by name: an entry names its `Family` subclass as a ``"module:Class"`` path, loaded when a transformer of that
class is first given to `apply_sparge`.

A family is data where it can be:
    - ``transformer_path`` / ``attention_paths`` / ``stock_processor_paths``: the diffusers classes;
    - ``text_side``: ``"first"`` (``[text, visual]``), ``"last"`` (``[visual, text]``) or ``"none"``;
    - ``uses_dispatch``: its processors call ``dispatch_attention_fn`` (the Sparge backend is set on them) or
      not (a copied processor, ``processor_class``, replaces the stock one: CogVideoX, Mochi);
    - ``dense_module_suffixes``: attention modules left stock (cross-attention with short keys);
    - ``ignored_module_prefixes``: attention modules that are not the model's layers (text refiners);
    - ``entry`` / ``exit``: `Boundary` points where the visual tokens enter the blocks (permuted into curve order
      once) and leave them (restored before unpatchify); hidden states and rotary embeddings move together;
    - `grid`: how the latent grid after patching follows from the forward's arguments;
    - `context_parallel_plan`: the diffusers context-parallel plan under which the boundary order is applied before
      the sequence is split (`sparge_diffusers.parallel`), or None (context parallelism with Sparge not supported).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .context import LayerCall, SpargeContext, active_layer
from .geometry import resolve_grid

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
def import_class(path: str) -> Any:
    """``"module:Name"`` -> the object (cached)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Boundary:
    """One place where visual tokens are permuted (entry) or restored (exit), applied by a module hook.

    Attributes:
        module: dotted path of the submodule (``""``: the transformer's own arguments, in the geometry hook).
        where: ``"output"`` (forward hook on the module's output) or ``"input"`` (forward pre-hook on its arguments).
        names: ``"input"``: argument names to permute; ``"output"``: ignored.
        items: ``"output"``: tuple positions to permute when the output is a tuple (None: the output is one tensor,
            or every tensor of a tuple).
        dim: the token dimension.
        min_ndim: tensors with fewer dims are left alone (Wan 2.2 TI2V: the time embedding is per token,
            ``[B, N, C]``, only when the timestep is).
        flatten: the tokens are ``dim`` and every dim after it, row-major (a patch convolution's output
            ``[B, C, F, H, W]``): flattened for the permutation, the result has the input's shape.

    Where to permute: at the output of the module that makes the token tensor (patch embedding, input projection),
    so the row-major tensor dies there; a pre-hook on the first block would keep it alive in the transformer's frame
    during that block (one extra hidden-state tensor at the step's peak).
    """

    module: str
    where: str = "output"
    names: Tuple[str, ...] = ()
    items: Optional[Tuple[int, ...]] = None
    dim: int = 1
    min_ndim: int = 0
    flatten: bool = False


def _permute_tree(value, perm, dim: int, revert: bool, min_ndim: int = 0, flatten: bool = False):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.ndim < min_ndim:
            return value
        if flatten and value.ndim > dim + 1:
            flat = value.flatten(dim)  # [..., N]
            moved = perm.revert(flat, dim=dim) if revert else perm.apply(flat, dim=dim)
            return moved.view(value.shape)
        return perm.revert(value, dim=dim) if revert else perm.apply(value, dim=dim)
    if isinstance(value, (list, tuple)):
        return type(value)(_permute_tree(v, perm, dim, revert, min_ndim, flatten) for v in value)
    return value


class Family:
    """One transformer class of diffusers 0.42 and how Sparge attaches to it. Subclasses fill in the data."""

    name: str = ""
    transformer_path: str = ""
    attention_paths: Tuple[str, ...] = ()
    stock_processor_paths: Tuple[str, ...] = ()
    uses_dispatch: bool = True
    processor_class: Optional[type] = None  # copied-processor families
    text_side: str = "first"
    pair_masks: bool = False
    dense_module_suffixes: Tuple[str, ...] = ()
    ignored_module_prefixes: Tuple[str, ...] = ()
    entry: Tuple[Boundary, ...] = ()
    exit: Tuple[Boundary, ...] = (Boundary("proj_out"),)
    grid_allow_partial: bool = False

    # identification

    def transformer_class(self) -> type:
        return import_class(self.transformer_path)

    def attention_classes(self) -> Tuple[type, ...]:
        return tuple(import_class(path) for path in self.attention_paths)

    def attention_class(self) -> type:
        return self.attention_classes()[0]

    def stock_processor_classes(self) -> Tuple[type, ...]:
        return tuple(import_class(path) for path in self.stock_processor_paths)

    def stock_processor(self, attn=None):
        """A fresh instance of the stock processor of ``attn`` (for processors set without `apply_sparge`)."""
        default = getattr(attn, "_default_processor_cls", None)
        if default is not None and default in self.stock_processor_classes():
            return default()
        return self.stock_processor_classes()[0]()

    def is_stock_processor(self, processor) -> bool:
        return type(processor) in self.stock_processor_classes()

    # attention layers

    def attention_layers(self, transformer) -> List[Tuple[int, str, torch.nn.Module]]:
        """``(layer index, module path, attention module)`` in the order the forward calls them."""
        classes = self.attention_classes()
        layers = [(name, module) for name, module in transformer.named_modules()
                  if isinstance(module, classes) and not name.startswith(self.ignored_module_prefixes or ("\0",))]
        return [(index, name, module) for index, (name, module) in enumerate(layers)]

    def accepts_attention(self, attn) -> bool:
        """Whether a module of one of ``attention_paths`` belongs to this family (refined where a generic class is
        shared)."""
        return True

    def is_sparse_layer(self, name: str, module) -> bool:
        """Whether sparse attention pays in this attention module (visual self- or joint attention)."""
        return not any(name.endswith(suffix) for suffix in self.dense_module_suffixes)

    def get_processor(self, attn):
        return attn.processor

    def set_processor(self, attn, processor) -> None:
        if hasattr(attn, "set_processor"):
            attn.set_processor(processor)
        else:  # MochiAttention has no set_processor in diffusers 0.42
            attn.processor = processor

    # geometry

    def grid(self, transformer, bound: BoundArguments) -> Tuple[Optional[Tuple[int, ...]], int]:
        """``(grid after patching or None, number of visual tokens)`` of this forward."""
        raise NotImplementedError

    def text_len(self, bound: BoundArguments) -> Optional[int]:
        ehs = bound.get("encoder_hidden_states")
        return None if ehs is None else int(ehs.shape[1])

    def can_reorder(self, transformer, bound: BoundArguments) -> bool:
        """False for inputs whose token order the model relies on (logged by the family)."""
        return True

    # context parallelism

    def context_parallel_plan(self, transformer) -> Optional[Dict[str, Any]]:
        """A diffusers ``_cp_plan`` whose split points all come after this family's entry boundaries and whose
        gather comes before its exit (None: context parallelism with Sparge is not supported for the family)."""
        return None

    @property
    def declares_context_parallel(self) -> bool:
        return type(self).context_parallel_plan is not Family.context_parallel_plan

    def on_forward(self, transformer, context: SpargeContext, bound: BoundArguments) -> None:
        """Read the geometry of this forward, start it on the context, permute the transformer's own arguments."""
        grid, num_visual = self.grid(transformer, bound)
        grid = resolve_grid(self.name, grid, num_visual, context.geometry, allow_partial=self.grid_allow_partial)
        hidden_states = bound.get("hidden_states")
        context.begin_forward(grid=grid, num_visual=num_visual, text_len=self.text_len(bound),
                              text_side=self.text_side, timestep=bound.get("timestep"),
                              batch=hidden_states.shape[0] if isinstance(hidden_states, torch.Tensor) else None)
        if not self.can_reorder(transformer, bound):
            return
        if getattr(transformer, "_parallel_config", None) is not None:
            from .parallel import boundary_order_allowed

            if not boundary_order_allowed(self, transformer):
                return
        perm = context.permutation_for(self.device_of(bound))
        if perm is None:
            return
        context.current.permutation = perm
        for point in self.entry:
            if point.module == "" and point.where == "input":
                for name in point.names:
                    value = bound.get(name)
                    if value is not None:
                        bound.set(name, _permute_tree(value, perm, point.dim, revert=False, min_ndim=point.min_ndim))

    def device_of(self, bound: BoundArguments):
        return bound.get("hidden_states").device

    # hooks

    def install_hooks(self, transformer, context: SpargeContext) -> List[Any]:
        """Register the geometry pre-hook and the boundary hooks; returns the removable handles."""
        family = self

        def geometry_hook(module, args, kwargs):
            bound = BoundArguments(module, args, kwargs)
            family.on_forward(module, context, bound)
            return bound.result()

        def finish_hook(module, args, output):
            context.end_forward()

        handles = [transformer.register_forward_pre_hook(geometry_hook, with_kwargs=True)]
        handles += self.install_boundary_hooks(transformer, context)
        handles.append(transformer.register_forward_hook(finish_hook))
        return handles

    def install_boundary_hooks(self, transformer, context: SpargeContext) -> List[Any]:
        handles = []
        for point in self.entry:
            if point.module:
                handles.append(_boundary_hook(transformer.get_submodule(point.module), point, context, revert=False))
        for point in self.exit:
            handles.append(_boundary_hook(transformer.get_submodule(point.module), point, context, revert=True))
        return handles

    def install_layer_hooks(self, attn, layer: LayerCall) -> List[Any]:
        """Announce the layer to the Sparge backend for the duration of its forward."""

        def enter(module, args):
            active_layer.call = layer

        def leave(module, args, output):
            active_layer.call = None

        return [attn.register_forward_pre_hook(enter), attn.register_forward_hook(leave, always_call=True)]


def _boundary_hook(module, point: Boundary, context: SpargeContext, revert: bool):
    if point.where == "output":
        def hook(mod, args, output):
            perm = context.current.permutation
            if perm is None:
                return None
            if isinstance(output, tuple) and point.items is not None:
                return tuple(_permute_tree(o, perm, point.dim, revert, point.min_ndim, point.flatten)
                             if i in point.items else o for i, o in enumerate(output))
            return _permute_tree(output, perm, point.dim, revert, point.min_ndim, point.flatten)

        return module.register_forward_hook(hook)

    def pre_hook(mod, args, kwargs):
        perm = context.current.permutation
        if perm is None:
            return None
        bound = BoundArguments(mod, args, kwargs)
        for name in point.names:
            value = bound.get(name)
            if value is not None:
                bound.set(name, _permute_tree(value, perm, point.dim, revert, point.min_ndim, point.flatten))
        return bound.result()

    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


def video_grid(transformer, hidden_states: torch.Tensor, patch_t: int, patch_hw: int) -> Tuple[Tuple[int, ...], int]:
    """Grid after patching of ``hidden_states: [B, C, F, H, W]``: ``(F // p_t, H // p, W // p)``."""
    _, _, frames, height, width = hidden_states.shape
    grid = (frames // patch_t, height // patch_hw, width // patch_hw)
    return grid, math.prod(grid)


# registry


@dataclass(frozen=True)
class FamilyEntry:
    """A registered family: its name, the diffusers class names it serves, and where its code lives.

    Attributes:
        name: family name (``"wan"``).
        transformers: diffusers transformer class names (matched against the transformer's class and bases).
        family_path: ``"module:Class"`` of the `Family` subclass.
        pipelines: diffusers pipeline class name (as in ``model_index.json``'s ``_class_name``) ->
            ``"module:Class"`` of its wrapped Sparge pipeline.
        attention_names: attention module class names for standalone processors (`SpargeProcessor`), optional.
    """

    name: str
    transformers: Tuple[str, ...]
    family_path: str
    pipelines: Mapping[str, str] = field(default_factory=dict)
    attention_names: Tuple[str, ...] = ()


_REGISTRY: Dict[str, FamilyEntry] = {}


def register_family(entry: FamilyEntry) -> None:
    """Add (or replace) a family in the registry."""
    if not isinstance(entry, FamilyEntry):
        raise ValueError(f"register_family needs a FamilyEntry, got {type(entry).__name__}")
    _REGISTRY[entry.name] = entry


def registered_families() -> Tuple[str, ...]:
    return tuple(_REGISTRY)


def family_entries() -> Tuple[FamilyEntry, ...]:
    return tuple(_REGISTRY.values())


@functools.lru_cache(maxsize=None)
def load_family(name: str) -> Family:
    """The `Family` object of a registered family (its module is imported on first use)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"family must be one of {registered_families()}, got {name!r}")
    return import_class(entry.family_path)()


def family_name_for(transformer) -> Optional[str]:
    names = {cls.__name__ for cls in type(transformer).__mro__}
    for entry in _REGISTRY.values():
        if names.intersection(entry.transformers):
            return entry.name
    return None


def family_for(transformer) -> Family:
    """The `Family` of a transformer instance.

    Raises:
        ValueError: the transformer's class is not one of the registered diffusers classes (the message names it).
    """
    name = family_name_for(transformer)
    if name is None:
        supported = ", ".join(sorted(t for e in _REGISTRY.values() for t in e.transformers))
        raise ValueError(
            f"sparge-diffusers does not support {type(transformer).__name__}; supported transformers: {supported}"
        )
    return load_family(name)


def family_for_attention(attn) -> Family:
    """The family of an attention module, for standalone processors (specific class names first)."""
    name = type(attn).__name__
    for entry in _REGISTRY.values():
        if name in entry.attention_names:
            family = load_family(entry.name)
            if family.accepts_attention(attn):
                return family
    supported = ", ".join(n for e in _REGISTRY.values() for n in e.attention_names)
    raise ValueError(f"SpargeProcessor does not support the attention module {name}; supported: {supported}")

__all__ = [
    "BoundArguments",
    "Boundary",
    "Family",
    "FamilyEntry",
    "family_entries",
    "family_for",
    "family_for_attention",
    "family_name_for",
    "load_family",
    "register_family",
    "registered_families",
    "video_grid",
]
