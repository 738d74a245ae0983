"""`apply_sparge` / `remove_sparge`: put sparse attention (SpargeAttn, Zhang et al., ICML 2025, arXiv 2502.18137)
into a diffusers pipeline or transformer with one call, and take it out again::

    apply_sparge(pipe, SpargeConfig(topk=0.5), collect_stats=True)
    video = pipe(...).frames
    print(get_sparge_stats(pipe).mean_sparsity)
    remove_sparge(pipe)

What `apply_sparge` installs on the transformer (its `Family` comes from the registry of `sparge_diffusers.family`):

- models that route attention through diffusers' ``dispatch_attention_fn`` (Wan, HunyuanVideo, HunyuanVideo 1.5,
  LTX-Video, Flux, Flux.2, Qwen-Image): the ``"sparge"`` backend (`sparge_diffusers.backend`) on the processors of
  the attention modules where sparse attention pays (self- and joint attention; cross-attention stays stock), and a
  forward pre-/post-hook pair on each such module that tells the backend which layer is calling;
- models that call SDPA directly (CogVideoX, Mochi): a copied Sparge processor on every attention layer;
- a forward pre-hook on the transformer (``register_forward_pre_hook(with_kwargs=True)``) that reads the geometry of
  each forward: the latent grid after patching, the visual token count (hence the text range of every call), and the
  denoising step (from the timestep, see `SpargeContext`), unless a `SpargeGeometry` overrides them;
- on a pipeline, a wrapper of its scheduler's ``set_timesteps`` that marks the start of each pipeline call
  (`sparge_diffusers.call_hook`): the step counter restarts and the per-layer guards start afresh;
- with ``config.reorder == "hilbert"``: hooks that put the visual tokens into Hilbert order ONCE per forward at the
  transformer boundary (hidden states and rotary embeddings together) and restore row-major order before the final
  projection / unpatchify. Every token-wise op commutes with the permutation, so the output is unchanged up to
  rounding. ``reorder_at="layer"`` is the fallback: q, k, v are permuted in every attention layer.

Only torch module hooks, the ``processor`` (or its ``_attention_backend``) of the attention modules and the
scheduler's ``set_timesteps`` (on the instance) are touched; hooks of accelerate and diffusers' hook registry are
left alone, and `remove_sparge` restores exactly what it found.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple

import torch

from .config import SpargeConfig
from .context import LayerCall, SpargeContext
from .family import family_for
from .geometry import ForwardGeometry, SpargeGeometry
from .call_hook import watch_pipeline_calls
from .processor import SpargeProcessor
from .run_stats import SpargeRunStats
from .speed_rule import prime_capability

logger = logging.getLogger(__name__)

_STATE_ATTR = "_sparge_state"


class _SpargeState:
    """What `apply_sparge` changed on a transformer, so that `remove_sparge` can undo exactly that."""

    def __init__(self, family, context: SpargeContext) -> None:
        self.family = family
        self.context = context
        self.original_processors: List[Tuple[Any, Any]] = []
        self.original_backends: List[Tuple[Any, Any]] = []
        self.handles: List[Any] = []


def resolve_transformer(pipe_or_transformer) -> torch.nn.Module:
    """The transformer of a pipeline (or the module itself), unwrapping ``torch.compile``."""
    if isinstance(pipe_or_transformer, torch.nn.Module):
        module = pipe_or_transformer
    else:
        module = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    if module is None:
        raise ValueError(f"{type(pipe_or_transformer).__name__} has no transformer (transformer is None)")
    module = getattr(module, "_orig_mod", module)  # torch.compile's OptimizedModule
    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            "apply_sparge needs a diffusers pipeline with a `transformer` or a transformer model, got "
            f"{type(pipe_or_transformer).__name__}"
        )
    return module


def apply_sparge(pipe_or_transformer, config: Optional[SpargeConfig] = None, *,
                 geometry: Optional[SpargeGeometry] = None, collect_stats: bool = False,
                 reorder_at: str = "boundary"):
    """Put Sparge attention into a supported diffusers pipeline or transformer (diffusers 0.42).

    Args:
        pipe_or_transformer: a pipeline with a ``transformer`` attribute, or the transformer itself (a
            ``torch.compile``-d transformer is unwrapped; hooks go on the original module).
        config: the sparse attention setting; `SpargeConfig()` when None. ``config.reorder`` picks the token order,
            ``config.dense_steps`` / ``config.dense_layers`` the dense policies.
        geometry: explicit grid / text length / step; fields left None are read from each forward.
        collect_stats: record per-layer, per-step statistics (`get_sparge_stats`).
        reorder_at: ``"boundary"`` (reorder once per forward at the transformer boundary) or ``"layer"`` (the
            fallback: permute q, k, v in every attention layer).
    Returns:
        ``pipe_or_transformer``, for chaining.
    Raises:
        ValueError: an unsupported transformer class (the message names it), an attention layer whose processor is
            neither the stock one nor a Sparge one, a dispatch model without the registered backend, or a bad
            argument.
    """
    config = SpargeConfig() if config is None else config
    transformer = resolve_transformer(pipe_or_transformer)
    family = family_for(transformer)
    if getattr(transformer, _STATE_ATTR, None) is not None:
        logger.info("apply_sparge: %s already had Sparge attention; replacing it", type(transformer).__name__)
        remove_sparge(transformer)
    context = SpargeContext(config, collect_stats=collect_stats, geometry=geometry, reorder_at=reorder_at,
                            family=family.name)
    context.pair_masks = family.pair_masks
    model_config = getattr(transformer, "config", None)
    head_dim = getattr(model_config, "attention_head_dim", None)
    context.head_dim = head_dim if isinstance(head_dim, int) else None
    heads = getattr(model_config, "num_attention_heads", None)
    context.heads = heads if isinstance(heads, int) else None
    parameter = next(transformer.parameters(), None)
    if parameter is not None:
        prime_capability(parameter.device)  # eagerly: a compiled forward then only looks the GPU class up
    layers = family.attention_layers(transformer)
    member = None
    if family.uses_dispatch:
        from .backend import register_sparge_backend

        member = register_sparge_backend()
        if member is None:
            raise ValueError(f"apply_sparge: {type(transformer).__name__} routes attention through diffusers' "
                             "attention dispatch, but the sparge backend could not be registered with this diffusers "
                             "(see the log)")
    for _, name, attn in layers:
        processor = family.get_processor(attn)
        if not (isinstance(processor, SpargeProcessor) or family.is_stock_processor(processor)):
            raise ValueError(
                f"apply_sparge replaces only the stock {family.name} attention processors; {name} of "
                f"{type(transformer).__name__} uses {type(processor).__name__}"
            )
    state = _SpargeState(family, context)
    sparse_layers = 0
    for index, name, attn in layers:
        processor = family.get_processor(attn)
        if isinstance(processor, SpargeProcessor):
            processor = family.stock_processor(attn)
            if family.uses_dispatch:
                state.original_processors.append((attn, family.get_processor(attn)))
                family.set_processor(attn, processor)
        if not family.uses_dispatch:
            state.original_processors.append((attn, processor))
            family.set_processor(attn, family.processor_class(layer_index=index, name=name, context=context))
            sparse_layers += 1
            continue
        if not family.is_sparse_layer(name, attn):
            continue
        state.original_backends.append((processor, processor._attention_backend))
        processor._attention_backend = member
        state.handles += family.install_layer_hooks(attn, LayerCall(context, index, name))
        sparse_layers += 1
    state.handles += family.install_hooks(transformer, context)
    if not isinstance(pipe_or_transformer, torch.nn.Module):  # a pipeline: hear where each of its calls starts
        watch = watch_pipeline_calls(pipe_or_transformer, context)
        if watch is not None:
            state.handles.append(watch)
    setattr(transformer, _STATE_ATTR, state)
    logger.info("apply_sparge: %d of %d %s attention layers use Sparge (%s)", sparse_layers, len(layers),
                family.name, config)
    return pipe_or_transformer


def remove_sparge(pipe_or_transformer):
    """Undo `apply_sparge`: the original processors and backends come back and the Sparge hooks are removed.

    Sparge processors set without `apply_sparge` (``set_attn_processor(SpargeProcessor(...))``) are replaced by the
    model's stock processor. Other hooks (accelerate offload, diffusers caches) are not touched.
    """
    transformer = resolve_transformer(pipe_or_transformer)
    state = getattr(transformer, _STATE_ATTR, None)
    if state is not None:
        for handle in state.handles:
            handle.remove()
        for processor, backend in reversed(state.original_backends):
            processor._attention_backend = backend
        for attn, processor in state.original_processors:
            state.family.set_processor(attn, processor)
        delattr(transformer, _STATE_ATTR)
        return pipe_or_transformer
    family = family_for(transformer)
    for _, _, attn in family.attention_layers(transformer):
        if isinstance(family.get_processor(attn), SpargeProcessor):
            family.set_processor(attn, family.stock_processor(attn))
    return pipe_or_transformer


def get_sparge_stats(pipe_or_transformer) -> SpargeRunStats:
    """The statistics of the Sparge attention of a pipeline or transformer.

    Rows are recorded only when `apply_sparge` ran with ``collect_stats=True`` (or standalone processors were built
    with it); the object is live: it grows with every call until ``reset()``.

    Raises:
        ValueError: no Sparge attention is installed.
    """
    transformer = resolve_transformer(pipe_or_transformer)
    state = getattr(transformer, _STATE_ATTR, None)
    if state is not None:
        return state.context.stats
    contexts = []
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, SpargeProcessor) and all(processor.context is not c for c in contexts):
            contexts.append(processor.context)
    if len(contexts) == 1:
        return contexts[0].stats
    if not contexts:
        raise ValueError(f"{type(transformer).__name__} has no Sparge processors; call apply_sparge first")
    merged = SpargeRunStats()
    for context in contexts:
        merged._rows.extend(context.stats.rows)
    return merged


def get_sparge_context(pipe_or_transformer) -> Optional[SpargeContext]:
    """The `SpargeContext` installed by `apply_sparge` (geometry of the last forward in ``.current``), or None."""
    state = getattr(resolve_transformer(pipe_or_transformer), _STATE_ATTR, None)
    return None if state is None else state.context


def begin_sparge_call(pipe_or_transformer, *, reset_stats: bool = False) -> None:
    """Mark the start of a pipeline call: the step counter restarts at 0 (and the stats are cleared when asked)."""
    context = get_sparge_context(pipe_or_transformer)
    if context is not None:
        context.begin_call()
        if reset_stats:
            context.stats.reset()


__all__ = [
    "ForwardGeometry",
    "SpargeContext",
    "SpargeGeometry",
    "SpargeProcessor",
    "SpargeRunStats",
    "apply_sparge",
    "begin_sparge_call",
    "get_sparge_context",
    "get_sparge_stats",
    "remove_sparge",
    "resolve_transformer",
]
