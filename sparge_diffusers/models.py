"""Model discovery and loading for the command line: which pipeline a ``--model`` names, and a `LoadedModel`.

``--model`` is either an embedded random-weight tiny pipeline (`EMBEDDED_MODELS`: ``tiny`` = ``tiny-cogvideox``,
``tiny-mochi``, ``tiny-flux``; built from configs by `sparge_diffusers.pipelines.tiny`, no weights) or a local
diffusers pipeline folder. A folder's family comes from ``model_index.json``'s ``_class_name`` through ONE table,
`PIPELINE_FAMILIES`; what the command line needs to know about a family (video or image, frame rate, classifier-free
guidance, the smallest step count, which frame counts its VAE renders) is ONE row of `FAMILY_SPECS`.

Prompts: a pipeline with a text encoder encodes them itself (``prompt`` plus, for the families whose default call
runs classifier-free guidance, the empty ``negative_prompt``); a pipeline without one (the random tiny models, or
a folder saved from them) gets deterministic hash embeddings (`sparge_diffusers.pipelines.tiny.tiny_prompt_embeds`)
under the same negative-prompt rule (`uses_negative_prompt`).

`DEFAULT_MODEL` / `default_model()` name the model used when ``--model`` is not given.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .errors import UsageError

logger = logging.getLogger(__name__)

# The model used when --model is not given (a name of EMBEDDED_MODELS or a local pipeline folder).

EMBEDDED_MODELS = {"tiny": "cogvideox", "tiny-cogvideox": "cogvideox", "tiny-mochi": "mochi", "tiny-flux": "flux"}
# the trained pipeline shipped as package data (`sparge_diffusers.embedded`): a real CogVideoXPipeline folder
TRAINED_MODEL = "toy-cogvideox"
# The model used when --model is not given: the shipped trained pipeline.
DEFAULT_MODEL = TRAINED_MODEL
TINY_STEPS = 4  # denoising steps of the embedded tiny pipelines unless --steps is given
NEGATIVE_PROMPT = ""  # the negative prompt of classifier-free guidance (families with `negative_prompt=True`)



def _pipeline_families() -> Dict[str, str]:
    """diffusers pipeline class (model_index.json ``"_class_name"``) -> family, from the integration's own table
    (`sparge_diffusers.pipelines.family_for_pipeline_class`); the Sparge wrappers save their stock name with the
    "Sparge" prefix, which is stripped before the lookup."""
    from .pipelines import _PIPELINE_TABLE

    return {name: family for name, (family, _) in _PIPELINE_TABLE.items()}


PIPELINE_FAMILIES = _pipeline_families()


def default_model() -> str:
    """The ``--model`` of a command line that gives none (`DEFAULT_MODEL`)."""
    return DEFAULT_MODEL


def stock_class_name(class_name: str) -> str:
    """``SpargeCogVideoXPipeline`` -> ``CogVideoXPipeline``; stock names are returned unchanged."""
    return class_name[len("Sparge"):] if class_name.startswith("Sparge") else class_name


def _cogvideox_frames(pipe, requested: int) -> int:
    """Frames the CogVideoX VAE of diffusers 0.42 decodes for ``num_frames=requested``.

    The pipeline makes ``(n - 1) // r + 1`` latent frames (r = temporal compression; CogVideoX 1.5 pads them to a
    multiple of ``patch_size_t`` and trims the padding before decoding). `AutoencoderKLCogVideoX._decode` decodes
    them in slices of ``num_latent_frames_batch_size`` (the first slice takes the remainder), and each
    time-upsampling block maps a slice of ``T > 1`` frames to ``2T - 1`` frames when ``T`` is odd, ``2T`` when even.
    So with r = 4: 1, 9, 17, 25, ... come out as asked; 5 comes out as 8 frames, 2 as 1.
    """
    ratio = int(pipe.vae_scale_factor_temporal)
    vae = getattr(pipe, "vae", None)
    latent = (requested - 1) // ratio + 1
    batch = int(getattr(vae, "num_latent_frames_batch_size", 2) or 2)
    levels = int(math.log2(ratio)) if ratio > 1 else 0
    if vae is not None and hasattr(vae, "config"):
        levels = min(levels, max(0, len(vae.config.up_block_types) - 1))  # the last up block does not upsample
    slices = max(latent // batch, 1)
    remainder = latent % batch
    sizes = [min(latent, batch + remainder)] + [batch] * (slices - 1)
    total = 0
    for size in sizes:
        for _ in range(levels):
            size = size if size == 1 else (2 * size - 1 if size % 2 else 2 * size)
        total += size
    return total


def _mochi_frames(pipe, requested: int) -> int:
    """Frames Mochi decodes for ``num_frames=requested``: ``(n - 1) // 6 + 1`` latent frames, ``6 t - 5`` frames
    (measured on diffusers 0.42)."""
    ratio = int(getattr(pipe, "vae_temporal_scale_factor", 6))
    return ratio * ((requested - 1) // ratio + 1) - (ratio - 1)


def _one_plus(ratio: int) -> Callable[[object, int], int]:
    """Frames of a VAE with temporal compression ``ratio`` that renders ``1 + ratio·k`` frames (Wan, HunyuanVideo: 4;
    LTX: 8): the pipelines round other counts down to that form."""

    def frames(pipe, requested: int) -> int:
        return ratio * ((requested - 1) // ratio) + 1 if requested >= 1 else requested

    return frames


@dataclass(frozen=True)
class FamilySpec:
    """What the command line needs to know about a model family (one row of `FAMILY_SPECS`)."""

    name: str
    video: bool
    fps: float  # frames per second of the written mp4 / gif (models that are not embedded)
    negative_prompt: bool  # the default call runs classifier-free guidance: give it the empty negative prompt
    min_steps: int = 1
    min_steps_reason: str = ""
    decoded_frames: Optional[Callable[[object, int], int]] = None  # (pipe, requested) -> frames rendered
    text_length: Optional[Tuple[str, str]] = None  # (call keyword, transformer config attribute) of the text length


FAMILY_SPECS: Dict[str, FamilySpec] = {
    "cogvideox": FamilySpec("cogvideox", video=True, fps=8.0, negative_prompt=True, decoded_frames=_cogvideox_frames,
                            text_length=("max_sequence_length", "max_text_seq_length")),
    "mochi": FamilySpec("mochi", video=True, fps=30.0, negative_prompt=True, min_steps=2,
                        min_steps_reason="its linear-quadratic sigma schedule divides by steps // 2",
                        decoded_frames=_mochi_frames, text_length=("max_sequence_length", "max_sequence_length")),
    "flux": FamilySpec("flux", video=False, fps=1.0, negative_prompt=False),
    # dispatch-based families: what their diffusers 0.42 pipelines do by default (CFG with a negative prompt for Wan
    # and LTX; guidance-distilled HunyuanVideo; Qwen-Image's true CFG only with a negative prompt)
    "wan": FamilySpec("wan", video=True, fps=16.0, negative_prompt=True, decoded_frames=_one_plus(4)),
    "hunyuan_video": FamilySpec("hunyuan_video", video=True, fps=24.0, negative_prompt=False,
                                decoded_frames=_one_plus(4)),
    "hunyuan_video15": FamilySpec("hunyuan_video15", video=True, fps=24.0, negative_prompt=False,
                                  decoded_frames=_one_plus(4)),
    "ltx": FamilySpec("ltx", video=True, fps=24.0, negative_prompt=True, decoded_frames=_one_plus(8)),
    "flux2": FamilySpec("flux2", video=False, fps=1.0, negative_prompt=False),
    "qwenimage": FamilySpec("qwenimage", video=False, fps=1.0, negative_prompt=False),
}


def family_spec(family: str) -> FamilySpec:
    return FAMILY_SPECS[family]


def uses_negative_prompt(family: str) -> bool:
    """The one negative-prompt rule: families whose default call runs classifier-free guidance get
    `NEGATIVE_PROMPT`, whether the pipeline encodes prompts itself or gets hash embeddings."""
    return FAMILY_SPECS[family].negative_prompt


def is_small_embedded(model: Optional[str]) -> bool:
    """The embedded models, random or trained: sequences of a few hundred to a thousand tokens (the CLI picks
    64-token key blocks for them)."""
    model = model or default_model()
    return model in EMBEDDED_MODELS or model == TRAINED_MODEL


def is_random_tiny(model: Optional[str]) -> bool:
    """True for the embedded random-weight tiny pipelines (their blocks are never self-similar, their sequences
    short: the CLI picks other θ / key-block defaults for them)."""
    return (model or default_model()) in EMBEDDED_MODELS


def read_model_index(folder) -> dict:
    """``model_index.json`` of a local diffusers folder.

    Raises:
        UsageError: not a folder, no ``model_index.json``, or not valid JSON.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--model {str(folder)!r}: no such folder; give a local diffusers pipeline folder or one of "
                         f"{', '.join(EMBEDDED_MODELS)}")
    index = folder / "model_index.json"
    if not index.is_file():
        raise UsageError(f"--model {str(folder)!r} is not a diffusers pipeline folder (no model_index.json)")
    try:
        content = json.loads(index.read_text())
    except (ValueError, OSError):
        content = None
    if not isinstance(content, dict):
        raise UsageError(f"--model {str(folder)!r}: model_index.json is not valid JSON")
    return content


