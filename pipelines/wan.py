"""Wan 2.1 / 2.2 (T2V, I2V, TI2V): token geometry and the wrapped pipelines (diffusers 0.42); attention goes
through the Sparge backend.

Token layout of ``WanTransformer3DModel``: ``hidden_states: [B, C, F, H, W]`` is patched by a Conv3d with
``patch_size = (p_t, p_h, p_w)`` and flattened row-major over the grid ``(F / p_t, H / p_h, W / p_w)``. Each block
runs self-attention over the video tokens (``attn1``, with RoPE from ``rope``) and cross-attention from the video to
the text (``attn2``; for I2V the image tokens of ``encoder_hidden_states_image`` enter ``attn2`` through added K/V
projections). Only ``attn1`` is sparse: the cross-attention keys are a few hundred text / image tokens.

Boundary reorder: forward hooks on ``rope`` (cos and sin, ``[1, N, 1, D]``) and on ``patch_embedding`` (its
``[B, C, F, H, W]`` output, tokens flattened row-major, so the row-major tensor is freed at once instead of living
through the first block) permute the video tokens; Wan 2.2 TI2V's per-token timesteps (the transformer's ``timestep``
argument, ``[B, N]``; the time embedding is token-wise, so its ``temb`` / ``timestep_proj`` follow) move with them;
a forward hook on ``proj_out`` restores row-major order before the unpatchify reshape.

Context parallelism (`sparge_diffusers.parallel`): diffusers' ``WanTransformer3DModel._cp_plan`` splits the rotary
embeddings at the output of ``rope``, before Sparge's forward hook there could put them in curve order. The Sparge
plan (`WanFamily.context_parallel_plan`) is the same plan with that one split moved to the ``rotary_emb`` argument
of every block (a view of the full, permuted embeddings: no copy); the hidden states are split at ``blocks.0``'s
input, after Sparge has permuted them at ``patch_embedding``'s output, the TI2V timestep at the transformer's input
after the geometry hook, and the output is gathered at ``proj_out`` before Sparge restores row-major order. Wan 2.2
A14B pipelines carry a second transformer
(``transformer_2``): the wrapped pipelines put Sparge on both.
"""

from __future__ import annotations

from diffusers import WanImageToVideoPipeline, WanPipeline

from ._base import Boundary, Family, SpargePipelineMixin, video_grid


class WanFamily(Family):
    """``WanTransformer3DModel`` of diffusers 0.42 (Wan 2.1 1.3B / 14B T2V and I2V, Wan 2.2)."""

    name = "wan"
    text_side = "none"
    transformer_path = "diffusers:WanTransformer3DModel"
    attention_paths = ("diffusers.models.transformers.transformer_wan:WanAttention",)
    stock_processor_paths = ("diffusers.models.transformers.transformer_wan:WanAttnProcessor",)
    dense_module_suffixes = ("attn2",)
    entry = (
        Boundary("rope", "output", dim=1),
        Boundary("patch_embedding", "output", dim=2, flatten=True),
        Boundary("", "input", names=("timestep",), dim=1, min_ndim=2),  # Wan 2.2 TI2V: [B, N]
    )
    exit = (Boundary("proj_out"),)

    def grid(self, transformer, bound):
        p_t, p_h, _ = transformer.config.patch_size
        return video_grid(transformer, bound.get("hidden_states"), p_t, p_h)

    def context_parallel_plan(self, transformer):
        from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

        rope_split = ContextParallelInput(split_dim=1, expected_dims=4, split_output=False)  # cos, sin [1, N, 1, D]
        return {
            "": {"timestep": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False)},
            "blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
            "blocks.*": {"rotary_emb": [rope_split, rope_split]},
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        }


class SpargeWanPipeline(SpargePipelineMixin, WanPipeline):
    """``WanPipeline`` (diffusers 0.42) with Sparge attention on ``transformer`` (and ``transformer_2``, Wan 2.2)."""


class SpargeWanImageToVideoPipeline(SpargePipelineMixin, WanImageToVideoPipeline):
    """``WanImageToVideoPipeline`` (diffusers 0.42) with Sparge attention."""


__all__ = ["SpargeWanImageToVideoPipeline", "SpargeWanPipeline", "WanFamily"]
