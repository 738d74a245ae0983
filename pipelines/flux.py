"""Flux: Sparge processor, token geometry and the wrapped pipeline (diffusers 0.42).

Token layout of ``FluxTransformer2DModel``: the pipeline packs the latents into 2x2 patches and passes
``hidden_states: [B, N, C]`` (row-major over the packed grid ``(h, w)``) with ``img_ids: [N, 3]`` (``(0, row, col)``)
and ``txt_ids``; RoPE is computed inside the forward from ``cat(txt_ids, img_ids)`` and covers all tokens.
Double-stream blocks attend over ``[text, image]`` built from two projections; single-stream blocks receive
``[text, image]`` already concatenated (the processor gets no text length, so it comes from the geometry hook).

Boundary reorder: the forward pre-hook permutes ``hidden_states`` and ``img_ids`` together (so the rotary embedding
computed from the ids follows the tokens) and any ControlNet residuals; a forward hook on ``proj_out`` restores
row-major order of the output tokens. The grid is read from ``img_ids`` (one device-to-host copy per new ids tensor,
cached); image tokens after the leading grid (Kontext condition images, ids with another first coordinate) keep
their place.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple

import torch
from diffusers import FluxPipeline

from sparge_diffusers._logging import log_once
from sparge_diffusers.integration import SpargeContext, SpargeProcessor

from ._base import (
    BoundArguments,
    Family,
    SpargePipelineMixin,
    boundary_permutation,
    first_difference,
    resolve_grid,
    revert_output_hook,
)

logger = logging.getLogger(__name__)


def _get_qkv_projections(attn, hidden_states, encoder_hidden_states=None):
    # transformer_flux._get_qkv_projections of diffusers 0.42 (copied: it is private there)
    if attn.fused_projections:
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        encoder_query = encoder_key = encoder_value = (None,)
        if encoder_hidden_states is not None and hasattr(attn, "to_added_qkv"):
            encoder_query, encoder_key, encoder_value = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        return query, key, value, encoder_query, encoder_key, encoder_value

    query = attn.to_q(hidden_states)
    key = attn.to_k(hidden_states)
    value = attn.to_v(hidden_states)

    encoder_query = encoder_key = encoder_value = None
    if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
        encoder_query = attn.add_q_proj(encoder_hidden_states)
        encoder_key = attn.add_k_proj(encoder_hidden_states)
        encoder_value = attn.add_v_proj(encoder_hidden_states)

    return query, key, value, encoder_query, encoder_key, encoder_value


def flux_attention(proc: SpargeProcessor, attn, hidden_states: torch.Tensor,
                   encoder_hidden_states: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                   image_rotary_emb=None):
    """``FluxAttnProcessor`` of diffusers 0.42 (double- and single-stream blocks) with `sparge_attn` as attention.

    Sequence ``[text, image]``; the text range is always computed. Calls with an attention mask or under diffusers'
    context parallelism use the stock ``dispatch_attention_fn``.
    """
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.embeddings import apply_rotary_emb

    query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
        attn, hidden_states, encoder_hidden_states
    )

    query = query.unflatten(-1, (-1, attn.head_dim))
    key = key.unflatten(-1, (-1, attn.head_dim))
    value = value.unflatten(-1, (-1, attn.head_dim))

    query = attn.norm_q(query)
    key = attn.norm_k(key)

    context = proc.context
    if attn.added_kv_proj_dim is not None:
        encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
        encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
        encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))

        encoder_query = attn.norm_added_q(encoder_query)
        encoder_key = attn.norm_added_k(encoder_key)

        query = torch.cat([encoder_query, query], dim=1)
        key = torch.cat([encoder_key, key], dim=1)
        value = torch.cat([encoder_value, value], dim=1)
        text_len = encoder_hidden_states.shape[1]
        context.seen_text_len = text_len
    else:
        text_len = _single_stream_text_len(context, query.shape[1])

    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

    # the only change: the attention call
    if attention_mask is not None or proc._parallel_config is not None:
        policy = "masked"
        log_once(logger, "flux-mask", "Flux Sparge processor: attention_mask or context parallelism in use; those "
                 "calls use the stock attention")
    else:
        policy = proc.policy(attn)
    timer = proc.start_timer(query.device)
    sparsity = backend = None
    if policy == "sparse":
        keep = proc.keep_ranges(0, context.text_keep_len(text_len))
        hidden_states, sparsity, backend = proc.sparse(query, key, value, layout="BSHD", keep_ranges=keep,
                                                       visual_offset=text_len)
    else:
        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=proc._attention_backend,
            parallel_config=proc._parallel_config,
        )
    proc.record(attn, timer, policy=policy, sparsities=[sparsity], backend=backend, batch=query.shape[0],
                heads=query.shape[2], seq_len=query.shape[1], text_len=text_len)
    hidden_states = hidden_states.flatten(2, 3)
    hidden_states = hidden_states.to(query.dtype)

    if encoder_hidden_states is not None:
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
        )
        hidden_states = attn.to_out[0](hidden_states.contiguous())
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())

        return hidden_states, encoder_hidden_states
    else:
        return hidden_states


def _single_stream_text_len(context: SpargeContext, seq_len: int) -> int:
    """Text tokens at the head of a single-stream block's ``[text, image]`` sequence."""
    cur = context.current
    if cur.active and cur.num_visual and seq_len >= cur.num_visual:
        return seq_len - cur.num_visual
    if context.seen_text_len is not None and context.seen_text_len <= seq_len:
        return context.seen_text_len
    log_once(logger, "flux-single-text", "Flux Sparge processor: a single-stream block ran before any double-stream "
             "block and without apply_sparge's geometry hook; its text tokens are not protected")
    return 0


