"""Capture the attention inputs of a CogVideoX pipeline during a real denoising run.

`capture_attention` runs ``pipe(...)`` once with a capturing processor in every attention layer. The processor is
diffusers' `CogVideoXAttnProcessor2_0` step for step (text tokens first, q/k/v projections, per-head QK
LayerNorm, rotary embedding on the video tokens only, SDPA, output projection), so the run's output is the stock
output; at the requested (denoising step, layer) pairs it also copies the post-RoPE ``q, k, v`` to the CPU in fp16.
These are the exact inputs that a sparse attention (`sparge_diffusers.sparge_attn`) would see in that layer, for
oracle-sparsity studies and error-budget calibration on learned attention.

Example::

    records = capture_attention(pipe, "a red ball rolling", steps=[0, 10, 19], num_inference_steps=20,
                                height=128, width=128, num_frames=9)
    r = records[0]
    r.q.shape          # [B, H, text_len + t*h*w, D]  (B = 2 with classifier-free guidance: negative, positive)
    r.text_len, r.grid # 226, (3, 16, 16)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@dataclass
class AttentionRecord:
    """The attention inputs of one layer at one denoising step.

    ``q, k, v``: fp16 CPU ``[B, H, S, D]`` with ``S = text_len + t*h*w``, text first (CogVideoX order), video tokens
    in (t, h, w) raster order, after QK-norm and RoPE. ``step``: denoising step index (0 = first);
    ``timestep``: the scheduler's timestep at that step; ``grid``: latent grid after patching ``(t, h, w)``.
    """

    step: int
    layer: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    text_len: int
    grid: Tuple[int, int, int]
    timestep: Optional[float] = None

    @property
    def scale(self) -> float:
        return self.q.shape[-1] ** -0.5


class _CaptureState:
    def __init__(self, steps: Optional[Sequence[int]], layers: Optional[Sequence[int]], grid) -> None:
        self.steps = None if steps is None else set(int(s) for s in steps)
        self.layers = None if layers is None else set(int(i) for i in layers)
        self.grid = grid
        self.step = -1
        self.timestep: Optional[float] = None
        self.records: List[AttentionRecord] = []

    def wanted(self, layer: int) -> bool:
        return ((self.steps is None or self.step in self.steps)
                and (self.layers is None or layer in self.layers))


class CapturingCogVideoXAttnProcessor:
    """`CogVideoXAttnProcessor2_0` that also records post-RoPE q, k, v into a shared capture state."""

    def __init__(self, layer: int, state: _CaptureState) -> None:
        self.layer = layer
        self.state = state

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None,
                 image_rotary_emb: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.embeddings import apply_rotary_emb

        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # [B, S, C], text first
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # [B, H, S, D]
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)
        if self.state.wanted(self.layer):
            self.state.records.append(AttentionRecord(
                step=self.state.step, layer=self.layer, q=query.detach().to("cpu", torch.float16),
                k=key.detach().to("cpu", torch.float16), v=value.detach().to("cpu", torch.float16),
                text_len=int(text_seq_length), grid=self.state.grid, timestep=self.state.timestep))
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                       is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1)
        return hidden_states, encoder_hidden_states


def latent_grid(pipe, height: int, width: int, num_frames: int) -> Tuple[int, int, int]:
    """Token grid ``(t, h, w)`` of a CogVideoX call of that size (after the VAE and the patch embedding)."""
    cfg = pipe.transformer.config
    spatial = pipe.vae_scale_factor_spatial * cfg.patch_size
    frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
    if cfg.patch_size_t is not None:
        frames = (frames + cfg.patch_size_t - 1) // cfg.patch_size_t
    return (frames, height // spatial, width // spatial)


def _attention_layers(transformer) -> Dict[str, int]:
    """Processor key of each attention layer -> its layer index (block order)."""
    keys = [k for k in transformer.attn_processors if k.startswith("transformer_blocks.")]
    return {k: int(k.split(".")[1]) for k in keys}


@torch.no_grad()
def capture_attention(pipe, prompt, *, steps: Optional[Sequence[int]] = None, layers: Optional[Sequence[int]] = None,
                      return_output: bool = False, **call_kwargs):
    """Run ``pipe(prompt, **call_kwargs)`` once and record post-RoPE q, k, v of the chosen attention layers.

    Args:
        pipe: a diffusers ``CogVideoXPipeline`` (or subclass) with the stock attention processors.
        prompt: the prompt (or list of prompts) of the call.
        steps: denoising step indices to record (0 = first; ``None`` = all). Each transformer call is one step.
        layers: transformer block indices to record (``None`` = all).
        return_output: also return the pipeline's output.
        call_kwargs: passed to the pipeline (``height``, ``width``, ``num_frames``, ``num_inference_steps``,
            ``guidance_scale``, ``generator``, ``output_type``, ...); the pipeline's defaults fill the rest.

    Returns:
        ``records``: `AttentionRecord` s in call order (step, then layer), or ``(records, output)``.

    The pipeline's processors are restored afterwards, also on error.
    """
    transformer = pipe.transformer
    cfg = transformer.config
    height = call_kwargs.get("height") or cfg.sample_height * pipe.vae_scale_factor_spatial
    width = call_kwargs.get("width") or cfg.sample_width * pipe.vae_scale_factor_spatial
    num_frames = call_kwargs.get("num_frames") or cfg.sample_frames
    state = _CaptureState(steps, layers, latent_grid(pipe, height, width, num_frames))
    layer_of = _attention_layers(transformer)
    if not layer_of:
        raise ValueError("pipe.transformer has no transformer_blocks attention layers to capture")
    if layers is not None:
        missing = set(int(i) for i in layers) - set(layer_of.values())
        if missing:
            raise ValueError(f"layers must be in 0..{max(layer_of.values())}, got {sorted(missing)}")
    original = dict(transformer.attn_processors)
    processors = dict(original)
    for key, layer in layer_of.items():
        processors[key] = CapturingCogVideoXAttnProcessor(layer, state)

    def pre_hook(module, args, kwargs):
        state.step += 1
        t = kwargs.get("timestep")
        state.timestep = float(t.flatten()[0]) if torch.is_tensor(t) else (float(t) if t is not None else None)

    handle = transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    transformer.set_attn_processor(processors)
    try:
        output = pipe(prompt, **call_kwargs)
    finally:
        handle.remove()
        transformer.set_attn_processor(original)
    logger.info("captured %d attention records over %d steps", len(state.records), state.step + 1)
    return (state.records, output) if return_output else state.records


__all__ = ["AttentionRecord", "CapturingCogVideoXAttnProcessor", "capture_attention", "latent_grid"]
