"""CogVideoX (1.0 and 1.5 variants): Sparge processor, token geometry and the wrapped pipeline (diffusers 0.42).

Token layout of ``CogVideoXTransformer3DModel``: the patch embedding returns ``[text, video]`` concatenated (text
first, ``max_text_seq_length`` tokens), the blocks carry text and video separately, and every attention layer
concatenates them again as ``[text, video]``. Video tokens are row-major over the latent grid
``(frames // patch_size_t or frames, height // patch_size, width // patch_size)``. RoPE (``image_rotary_emb``,
computed by the pipeline and passed to the forward) covers the video tokens only; CogVideoX-2b has no RoPE and adds a
sin-cos positional embedding inside the patch embedding instead.

Boundary reorder: the forward pre-hook permutes ``image_rotary_emb``; a forward hook on ``patch_embed`` permutes the
video part of its output (after the positional embedding was added); a forward hook on ``proj_out`` restores
row-major order before the unpatchify reshape.
"""

from __future__ import annotations

import logging
import math
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from diffusers import CogVideoXPipeline

from sparge_diffusers._logging import log_once
from sparge_diffusers import sparse_call
from sparge_diffusers.context import SpargeContext
from sparge_diffusers.token_order import BoundaryOrder
from sparge_diffusers.processor import SpargeProcessor

from ._base import BoundArguments, Family, SpargePipelineMixin, boundary_permutation, resolve_grid, revert_output_hook

logger = logging.getLogger(__name__)


