"""`SpargeProcessor`: the attention processor of the models that bypass diffusers' attention dispatch (CogVideoX,
Mochi: copied processors), and the standalone way into the Sparge backend for dispatch models (Flux).

A copied processor reproduces the stock diffusers processor of its model (projections, QK-norm, RoPE, the text /
visual concatenation) and replaces only the attention call by `sparse_call.attend`. On a dispatch model the processor
is the model's stock processor with the ``"sparge"`` backend, announced to the backend for the duration of the call.

Used directly (``transformer.set_attn_processor(SpargeProcessor(config))``, without `apply_sparge`) there is no
geometry hook: tokens stay in row-major order, ``dense_steps`` cannot be honoured (the step is unknown), layer
indices are assigned in call order, and the text range comes from the call itself (text-first joint attention: the
length of ``encoder_hidden_states``; a Flux single-stream block reuses the last one seen).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from ._logging import log_once
from .config import SpargeConfig
from .context import LayerCall, SpargeContext, active_layer

logger = logging.getLogger(__name__)


class SpargeProcessor:
    """Sparge attention processor for the supported diffusers attention modules (see the module docstring).

    Args:
        config: the sparse attention setting (`SpargeConfig()` when None); ignored when ``context`` is given (the
            config is stored once, in the context).
        collect_stats: record per-call statistics (standalone use; `apply_sparge` passes its own context).
        layer_index, name, context: set by `apply_sparge`.
    """

    # diffusers' attention-backend machinery sets these on processors
    _attention_backend = None
    _parallel_config = None

    # the copied-processor families pin their attention function here; otherwise it is looked up per module
    attention_impl: Optional[Callable] = None

    def __init__(self, config: Optional[SpargeConfig] = None, *, collect_stats: bool = False,
                 layer_index: Optional[int] = None, name: Optional[str] = None,
                 context: Optional[SpargeContext] = None) -> None:
        if context is None:
            if config is not None and not isinstance(config, SpargeConfig):
                raise ValueError(f"config must be a SpargeConfig or None, got {type(config).__name__}")
            context = SpargeContext(SpargeConfig() if config is None else config, collect_stats=collect_stats)
        self.context = context
        self.layer_index = layer_index
        self.name = name
        self._stock = {}
        # One LayerCall per attention layer for the processor's life, so that its BudgetGuard carries the drop masses
        # across calls, and none is created while torch.compile traces (a graph break at every layer): made here
        # when apply_sparge gives the layer, else on a layer's first call.
        self._layer = LayerCall(context, layer_index, name) if layer_index is not None else None
        self._layers = {}

    @property
    def config(self) -> SpargeConfig:
        return self.context.config

    def layer(self, attn) -> LayerCall:
        """The `LayerCall` of ``attn``: the one given at construction, else one per module (standalone processors
        shared by several layers), made on the module's first call."""
        if self._layer is not None:
            return self._layer
        call = self._layers.get(id(attn))
        if call is None:
            call = self._layers[id(attn)] = LayerCall(self.context, self.context.layer_index(attn), self.name)
        return call

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 **kwargs):
        if self.attention_impl is not None:
            return self.attention_impl(self, attn, hidden_states, encoder_hidden_states, attention_mask,
                                       image_rotary_emb)
        from .family import family_for_attention

        family = family_for_attention(attn)
        if not family.uses_dispatch:
            impl = family.processor_class.attention_impl
            return impl(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        return self._through_backend(family, attn, hidden_states, encoder_hidden_states, attention_mask,
                                     image_rotary_emb, **kwargs)

    def _through_backend(self, family, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                         **kwargs):
        from .backend import sparge_backend_member

        stock = self._stock.get(type(attn))
        if stock is None:
            stock = self._stock[type(attn)] = family.stock_processor(attn)
        stock._attention_backend = sparge_backend_member()
        stock._parallel_config = self._parallel_config
        layer = self.layer(attn)
        if not self.context.current.active:
            layer.text_hint = self._text_hint(family, hidden_states, encoder_hidden_states)
        previous, active_layer.call = active_layer.call, layer
        try:
            return stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)
        finally:
            active_layer.call = previous

    def _text_hint(self, family, hidden_states, encoder_hidden_states):
        if family.text_side != "first":
            return None
        if encoder_hidden_states is not None:
            self.context.seen_text_len = int(encoder_hidden_states.shape[1])
            return (0, self.context.seen_text_len)
        if self.context.seen_text_len is not None:
            return (0, self.context.seen_text_len)
        log_once(logger, "standalone-single-text", "SpargeProcessor: a single-stream block ran before any "
                 "double-stream block and without apply_sparge's geometry hook; its text tokens are not protected")
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer_index}, config={self.config})"


__all__ = ["SpargeProcessor"]