def detect_family(folder) -> str:
    """The model family of a local diffusers folder, from ``model_index.json``'s ``_class_name``.

    Raises:
        UsageError: not a folder, no ``model_index.json``, or a pipeline class that is not supported.
    """
    class_name = read_model_index(folder).get("_class_name")
    family = PIPELINE_FAMILIES.get(stock_class_name(class_name)) if isinstance(class_name, str) else None
    if family is None:
        raise UsageError(f"--model {str(folder)!r}: {class_name or 'an unnamed pipeline'} is not supported; "
                         f"supported pipelines: {', '.join(PIPELINE_FAMILIES)}")
    return family


def model_family(model: Optional[str]) -> str:
    """The family of a ``--model`` value (embedded name or folder); validates it without loading anything."""
    model = model or default_model()
    if model == TRAINED_MODEL:
        return "cogvideox"
    return EMBEDDED_MODELS.get(model) or detect_family(model)


def null_components(folder) -> Dict[str, None]:
    """Components a folder saved as ``[null, null]`` (e.g. no text encoder), as ``{name: None}``.

    diffusers' ``from_pretrained`` refuses such a folder unless they are passed explicitly as None.
    """
    index = read_model_index(folder)
    return {name: None for name, value in index.items()
            if not name.startswith("_") and isinstance(value, list) and value[:1] == [None]}


