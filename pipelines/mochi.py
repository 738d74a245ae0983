"""Mochi: Sparge processor, token geometry and the wrapped pipeline (diffusers 0.42).

Token layout of ``MochiTransformer3DModel``: video tokens come FIRST, row-major over the latent grid
``(frames, height // patch_size, width // patch_size)``; each attention layer appends the sample's VALID text tokens
(``encoder_attention_mask``), so the attention sequence of sample ``b`` is ``[video (N), text (n_b)]`` and the stock
processor runs one attention per sample. The patch embedding runs per frame and RoPE (``self.rope``) is computed
inside the forward; the transformer has no ``set_attn_processor``.

Boundary reorder: a forward hook on ``rope`` permutes the rotary embeddings, a forward pre-hook on the first
transformer block permutes the hidden states (the first place where all frames' tokens form one sequence), and a
forward hook on ``proj_out`` restores row-major order before the unpatchify reshape.
"""

from __future__ import annotations

import math
from typing import Any, List

import torch
import torch.nn.functional as F
from diffusers import MochiPipeline

from sparge_diffusers import sparse_call
from sparge_diffusers.context import SpargeContext
from sparge_diffusers.processor import SpargeProcessor

from ._base import BoundArguments, Family, SpargePipelineMixin, boundary_permutation, resolve_grid, revert_output_hook


def _apply_rotary_emb(x, freqs_cos, freqs_sin):
    # MochiAttnProcessor2_0's inner helper (diffusers 0.42)
    x_even = x[..., 0::2].float()
    x_odd = x[..., 1::2].float()

    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)

    return torch.stack([cos, sin], dim=-1).flatten(-2)


def _project_heads(heads: int, states: torch.Tensor, projections, norm_q, norm_k):
    # One stream's Q, K, V [B, S, heads, head_dim] with the optional QK norms, as the stock processor computes them
    # for the video (to_q/k/v, norm_q/k) and the text (add_q/k/v_proj, norm_added_q/k) streams.
    query, key, value = (proj(states).unflatten(2, (heads, -1)) for proj in projections)
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return query, key, value


def mochi_attention(proc: SpargeProcessor, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    attention_mask: torch.Tensor, image_rotary_emb=None):
    """``MochiAttnProcessor2_0`` of diffusers 0.42 with `sparge_attn` as attention.

    Per sample ``b``: the sequence is ``[video (N), valid text (n_b)]`` and the text range ``[N, N + n_b)`` is always
    computed, so a padded batch (CFG with prompts of different lengths) keeps each sample's own text.
    """
    query, key, value = _project_heads(attn.heads, hidden_states, (attn.to_q, attn.to_k, attn.to_v),
                                       attn.norm_q, attn.norm_k)
    encoder_query, encoder_key, encoder_value = _project_heads(
        attn.heads, encoder_hidden_states, (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
        attn.norm_added_q, attn.norm_added_k)

    if image_rotary_emb is not None:
        query = _apply_rotary_emb(query, *image_rotary_emb)
        key = _apply_rotary_emb(key, *image_rotary_emb)

    query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    encoder_query, encoder_key, encoder_value = (
        encoder_query.transpose(1, 2),
        encoder_key.transpose(1, 2),
        encoder_value.transpose(1, 2),
    )

    sequence_length = query.size(2)
    encoder_sequence_length = encoder_query.size(2)
    total_length = sequence_length + encoder_sequence_length

    batch_size, heads, _, _ = query.shape

    # the only change: the attention call (per sample, as in the stock processor)
    layer = proc.layer(attn)
    policy = sparse_call.layer_policy(layer)
    timer = sparse_call.start_timer(layer, query.device)
    sparsities, backend = [], None
    attn_outputs = []
    for idx in range(batch_size):
        mask = attention_mask[idx][None, :]
        valid_prompt_token_indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()

        valid_encoder_query = encoder_query[idx : idx + 1, :, valid_prompt_token_indices, :]
        valid_encoder_key = encoder_key[idx : idx + 1, :, valid_prompt_token_indices, :]
        valid_encoder_value = encoder_value[idx : idx + 1, :, valid_prompt_token_indices, :]

        valid_query = torch.cat([query[idx : idx + 1], valid_encoder_query], dim=2)
        valid_key = torch.cat([key[idx : idx + 1], valid_encoder_key], dim=2)
        valid_value = torch.cat([value[idx : idx + 1], valid_encoder_value], dim=2)

        if policy == "sparse":
            text = sparse_call.text_range(layer, valid_query.size(2), hint=(sequence_length, valid_query.size(2)))
            keep = sparse_call.keep_ranges_for(layer, *text)
            attn_output, sparsity, backend = sparse_call.attend(valid_query, valid_key, valid_value, layer=layer,
                                                                layout="BHSD", keep_ranges=keep, visual_offset=0)
            sparsities.append(sparsity)
        else:
            attn_output = F.scaled_dot_product_attention(
                valid_query, valid_key, valid_value, dropout_p=0.0, is_causal=False
            )
        valid_sequence_length = attn_output.size(2)
        attn_output = F.pad(attn_output, (0, 0, 0, total_length - valid_sequence_length))
        attn_outputs.append(attn_output)

    hidden_states = torch.cat(attn_outputs, dim=0)
    sparse_call.record(layer, timer, policy=policy, sparsities=sparsities, backend=backend, batch=batch_size, heads=heads,
                seq_len=total_length, text_len=encoder_sequence_length)
    hidden_states = hidden_states.transpose(1, 2).flatten(2, 3)

    hidden_states, encoder_hidden_states = hidden_states.split_with_sizes(
        (sequence_length, encoder_sequence_length), dim=1
    )

    # linear proj
    hidden_states = attn.to_out[0](hidden_states)
    # dropout
    hidden_states = attn.to_out[1](hidden_states)

    if hasattr(attn, "to_add_out"):
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states)

    return hidden_states, encoder_hidden_states


