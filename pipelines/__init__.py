"""diffusers integrations of sparge-diffusers, one module per model family (diffusers 0.42).

Dispatch models (the ``"sparge"`` attention backend; geometry and token order from the family's hooks):

- `wan`: ``WanTransformer3DModel`` (Wan 2.1 / 2.2 T2V, I2V), `SpargeWanPipeline`, `SpargeWanImageToVideoPipeline`
- `hunyuan_video`: ``HunyuanVideoTransformer3DModel`` (`SpargeHunyuanVideoPipeline`) and
  ``HunyuanVideo15Transformer3DModel`` (`SpargeHunyuanVideo15Pipeline`)
- `ltx`: ``LTXVideoTransformer3DModel``, `SpargeLTXPipeline`
- `flux`: ``FluxTransformer2DModel``, `SpargeFluxPipeline`
- `flux2`: ``Flux2Transformer2DModel``, `SpargeFlux2Pipeline`
- `qwenimage`: ``QwenImageTransformer2DModel``, `SpargeQwenImagePipeline`

Copied processors (the model calls SDPA directly):

- `cogvideox`: ``CogVideoXTransformer3DModel`` (1.0 and 1.5), `SpargeCogVideoXPipeline`
- `mochi`: ``MochiTransformer3DModel``, `SpargeMochiPipeline`

`tiny`: small random-weight pipelines / transformers of the families that run on a CPU in seconds.

Importing this package registers the families with the core registry (`sparge_diffusers.family.register_family`)
and does not import diffusers; a family module is imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Optional, Tuple

from sparge_diffusers.family import FamilyEntry, register_family, registered_families

_P = "sparge_diffusers.pipelines"

_ENTRIES = (
    FamilyEntry("cogvideox", ("CogVideoXTransformer3DModel",), f"{_P}.cogvideox:CogVideoXFamily",
                {"CogVideoXPipeline": f"{_P}.cogvideox:SpargeCogVideoXPipeline"}, ("Attention",)),
    FamilyEntry("mochi", ("MochiTransformer3DModel",), f"{_P}.mochi:MochiFamily",
                {"MochiPipeline": f"{_P}.mochi:SpargeMochiPipeline"}, ("MochiAttention",)),
    FamilyEntry("flux", ("FluxTransformer2DModel",), f"{_P}.flux:FluxFamily",
                {"FluxPipeline": f"{_P}.flux:SpargeFluxPipeline"}, ("FluxAttention",)),
    FamilyEntry("wan", ("WanTransformer3DModel",), f"{_P}.wan:WanFamily",
                {"WanPipeline": f"{_P}.wan:SpargeWanPipeline",
                 "WanImageToVideoPipeline": f"{_P}.wan:SpargeWanImageToVideoPipeline"}),
    FamilyEntry("hunyuan_video", ("HunyuanVideoTransformer3DModel",), f"{_P}.hunyuan_video:HunyuanVideoFamily",
                {"HunyuanVideoPipeline": f"{_P}.hunyuan_video:SpargeHunyuanVideoPipeline"}),
    FamilyEntry("hunyuan_video15", ("HunyuanVideo15Transformer3DModel",),
                f"{_P}.hunyuan_video:HunyuanVideo15Family",
                {"HunyuanVideo15Pipeline": f"{_P}.hunyuan_video:SpargeHunyuanVideo15Pipeline"}),
    FamilyEntry("ltx", ("LTXVideoTransformer3DModel",), f"{_P}.ltx:LTXFamily",
                {"LTXPipeline": f"{_P}.ltx:SpargeLTXPipeline"}),
    FamilyEntry("flux2", ("Flux2Transformer2DModel",), f"{_P}.flux2:Flux2Family",
                {"Flux2Pipeline": f"{_P}.flux2:SpargeFlux2Pipeline"}),
    FamilyEntry("qwenimage", ("QwenImageTransformer2DModel",), f"{_P}.qwenimage:QwenImageFamily",
                {"QwenImagePipeline": f"{_P}.qwenimage:SpargeQwenImagePipeline"}),
)
for _entry in _ENTRIES:
    register_family(_entry)

FAMILIES = registered_families()
# the families with a tiny pipeline for the CLI default (the others have tiny transformers: `tiny.tiny_transformer`)
PIPELINE_FAMILIES = ("cogvideox", "mochi", "flux")

_PIPELINE_TABLE = {name: (entry.name, path) for entry in _ENTRIES for name, path in entry.pipelines.items()}


def pipeline_class_names() -> Tuple[str, ...]:
    """The diffusers pipeline class names (``model_index.json`` ``_class_name``) that have a Sparge pipeline."""
    return tuple(_PIPELINE_TABLE)


def family_for_pipeline_class(name: str) -> Optional[Tuple[str, type]]:
    """``(family name, wrapped Sparge pipeline class)`` for a diffusers pipeline class name, or None.

    Example: ``family_for_pipeline_class("WanPipeline") == ("wan", SpargeWanPipeline)``. The family module (and
    diffusers) is imported only for a known name.
    """
    hit = _PIPELINE_TABLE.get(name)
    if hit is None:
        return None
    family, path = hit
    module, cls = path.split(":")
    return family, getattr(importlib.import_module(module), cls)


def family_for(transformer):
    """The `Family` of a transformer instance (`sparge_diffusers.family.family_for`)."""
    from sparge_diffusers.family import family_for as _family_for

    return _family_for(transformer)


_LAZY = {
    "SpargeCogVideoXPipeline": "cogvideox",
    "SpargeCogVideoXAttnProcessor": "cogvideox",
    "SpargeMochiPipeline": "mochi",
    "SpargeMochiAttnProcessor": "mochi",
    "SpargeFluxPipeline": "flux",
    "SpargeFluxAttnProcessor": "flux",
    "SpargeWanPipeline": "wan",
    "SpargeWanImageToVideoPipeline": "wan",
    "SpargeHunyuanVideoPipeline": "hunyuan_video",
    "SpargeHunyuanVideo15Pipeline": "hunyuan_video",
    "SpargeLTXPipeline": "ltx",
    "SpargeFlux2Pipeline": "flux2",
    "SpargeQwenImagePipeline": "qwenimage",
    "tiny_pipeline": "tiny",
    "tiny_prompt_embeds": "tiny",
    "tiny_transformer": "tiny",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["FAMILIES", "PIPELINE_FAMILIES", "family_for", "family_for_pipeline_class",  # noqa: PLE0604
           "pipeline_class_names", *list(_LAZY)]
