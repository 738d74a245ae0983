"""Flux: token geometry and the wrapped pipeline (diffusers 0.42); attention goes through the Sparge backend.

Token layout of ``FluxTransformer2DModel``: the pipeline packs the latents into 2x2 patches and passes
``hidden_states: [B, N, C]`` (row-major over the packed grid ``(h, w)``) with ``img_ids: [N, 3]`` (``(0, row, col)``)
and ``txt_ids``; RoPE is computed inside the forward from ``cat(txt_ids, img_ids)`` and covers all tokens.
Double-stream blocks attend over ``[text, image]`` built from two projections; single-stream blocks receive
``[text, image]`` already concatenated. ``FluxAttnProcessor`` calls ``dispatch_attention_fn``, so the stock
processor stays and the ``"sparge"`` backend is set on it; the text range of both block kinds follows from the image
token count the geometry hook records (text first).

Boundary reorder: the forward pre-hook permutes ``hidden_states`` and ``img_ids`` together (so the rotary embedding
computed from the ids follows the tokens) and any ControlNet residuals; a forward hook on ``proj_out`` restores
row-major order of the output tokens. The grid is read from ``img_ids`` (one device-to-host copy per new ids tensor,
cached); image tokens after the leading grid (Kontext condition images, ids with another first coordinate) keep
their place.

Context parallelism: diffusers' own ``_cp_plan`` splits ``hidden_states``, ``encoder_hidden_states`` and both ids at
the transformer's input, after the geometry pre-hook has put the image tokens (and their ids, hence the RoPE) in
curve order, and gathers at ``proj_out`` before Sparge restores row-major order: it is the Sparge plan as it is.
After Ulysses' all-to-all a rank holds ``[txt_0, img_0, txt_1, img_1, ...]``: the image tokens in curve order, one
text range per rank chunk, all kept (`sparge_diffusers.backend.chunked_ranges`).
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
from diffusers import FluxPipeline

from sparge_diffusers._logging import log_once
from sparge_diffusers.context import SpargeContext
from sparge_diffusers.hilbert import TokenPermutation
from sparge_diffusers.processor import SpargeProcessor
from sparge_diffusers.token_order import ids_boundary_order, register_ids_order

from ._base import BoundArguments, Family, SpargePipelineMixin, first_difference, resolve_grid

logger = logging.getLogger(__name__)


class SpargeFluxAttnProcessor(SpargeProcessor):
    """Standalone Sparge processor for ``FluxTransformer2DModel`` (double- and single-stream blocks):
    ``transformer.set_attn_processor(SpargeFluxAttnProcessor(config))``. It runs the stock ``FluxAttnProcessor``
    with the ``"sparge"`` attention backend; `apply_sparge` sets the backend directly instead."""


class FluxFamily(Family):
    """``FluxTransformer2DModel`` of diffusers 0.42 (FLUX.1 dev / schnell / Kontext)."""

    name = "flux"
    text_side = "first"
    grid_allow_partial = True

    transformer_path = "diffusers:FluxTransformer2DModel"
    attention_paths = ("diffusers.models.transformers.transformer_flux:FluxAttention",)
    stock_processor_paths = ("diffusers.models.transformers.transformer_flux:FluxAttnProcessor",)

    def __init__(self) -> None:
        self._ids_cache: dict = {}
        register_ids_order(self.name, self._ids_order)

    def _ids_order(self, ids: torch.Tensor, kind: str):
        """Eager body of the ``ids_token_order`` op: the boundary order of the tokens described by ``ids``."""
        grid = self.grid_of(ids)
        if grid is None:
            identity = torch.arange(ids.shape[0], device=ids.device)
            return identity, identity
        perm = TokenPermutation.for_grid(grid, kind, device=ids.device, offset=0, total_len=ids.shape[0])
        return perm.forward_index, perm.inverse_index

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
        text_len = None if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if (torch.compiler.is_compiling() and context.geometry.grid is None and ids2d is not None
                and context.reorder_at == "boundary"):
            # the grid is in the ids (data-dependent): one opaque op gives the order, the graph stays whole
            context.begin_forward(grid=None, num_visual=num_visual, text_len=text_len, text_side="first",
                                  timestep=bound.get("timestep"), batch=hidden_states.shape[0])
            perm = None
            if context.reorder_kind != "rowmajor" and context.reorder_pays(hidden_states.device):
                perm = ids_boundary_order(ids2d, self.name, context.reorder_kind)
        else:
            perm = self._eager_order(context, bound, ids2d, num_visual, text_len)
        if perm is None:
            return
        if getattr(transformer, "_parallel_config", None) is not None:
            from sparge_diffusers.parallel import boundary_order_allowed

            if not boundary_order_allowed(self, transformer):
                return
        context.current.permutation = perm
        bound.set("hidden_states", perm.apply(hidden_states, dim=1))
        if img_ids is not None:
            bound.set("img_ids", perm.apply(img_ids, dim=-2))
        for name in ("controlnet_block_samples", "controlnet_single_block_samples"):
            samples = bound.get(name)
            if samples is not None:
                bound.set(name, [perm.apply(s, dim=1) for s in samples])

    def context_parallel_plan(self, transformer):
        return type(transformer)._cp_plan  # splits at the input, after the boundary order (see the module doc)

    def _eager_order(self, context: SpargeContext, bound: BoundArguments, ids2d, num_visual: int, text_len):
        if context.geometry.grid is not None:
            grid = resolve_grid(self.name, context.geometry.grid, num_visual, context.geometry, allow_partial=True)
        else:
            grid = None if ids2d is None else self.grid_of(ids2d)
        hidden_states = bound.get("hidden_states")
        context.begin_forward(grid=grid, num_visual=num_visual, text_len=text_len, text_side="first",
                              timestep=bound.get("timestep"), batch=hidden_states.shape[0])
        return context.permutation_for(hidden_states.device)


class SpargeFluxPipeline(SpargePipelineMixin, FluxPipeline):
    """``FluxPipeline`` (diffusers 0.42) with Sparge attention.

    ``SpargeFluxPipeline.from_pretrained(local_path, sparge_config=SpargeConfig(...), torch_dtype=...)``; the call is
    the stock one; ``pipe.sparge_stats`` holds the per-layer, per-step statistics of the last call.
    """


__all__ = ["FluxFamily", "SpargeFluxAttnProcessor", "SpargeFluxPipeline"]