class SpargeFluxAttnProcessor(SpargeProcessor):
    """Sparge processor for ``FluxTransformer2DModel`` (double- and single-stream blocks), following
    ``FluxAttnProcessor`` of diffusers 0.42: ``transformer.set_attn_processor(SpargeFluxAttnProcessor(config))`` or
    `apply_sparge`."""

    attention_impl = staticmethod(flux_attention)


class FluxFamily(Family):
    """``FluxTransformer2DModel`` of diffusers 0.42 (FLUX.1 dev / schnell / Kontext)."""

    name = "flux"
    processor_class = SpargeFluxAttnProcessor

    transformer_path = "diffusers:FluxTransformer2DModel"
    attention_path = "diffusers.models.transformers.transformer_flux:FluxAttention"
    stock_processor_paths = ("diffusers.models.transformers.transformer_flux:FluxAttnProcessor",)

    def __init__(self) -> None:
        self._ids_cache: dict = {}

    def grid_of(self, img_ids: torch.Tensor) -> Optional[Tuple[int, int]]:
        """Packed grid ``(h, w)`` of the leading image tokens from ``img_ids`` ``[N, 3]`` (``(0, row, col)``).

        The leading tokens sharing the first id coordinate must be a row-major ``h x w`` grid; else None (no reorder).
        Cached per ids tensor (pipelines pass the same tensor at every step).
        """
        version = 0 if img_ids.is_inference() else img_ids._version  # inference tensors keep no version counter
        key = (img_ids.data_ptr(), tuple(img_ids.shape), version, str(img_ids.device))
        if key in self._ids_cache:  # the entry holds the ids tensor, so its memory cannot be reused meanwhile
            return self._ids_cache[key][1]
        ids = img_ids.detach().to("cpu", torch.float64)
        lead = first_difference(ids[:, 0])
        rows, cols = ids[:lead, 1], ids[:lead, 2]
        r0, c0 = rows.min(), cols.min()
        h, w = int(rows.max() - r0) + 1, int(cols.max() - c0) + 1
        grid = None
        if h * w == lead:
            expected_rows = r0 + torch.arange(h, dtype=torch.float64).repeat_interleave(w)
            expected_cols = c0 + torch.arange(w, dtype=torch.float64).repeat(h)
            if torch.equal(rows, expected_rows) and torch.equal(cols, expected_cols):
                grid = (h, w)
        if grid is None:
            log_once(logger, "flux-grid", "Flux: img_ids do not start with a row-major grid; tokens keep their order "
                     "(pass SpargeGeometry(grid=(h, w)) to reorder)")
        if len(self._ids_cache) >= 8:
            self._ids_cache.clear()
        self._ids_cache[key] = (img_ids, grid)
        return grid

    def on_forward(self, transformer, context: SpargeContext, bound: BoundArguments) -> None:
        hidden_states = bound.get("hidden_states")
        encoder_hidden_states = bound.get("encoder_hidden_states")
        img_ids = bound.get("img_ids")
        num_visual = hidden_states.shape[1]
        ids2d = img_ids[0] if img_ids is not None and img_ids.ndim == 3 else img_ids
        if context.geometry.grid is not None:
            grid = resolve_grid(self.name, context.geometry.grid, num_visual, context.geometry, allow_partial=True)
        else:
            grid = None if ids2d is None else self.grid_of(ids2d)
        text_len = None if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        context.begin_forward(grid=grid, num_visual=num_visual, text_len=text_len, text_first=True,
                              timestep=bound.get("timestep"))
        perm = boundary_permutation(context, hidden_states.device)
        if perm is None:
            return
        context.current.permutation = perm
        bound.set("hidden_states", perm.apply(hidden_states, dim=1))
        if img_ids is not None:
            bound.set("img_ids", perm.apply(img_ids, dim=-2))
        for name in ("controlnet_block_samples", "controlnet_single_block_samples"):
            samples = bound.get(name)
            if samples is not None:
                bound.set(name, [perm.apply(s, dim=1) for s in samples])

    def install_boundary_hooks(self, transformer, context: SpargeContext) -> List[Any]:
        return [transformer.proj_out.register_forward_hook(revert_output_hook(context))]


class SpargeFluxPipeline(SpargePipelineMixin, FluxPipeline):
    """``FluxPipeline`` (diffusers 0.42) with Sparge attention.

    ``SpargeFluxPipeline.from_pretrained(local_path, sparge_config=SpargeConfig(...), torch_dtype=...)``; the call is
    the stock one; ``pipe.sparge_stats`` holds the per-layer, per-step statistics of the last call.
    """


__all__ = ["FluxFamily", "SpargeFluxAttnProcessor", "SpargeFluxPipeline", "flux_attention"]