def parse_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
              "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    try:
        return dtypes[name.lower()]
    except KeyError:
        raise UsageError(f"--dtype must be one of float32, float16, bfloat16, got {name!r}") from None


def check_device(device: str) -> str:
    """``device`` if this machine has it; `UsageError` (``--device ...``) otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:0)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: only cpu and cuda devices are supported")
    return device


@dataclass
class LoadedModel:
    """A pipeline ready to render: its family, where it came from, and how prompts reach it."""

    pipe: object
    family: str
    source: str
    embedded: bool
    device: str
    dtype: torch.dtype
    load_seconds: float = 0.0
    progress: bool = False  # per-step progress bars of renders
    prompt_embedder: Optional[Callable[[str], dict]] = None  # prompt -> call kwargs, when there is no text encoder

    @property
    def spec(self) -> FamilySpec:
        return FAMILY_SPECS[self.family]

    @property
    def is_video(self) -> bool:
        return self.spec.video

    @property
    def encodes_prompts(self) -> bool:
        """True when the pipeline's own text encoder encodes the prompts (no hash embeddings)."""
        return self.prompt_embedder is None

    def default_call(self) -> dict:
        """Call keywords used when the command line does not give them: the embedded models' size and steps."""
        if self.source == f"embedded:{TRAINED_MODEL}":
            from .embedded import default_call_kwargs

            return default_call_kwargs("default")
        if not self.embedded:
            return {}
        from .pipelines.tiny import tiny_call_size

        return {**tiny_call_size(self.family), "num_inference_steps": TINY_STEPS}

    def decoded_frames(self, requested: int) -> Optional[int]:
        """Frames a call with ``num_frames=requested`` renders (None: unknown for this family)."""
        rule = self.spec.decoded_frames
        return None if rule is None else rule(self.pipe, requested)

    def allowed_frames(self, limit: int = 5, search: int = 512) -> List[int]:
        """The first ``limit`` frame counts that render exactly as many frames."""
        return [n for n in range(1, search) if self.decoded_frames(n) == n][:limit]

    def prompt_kwargs(self, prompt: str) -> dict:
        """Call keywords for ``prompt`` (and the negative prompt, when `uses_negative_prompt`)."""
        if self.prompt_embedder is not None:
            return self.prompt_embedder(prompt)
        kwargs = {"prompt": prompt}
        if uses_negative_prompt(self.family):
            kwargs["negative_prompt"] = NEGATIVE_PROMPT
        if self.spec.text_length is not None:  # pad / truncate to the length the transformer was built for
            keyword, attribute = self.spec.text_length
            length = getattr(self.pipe.transformer.config, attribute, None)
            if length:
                kwargs[keyword] = int(length)
        return kwargs


