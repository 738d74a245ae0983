"""diffusers integrations of sparge-diffusers, one module per model family (diffusers 0.42).

- `cogvideox`: ``CogVideoXTransformer3DModel`` (1.0 and 1.5), `SpargeCogVideoXPipeline`
- `mochi`: ``MochiTransformer3DModel``, `SpargeMochiPipeline`
- `flux`: ``FluxTransformer2DModel``, `SpargeFluxPipeline`
- `tiny`: small random-weight pipelines of the three families that run on a CPU in seconds (tests, CLI default)

Importing this package does not import diffusers; the family modules do, when first used.
"""

from __future__ import annotations

import importlib
from typing import Callable, List

_FAMILY_MODULES = {"cogvideox": "CogVideoXFamily", "mochi": "MochiFamily", "flux": "FluxFamily"}
FAMILIES = tuple(_FAMILY_MODULES)

_LAZY = {
    "SpargeCogVideoXPipeline": "cogvideox",
    "SpargeCogVideoXAttnProcessor": "cogvideox",
    "SpargeMochiPipeline": "mochi",
    "SpargeMochiAttnProcessor": "mochi",
    "SpargeFluxPipeline": "flux",
    "SpargeFluxAttnProcessor": "flux",
    "tiny_pipeline": "tiny",
    "tiny_prompt_embeds": "tiny",
}


def _families() -> List:
    families = []
    for module_name, class_name in _FAMILY_MODULES.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        families.append(getattr(module, class_name)())
    return families


def family_for(transformer):
    """A fresh `Family` object for a transformer instance.

    Raises:
        ValueError: the transformer's class is not one of the supported diffusers classes (the message names it).
    """
    for family in _families():
        if isinstance(transformer, family.transformer_class()):
            return family
    supported = ", ".join(f.transformer_class().__name__ for f in _families())
    raise ValueError(
        f"sparge-diffusers does not support {type(transformer).__name__}; supported transformers: {supported}"
    )


def family_attention_for(attn) -> Callable:
    """The family attention function for an attention module (`SpargeProcessor` dispatch).

    ``FluxAttention`` → Flux, ``MochiAttention`` → Mochi, diffusers' generic ``Attention`` → CogVideoX (the only
    supported model that uses it).
    """
    from .cogvideox import CogVideoXFamily, cogvideox_attention
    from .flux import FluxFamily, flux_attention
    from .mochi import MochiFamily, mochi_attention

    for family, fn in ((FluxFamily(), flux_attention), (MochiFamily(), mochi_attention),
                       (CogVideoXFamily(), cogvideox_attention)):
        if isinstance(attn, family.attention_class()):
            if family.name == "cogvideox" and getattr(attn, "added_kv_proj_dim", None) is not None:
                break  # an Attention with added KV projections (SD3, ...) is not CogVideoX's
            return fn
    raise ValueError(
        f"SpargeProcessor does not support the attention module {type(attn).__name__}; supported: FluxAttention, "
        "MochiAttention and the Attention of CogVideoXTransformer3DModel"
    )


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["FAMILIES", "family_attention_for", "family_for", *list(_LAZY)]  # noqa: PLE0604
