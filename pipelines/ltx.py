"""LTX-Video: token geometry and the wrapped pipeline (diffusers 0.42); attention goes through the Sparge backend.

Token layout of ``LTXVideoTransformer3DModel``: the pipeline packs the latents and passes ``hidden_states: [B, N, C]``
row-major over the latent grid ``(num_frames, height, width)`` (forward arguments; patch size 1 in the released
configs), head dim 64. Each block runs self-attention over the video (``attn1``, RoPE from ``rope``, no mask) and
cross-attention to the text (``attn2``, with the text padding mask): only ``attn1`` is sparse.

Boundary reorder: forward hooks on ``proj_in`` (hidden states) and ``rope`` (cos, sin ``[B, N, D]``) permute the
video tokens; a forward hook on ``proj_out`` restores them. A per-token timestep (``timestep: [B, N]``, image
conditioning) modulates tokens by position after the last block, so such calls keep row-major order; so do calls
with explicit ``video_coords`` (the grid is not known).
"""

from __future__ import annotations

import logging
import math

from diffusers import LTXPipeline

from sparge_diffusers._logging import log_once

from ._base import Boundary, Family, SpargePipelineMixin

logger = logging.getLogger(__name__)


class LTXFamily(Family):
    """``LTXVideoTransformer3DModel`` of diffusers 0.42 (LTX-Video 0.9.x)."""

    name = "ltx"
    text_side = "none"
    transformer_path = "diffusers:LTXVideoTransformer3DModel"
    attention_paths = ("diffusers.models.transformers.transformer_ltx:LTXAttention",)
    stock_processor_paths = ("diffusers.models.transformers.transformer_ltx:LTXVideoAttnProcessor",)
    dense_module_suffixes = ("attn2",)
    entry = (Boundary("proj_in", "output", dim=1), Boundary("rope", "output", dim=1))
    exit = (Boundary("proj_out"),)

    def grid(self, transformer, bound):
        num_visual = bound.get("hidden_states").shape[1]
        sizes = [bound.get(name) for name in ("num_frames", "height", "width")]
        if bound.get("video_coords") is not None or any(not isinstance(s, int) for s in sizes):
            return None, num_visual
        p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
        grid = (sizes[0] // p_t, sizes[1] // p, sizes[2] // p)
        return (grid if math.prod(grid) == num_visual else None), num_visual

    def can_reorder(self, transformer, bound) -> bool:
        timestep = bound.get("timestep")
        batch = bound.get("hidden_states").shape[0]
        if timestep is not None and hasattr(timestep, "numel") and timestep.numel() > batch:
            log_once(logger, "ltx-token-timestep", "LTX: a per-token timestep modulates tokens by position; tokens "
                     "keep row-major order in those calls")
            return False
        return True


class SpargeLTXPipeline(SpargePipelineMixin, LTXPipeline):
    """``LTXPipeline`` (diffusers 0.42) with Sparge attention."""


__all__ = ["LTXFamily", "SpargeLTXPipeline"]