def load_model(model: Optional[str] = None, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
               progress: bool = False) -> LoadedModel:
    """Load an embedded tiny pipeline (``"tiny"``, ``"tiny-<family>"``) or a local diffusers pipeline folder
    (``None``: `default_model()`).

    Raises:
        UsageError: not a supported pipeline folder, or its components cannot be loaded (one line).
    """
    from .pipelines.tiny import tiny_pipeline, tiny_prompt_embeds

    start = time.perf_counter()
    model = model or default_model()
    family = model_family(model)
    if model in EMBEDDED_MODELS:
        pipe, _ = tiny_pipeline(family, device=device, dtype=dtype, seed=0)
        source, embedded = f"embedded:tiny-{family}", True
    elif model == TRAINED_MODEL:
        from .embedded import embedded_model_path

        pipe = load_pipeline_folder(embedded_model_path(), dtype, progress=progress)
        pipe.to(device)
        source, embedded = f"embedded:{TRAINED_MODEL}", True
    else:
        pipe = load_pipeline_folder(model, dtype, progress=progress)
        pipe.to(device)
        source, embedded = str(Path(model).resolve()), False
    embedder = None
    if getattr(pipe, "text_encoder", None) is None:
        negative = [NEGATIVE_PROMPT] if uses_negative_prompt(family) else None

        def embedder(prompt: str, _pipe=pipe, _family=family, _negative=negative) -> dict:
            return tiny_prompt_embeds(_pipe, _family, [prompt], negative_prompts=_negative)

        if not embedded:
            logger.warning("%s has no text encoder: prompts become deterministic random embeddings", model)
    elif getattr(pipe, "tokenizer", None) is None:
        raise UsageError(f"--model {model!r}: the pipeline has a text encoder but no tokenizer")
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    return LoadedModel(pipe=pipe, family=family, source=source, embedded=embedded, device=device, dtype=dtype,
                       load_seconds=time.perf_counter() - start, progress=progress, prompt_embedder=embedder)


def load_pipeline_folder(folder, dtype: torch.dtype = torch.float32, *, progress: bool = True):
    """The stock diffusers pipeline of a local folder (a Sparge wrapper's folder loads as its stock class);
    components saved as ``[null, null]`` load as None.

    Raises:
        UsageError: not a supported pipeline folder, or loading fails (the first line of the reason).
    """
    import diffusers

    detect_family(folder)
    class_name = stock_class_name(read_model_index(folder)["_class_name"])
    if not progress:
        diffusers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype -> dtype rename of diffusers 0.42
            return getattr(diffusers, class_name).from_pretrained(str(folder), torch_dtype=dtype,
                                                                  **null_components(folder))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"--model {str(folder)!r}: cannot load the {class_name}: {text}") from None
    finally:
        if not progress:
            diffusers.utils.logging.enable_progress_bar()


__all__ = [
    "DEFAULT_MODEL", "EMBEDDED_MODELS", "FAMILY_SPECS", "FamilySpec", "LoadedModel", "NEGATIVE_PROMPT",
    "PIPELINE_FAMILIES", "TINY_STEPS", "check_device", "default_model", "detect_family", "family_spec",
    "is_random_tiny", "load_model", "load_pipeline_folder", "model_family", "null_components", "parse_dtype",
    "read_model_index", "stock_class_name", "uses_negative_prompt",
]
