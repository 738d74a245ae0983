"""Qwen-Image: token geometry and the wrapped pipeline (diffusers 0.42); attention goes through the Sparge backend.

Token layout of ``QwenImageTransformer2DModel``: ``hidden_states: [B, N, C]`` packed 2x2 latents, row-major over the
grid of ``img_shapes[0][0] = (frames, h, w)`` (edit models append condition images after it). The joint attention
of every block is ``[text (L), image (N)]`` (text first) with RoPE for both parts from ``pos_embed`` and, when the
pipeline pads the prompt, a key-padding mask ``[B, 1, 1, L + N]`` built from ``encoder_hidden_states_mask`` (padded
text keys inside the sequence, not at its end); the backend removes the padded keys in the sparse path.

Boundary reorder: forward hooks on ``img_in`` (hidden states) and ``pos_embed`` (the image frequencies,
``[N, D / 2]``) permute the leading grid's tokens; a forward hook on ``proj_out`` restores them.
"""

from __future__ import annotations

import math

from diffusers import QwenImagePipeline

from ._base import Boundary, Family, SpargePipelineMixin


class QwenImageFamily(Family):
    """``QwenImageTransformer2DModel`` of diffusers 0.42 (Qwen-Image, Qwen-Image-Edit)."""

    name = "qwenimage"
    text_side = "first"
    grid_allow_partial = True
    transformer_path = "diffusers:QwenImageTransformer2DModel"
    attention_paths = ("diffusers.models.attention_processor:Attention",)
    stock_processor_paths = ("diffusers.models.transformers.transformer_qwenimage:QwenDoubleStreamAttnProcessor2_0",)
    entry = (Boundary("img_in", "output", dim=1), Boundary("pos_embed", "output", items=(0,), dim=0))
    exit = (Boundary("proj_out"),)

    def grid(self, transformer, bound):
        num_visual = bound.get("hidden_states").shape[1]
        shapes = bound.get("img_shapes")
        try:
            first = shapes[0]
            first = first[0] if isinstance(first, (list, tuple)) and isinstance(first[0], (list, tuple)) else first
            frames, h, w = (int(x) for x in first)
        except (TypeError, ValueError, IndexError):
            return None, num_visual
        grid = (h, w) if frames == 1 else (frames, h, w)
        return (grid if math.prod(grid) <= num_visual else None), num_visual


class SpargeQwenImagePipeline(SpargePipelineMixin, QwenImagePipeline):
    """``QwenImagePipeline`` (diffusers 0.42) with Sparge attention."""


__all__ = ["QwenImageFamily", "SpargeQwenImagePipeline"]