def cogvideox_attention(proc: SpargeProcessor, attn, hidden_states: torch.Tensor,
                        encoder_hidden_states: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor] = None,
                        image_rotary_emb=None):
    """``CogVideoXAttnProcessor2_0`` (and its fused-QKV variant) of diffusers 0.42 with `sparge_attn` as attention.

    Sequence ``[text, video]``; the text range ``[0, text_len)`` is always computed. A call with an attention mask
    (no CogVideoX pipeline passes one) uses the stock masked SDPA.
    """
    if encoder_hidden_states is None:
        raise ValueError(
            "the CogVideoX Sparge processor needs encoder_hidden_states (text first); got None from "
            f"{type(attn).__name__}: is this a CogVideoX transformer?"
        )
    text_seq_length = encoder_hidden_states.size(1)

    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)

    fused = getattr(attn, "fused_projections", False) and hasattr(attn, "to_qkv")
    if fused:  # FusedCogVideoXAttnProcessor2_0 takes the mask shape from the text tokens
        batch_size, sequence_length, _ = encoder_hidden_states.shape
    else:
        batch_size, sequence_length, _ = hidden_states.shape

    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

    if fused:
        qkv = attn.to_qkv(hidden_states)
        split_size = qkv.shape[-1] // 3
        query, key, value = torch.split(qkv, split_size, dim=-1)
    else:
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)

    inner_dim = key.shape[-1]
    head_dim = inner_dim // attn.heads

    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    # Apply RoPE if needed
    if image_rotary_emb is not None:
        from diffusers.models.embeddings import apply_rotary_emb

        query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
        if not attn.is_cross_attention:
            key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)

    # the only change: the attention call
    layer = proc.layer(attn)
    policy = "masked" if attention_mask is not None else sparse_call.layer_policy(layer)
    timer = sparse_call.start_timer(layer, query.device)
    sparsity = backend = None
    if policy == "sparse":
        text = sparse_call.text_range(layer, query.shape[2], hint=(0, text_seq_length))
        keep = sparse_call.keep_ranges_for(layer, *text)
        hidden_states, sparsity, backend = sparse_call.attend(query, key, value, layer=layer, layout="BHSD",
                                                              keep_ranges=keep, visual_offset=text_seq_length)
    else:
        if policy == "masked":
            log_once(logger, "cogvideox-mask", "CogVideoX Sparge processor: attention_mask given; that call uses "
                     "dense masked attention")
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
    sparse_call.record(layer, timer, policy=policy, sparsities=[sparsity], backend=backend, batch=batch_size,
                       heads=attn.heads, seq_len=query.shape[2], text_len=text_seq_length)

    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)

    # linear proj
    hidden_states = attn.to_out[0](hidden_states)
    # dropout
    hidden_states = attn.to_out[1](hidden_states)

    encoder_hidden_states, hidden_states = hidden_states.split(
        [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
    )
    return hidden_states, encoder_hidden_states


class SpargeCogVideoXAttnProcessor(SpargeProcessor):
    """Sparge processor for ``CogVideoXTransformer3DModel`` (1.0 and 1.5), following ``CogVideoXAttnProcessor2_0``
    and ``FusedCogVideoXAttnProcessor2_0`` of diffusers 0.42: ``transformer.set_attn_processor(
    SpargeCogVideoXAttnProcessor(config))`` or `apply_sparge`."""

    attention_impl = staticmethod(cogvideox_attention)


class CogVideoXFamily(Family):
    """``CogVideoXTransformer3DModel`` of diffusers 0.42 (CogVideoX-2b / 5b 1.0, CogVideoX1.5 with ``patch_size_t``)."""

    name = "cogvideox"
    uses_dispatch = False
    processor_class = SpargeCogVideoXAttnProcessor
    text_side = "first"

    transformer_path = "diffusers:CogVideoXTransformer3DModel"
    attention_paths = ("diffusers.models.attention_processor:Attention",)
    stock_processor_paths = (
        "diffusers.models.attention_processor:CogVideoXAttnProcessor2_0",
        "diffusers.models.attention_processor:FusedCogVideoXAttnProcessor2_0",
    )

    def accepts_attention(self, attn) -> bool:
        return getattr(attn, "added_kv_proj_dim", None) is None  # an Attention with added KV (SD3, ...) is not ours

    @staticmethod
    def grid_of(transformer, hidden_states: torch.Tensor):
        """Latent grid after patching of ``hidden_states: [B, F, C, H, W]``."""
        _, frames, _, height, width = hidden_states.shape
        p = transformer.config.patch_size
        p_t = transformer.config.patch_size_t
        return (frames // p_t if p_t else frames, height // p, width // p)

    def on_forward(self, transformer, context: SpargeContext, bound: BoundArguments) -> None:
        hidden_states = bound.get("hidden_states")
        encoder_hidden_states = bound.get("encoder_hidden_states")
        grid = self.grid_of(transformer, hidden_states)
        num_visual = math.prod(grid)
        grid = resolve_grid(self.name, grid, num_visual, context.geometry)
        text_len = encoder_hidden_states.shape[1]
        context.begin_forward(grid=grid, num_visual=num_visual, text_len=text_len, text_side="first",
                              timestep=bound.get("timestep"), batch=hidden_states.shape[0])
        perm = boundary_permutation(context, hidden_states.device)
        if perm is None:
            return
        context.current.permutation = perm
        # the patch embedding's output is [text, visual]: the same order behind the text
        context.current.entry_permutation = BoundaryOrder(grid, perm.kind, num_visual, hidden_states.device,
                                                          offset=text_len)
        rotary = bound.get("image_rotary_emb")
        if rotary is not None:
            for r in rotary:
                if r.shape[0] != num_visual:
                    raise ValueError(
                        f"image_rotary_emb has {r.shape[0]} positions but the latent grid {grid} has {num_visual} "
                        "tokens; pass SpargeGeometry(grid=...) or use reorder='none'"
                    )
            bound.set("image_rotary_emb", tuple(perm.apply(r, dim=0) for r in rotary))

    def install_boundary_hooks(self, transformer, context: SpargeContext) -> List[Any]:
        def patch_embed_hook(module, args, output):
            perm = context.current.entry_permutation
            return None if perm is None else perm.apply(output, dim=1)

        return [
            transformer.patch_embed.register_forward_hook(patch_embed_hook),
            transformer.proj_out.register_forward_hook(revert_output_hook(context)),
        ]


class SpargeCogVideoXPipeline(SpargePipelineMixin, CogVideoXPipeline):
    """``CogVideoXPipeline`` (diffusers 0.42) with Sparge attention.

    ``SpargeCogVideoXPipeline.from_pretrained(local_path, sparge_config=SpargeConfig(...), torch_dtype=...)``; the
    call is the stock one; ``pipe.sparge_stats`` holds the per-layer, per-step statistics of the last call.
    """


__all__ = ["CogVideoXFamily", "SpargeCogVideoXAttnProcessor", "SpargeCogVideoXPipeline", "cogvideox_attention"]
