"""HunyuanVideo and HunyuanVideo 1.5: token geometry and the wrapped pipelines (diffusers 0.42); attention goes
through the Sparge backend.

Token layout: ``hidden_states: [B, C, F, H, W]`` is patched by ``x_embedder`` (``patch_size_t`` x ``patch_size``²)
into ``[B, N, C]``, row-major over ``(F / p_t, H / p, W / p)``. Every block attends over ``[video (N), text]``
(video first; double-stream blocks build it from two projections, single-stream blocks from the concatenated
stream) with RoPE from ``rope`` on the video part, and an ``attention_mask`` for the padded text:

- HunyuanVideo: ``[B, 1, 1, N + L]`` bool, the trailing padded text keys masked: a key-padding mask, honoured in the
  sparse path by the backend (padded keys removed);
- HunyuanVideo 1.5: the text (image tokens, ByT5, MLLM; valid tokens first) gets a pair mask
  ``m[i, j] = valid[i] & valid[j]`` built in every layer, ``[B, 1, S, S]``; the family declares it, so the backend
  reads the key validity from one row.

The token refiners inside ``context_embedder`` (text-only attention) are not layers of the model and stay stock.

Boundary reorder: forward hooks on ``x_embedder`` (hidden states) and ``rope`` (cos, sin ``[N, D]``) permute the
video tokens, a forward hook on ``proj_out`` restores them. HunyuanVideo's image-to-video variant with
``image_condition_type="token_replace"`` modulates the first frame's tokens by position, so it keeps row-major order.
"""

from __future__ import annotations

import logging

from diffusers import HunyuanVideo15Pipeline, HunyuanVideoPipeline

from sparge_diffusers._logging import log_once

from ._base import Boundary, Family, SpargePipelineMixin, video_grid

logger = logging.getLogger(__name__)

_ENTRY = (Boundary("x_embedder", "output", dim=1), Boundary("rope", "output", dim=0))


class HunyuanVideoFamily(Family):
    """``HunyuanVideoTransformer3DModel`` of diffusers 0.42 (HunyuanVideo T2V, I2V)."""

    name = "hunyuan_video"
    text_side = "last"
    transformer_path = "diffusers:HunyuanVideoTransformer3DModel"
    attention_paths = ("diffusers.models.attention_processor:Attention",)
    stock_processor_paths = ("diffusers.models.transformers.transformer_hunyuan_video:HunyuanVideoAttnProcessor2_0",)
    ignored_module_prefixes = ("context_embedder",)
    entry = _ENTRY
    exit = (Boundary("proj_out"),)

    def grid(self, transformer, bound):
        config = transformer.config
        return video_grid(transformer, bound.get("hidden_states"), config.patch_size_t, config.patch_size)

    def can_reorder(self, transformer, bound) -> bool:
        if getattr(transformer.config, "image_condition_type", None) == "token_replace":
            log_once(logger, "hunyuan-token-replace", "HunyuanVideo with image_condition_type='token_replace' "
                     "modulates the first frame by position; tokens keep row-major order")
            return False
        return True


class HunyuanVideo15Family(HunyuanVideoFamily):
    """``HunyuanVideo15Transformer3DModel`` of diffusers 0.42 (HunyuanVideo 1.5 T2V and I2V)."""

    name = "hunyuan_video15"
    pair_masks = True
    transformer_path = "diffusers:HunyuanVideo15Transformer3DModel"
    stock_processor_paths = (
        "diffusers.models.transformers.transformer_hunyuan_video15:HunyuanVideo15AttnProcessor2_0",)

    def can_reorder(self, transformer, bound) -> bool:
        return True


class SpargeHunyuanVideoPipeline(SpargePipelineMixin, HunyuanVideoPipeline):
    """``HunyuanVideoPipeline`` (diffusers 0.42) with Sparge attention."""


class SpargeHunyuanVideo15Pipeline(SpargePipelineMixin, HunyuanVideo15Pipeline):
    """``HunyuanVideo15Pipeline`` (diffusers 0.42) with Sparge attention."""


__all__ = ["HunyuanVideo15Family", "HunyuanVideoFamily", "SpargeHunyuanVideo15Pipeline", "SpargeHunyuanVideoPipeline"]