class SpargeMochiAttnProcessor(SpargeProcessor):
    """Sparge processor for ``MochiTransformer3DModel``, following ``MochiAttnProcessor2_0`` of diffusers 0.42.

    Mochi's transformer has no ``set_attn_processor``: use `apply_sparge` (or set ``attn.processor`` yourself).
    """

    attention_impl = staticmethod(mochi_attention)


class MochiFamily(Family):
    """``MochiTransformer3DModel`` of diffusers 0.42."""

    name = "mochi"
    uses_dispatch = False
    processor_class = SpargeMochiAttnProcessor
    text_side = "last"

    transformer_path = "diffusers:MochiTransformer3DModel"
    attention_paths = ("diffusers.models.attention_processor:MochiAttention",)
    stock_processor_paths = ("diffusers.models.attention_processor:MochiAttnProcessor2_0",)

    @staticmethod
    def grid_of(transformer, hidden_states: torch.Tensor):
        """Latent grid after patching of ``hidden_states: [B, C, F, H, W]``."""
        _, _, frames, height, width = hidden_states.shape
        p = transformer.config.patch_size
        return (frames, height // p, width // p)

    def on_forward(self, transformer, context: SpargeContext, bound: BoundArguments) -> None:
        hidden_states = bound.get("hidden_states")
        grid = self.grid_of(transformer, hidden_states)
        num_visual = math.prod(grid)
        grid = resolve_grid(self.name, grid, num_visual, context.geometry)
        mask = bound.get("encoder_attention_mask")
        text_len = None if mask is None else mask.shape[-1]
        context.begin_forward(grid=grid, num_visual=num_visual, text_len=text_len, text_side="last",
                              timestep=bound.get("timestep"), batch=hidden_states.shape[0])
        perm = boundary_permutation(context, hidden_states.device)
        context.current.permutation = perm
        context.current.entry_permutation = perm

    def install_boundary_hooks(self, transformer, context: SpargeContext) -> List[Any]:
        def rope_hook(module, args, output):
            perm = context.current.permutation
            if perm is None:
                return None
            return tuple(perm.apply(r, dim=0) for r in output)

        def first_block_hook(module, args, kwargs):
            perm = context.current.entry_permutation
            if perm is None:
                return None
            bound = BoundArguments(module, args, kwargs)
            bound.set("hidden_states", perm.apply(bound.get("hidden_states"), dim=1))
            return bound.result()

        return [
            transformer.rope.register_forward_hook(rope_hook),
            transformer.transformer_blocks[0].register_forward_pre_hook(first_block_hook, with_kwargs=True),
            transformer.proj_out.register_forward_hook(revert_output_hook(context)),
        ]


class SpargeMochiPipeline(SpargePipelineMixin, MochiPipeline):
    """``MochiPipeline`` (diffusers 0.42) with Sparge attention.

    ``SpargeMochiPipeline.from_pretrained(local_path, sparge_config=SpargeConfig(...), torch_dtype=...)``; the call
    is the stock one; ``pipe.sparge_stats`` holds the per-layer, per-step statistics of the last call.
    """


__all__ = ["MochiFamily", "SpargeMochiAttnProcessor", "SpargeMochiPipeline", "mochi_attention"]
