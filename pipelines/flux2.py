"""Flux.2: token geometry and the wrapped pipeline (diffusers 0.42); attention goes through the Sparge backend.

``Flux2Transformer2DModel`` lays tokens out like Flux (text first; ``img_ids: [N, 4]`` with coordinates
``(t, h, w, l)``, reference images after the target with another ``t``), with double-stream ``Flux2Attention`` and
single-stream ``Flux2ParallelSelfAttention`` blocks. The geometry and the boundary reorder are Flux's (the grid from
the leading ids' columns 1 and 2; ``hidden_states`` and ``img_ids`` permuted together, restored after ``proj_out``).
The KV-cache modes split the attention into parts of other lengths; those parts go dense (cross rule).
"""

from __future__ import annotations

from diffusers import Flux2Pipeline

from ._base import SpargePipelineMixin
from .flux import FluxFamily


class Flux2Family(FluxFamily):
    """``Flux2Transformer2DModel`` of diffusers 0.42 (FLUX.2 dev)."""

    name = "flux2"
    transformer_path = "diffusers:Flux2Transformer2DModel"
    attention_paths = (
        "diffusers.models.transformers.transformer_flux2:Flux2Attention",
        "diffusers.models.transformers.transformer_flux2:Flux2ParallelSelfAttention",
    )
    stock_processor_paths = (
        "diffusers.models.transformers.transformer_flux2:Flux2AttnProcessor",
        "diffusers.models.transformers.transformer_flux2:Flux2ParallelSelfAttnProcessor",
        "diffusers.models.transformers.transformer_flux2:Flux2KVAttnProcessor",
        "diffusers.models.transformers.transformer_flux2:Flux2KVParallelSelfAttnProcessor",
    )


class SpargeFlux2Pipeline(SpargePipelineMixin, Flux2Pipeline):
    """``Flux2Pipeline`` (diffusers 0.42) with Sparge attention."""


__all__ = ["Flux2Family", "SpargeFlux2Pipeline"]
