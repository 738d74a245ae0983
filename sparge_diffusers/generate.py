"""`sparge-diffusers generate`: prompts → mp4 / gif / png with sparse attention, a JSON sidecar per file.

Models (``--model``):
    ``tiny`` (default, = ``tiny-cogvideox``), ``tiny-mochi``, ``tiny-flux``: the embedded random-weight pipelines of
        `sparge_diffusers.pipelines.tiny`; they need no weights and run on a CPU in seconds. Their prompts become
        deterministic random embeddings (no text encoder), so the output shows the sparse attention path at work, not
        prompt following.
    a local diffusers folder of a ``CogVideoXPipeline``, ``MochiPipeline`` or ``FluxPipeline`` (its family is read
        from ``model_index.json``). A folder saved without a text encoder gets the same deterministic embeddings.

Library use: `load_model` once, then `render` per prompt and config (``config=None`` is the dense baseline).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .config import PRECISIONS, PREDICTORS, REORDERS, SpargeConfig
from .errors import UsageError
from .media import FORMATS, check_writable, sidecar_path, to_uint8_frames, write_json, write_media

logger = logging.getLogger(__name__)

EMBEDDED_MODELS = {"tiny": "cogvideox", "tiny-cogvideox": "cogvideox", "tiny-mochi": "mochi", "tiny-flux": "flux"}
PIPELINE_CLASSES = {"CogVideoXPipeline": "cogvideox", "MochiPipeline": "mochi", "FluxPipeline": "flux",
                    "SpargeCogVideoXPipeline": "cogvideox", "SpargeMochiPipeline": "mochi",
                    "SpargeFluxPipeline": "flux"}
VIDEO_FAMILIES = ("cogvideox", "mochi")
SPATIAL_MULTIPLE = 16  # VAE factor 8 × patch size 2, for all three families
TINY_STEPS = 4
FAMILY_FPS = {"cogvideox": 8.0, "mochi": 30.0, "flux": 1.0}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


# models


def detect_family(folder) -> str:
    """The model family of a local diffusers folder, from ``model_index.json``'s ``_class_name``.

    Raises:
        UsageError: not a folder, no ``model_index.json``, or a pipeline class that is not supported.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--model {str(folder)!r}: no such folder; give a local diffusers pipeline folder or one of "
                         f"{', '.join(EMBEDDED_MODELS)}")
    index = folder / "model_index.json"
    if not index.is_file():
        raise UsageError(f"--model {str(folder)!r} is not a diffusers pipeline folder (no model_index.json)")
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (ValueError, OSError, AttributeError):
        raise UsageError(f"--model {str(folder)!r}: model_index.json is not valid JSON") from None
    if class_name not in PIPELINE_CLASSES:
        raise UsageError(f"--model {str(folder)!r}: {class_name or 'an unnamed pipeline'} is not supported; "
                         "supported pipelines: CogVideoXPipeline, MochiPipeline, FluxPipeline")
    return PIPELINE_CLASSES[class_name]


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
    prompt_embedder: Optional[Callable] = None  # prompt -> call kwargs, when the pipeline has no text encoder

    @property
    def is_video(self) -> bool:
        return self.family in VIDEO_FAMILIES

    def default_size(self) -> Dict[str, int]:
        """Height / width (/ num_frames) used when the command line does not give them."""
        if self.embedded:
            from .pipelines.tiny import tiny_call_size

            return tiny_call_size(self.family)
        return {}

    def prompt_kwargs(self, prompt: str) -> dict:
        if self.prompt_embedder is not None:
            return self.prompt_embedder(prompt)
        kwargs = {"prompt": prompt}
        if self.family in VIDEO_FAMILIES:
            kwargs["negative_prompt"] = ""
        return kwargs


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise UsageError(f"--dtype must be one of float32, float16, bfloat16, got {name!r}") from None


def check_device(device: str) -> str:
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a torch device") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return device


def load_model(model: Optional[str] = None, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
               progress: bool = False) -> LoadedModel:
    """Load the embedded tiny pipeline (``None``, ``"tiny"``, ``"tiny-<family>"``) or a local diffusers folder."""
    from .pipelines.tiny import tiny_pipeline, tiny_prompt_embeds

    start = time.perf_counter()
    model = model or "tiny"
    if model in EMBEDDED_MODELS:
        family = EMBEDDED_MODELS[model]
        pipe, _ = tiny_pipeline(family, device=device, dtype=dtype, seed=0)
        source = f"embedded:tiny-{family}"
        embedded = True
    else:
        family = detect_family(model)
        pipe = _load_folder(model, dtype, progress)
        pipe.to(device)
        source = str(Path(model).resolve())
        embedded = False
    embedder = None
    if getattr(pipe, "text_encoder", None) is None:
        negative = [""] if family in VIDEO_FAMILIES else None

        def embedder(prompt: str, _pipe=pipe, _family=family, _negative=negative) -> dict:
            return tiny_prompt_embeds(_pipe, _family, [prompt], negative_prompts=_negative)

        if not embedded:
            logger.warning("%s has no text encoder: prompts become deterministic random embeddings", model)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    return LoadedModel(pipe=pipe, family=family, source=source, embedded=embedded, device=device, dtype=dtype,
                       load_seconds=time.perf_counter() - start, progress=progress, prompt_embedder=embedder)


def _load_folder(folder: str, dtype: torch.dtype, progress: bool = True):
    import warnings

    import diffusers

    index = json.loads((Path(folder) / "model_index.json").read_text())
    class_name = index["_class_name"]
    class_name = class_name[len("Sparge"):] if class_name.startswith("Sparge") else class_name
    # components saved as [null, null] (e.g. no text encoder) must be passed as None explicitly
    absent = {name: None for name, value in index.items()
              if not name.startswith("_") and isinstance(value, list) and value[:1] == [None]}
    if not progress:
        diffusers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch_dtype -> dtype rename of diffusers 0.42
            return getattr(diffusers, class_name).from_pretrained(folder, torch_dtype=dtype, **absent)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"--model {folder!r}: cannot load the {class_name}: {text}") from None
    finally:
        if not progress:
            diffusers.utils.logging.enable_progress_bar()


# rendering


@dataclass(frozen=True)
class RenderSettings:
    """Call settings shared by the dense and the sparse render of a prompt (None = the model's default)."""

    steps: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    frames: Optional[int] = None
    seed: int = 0
    guidance_scale: Optional[float] = None

    def validate(self, model: Optional[LoadedModel] = None) -> "RenderSettings":
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {self.steps}")
        if self.frames is not None and self.frames < 1:
            raise UsageError(f"--frames must be >= 1, got {self.frames}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < SPATIAL_MULTIPLE or value % SPATIAL_MULTIPLE):
                raise UsageError(f"--{name} must be a positive multiple of {SPATIAL_MULTIPLE}, got {value}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise UsageError(f"--guidance-scale must be >= 0, got {self.guidance_scale}")
        if model is not None and not model.is_video and self.frames not in (None, 1):
            raise UsageError(f"{model.family} renders images: --frames does not apply")
        return self

    def call_kwargs(self, model: LoadedModel) -> dict:
        kwargs = dict(model.default_size())
        if model.embedded:
            kwargs["num_inference_steps"] = TINY_STEPS
        for key, value in (("height", self.height), ("width", self.width), ("num_frames", self.frames),
                           ("num_inference_steps", self.steps), ("guidance_scale", self.guidance_scale)):
            if value is not None and not (key == "num_frames" and not model.is_video):
                kwargs[key] = value
        return kwargs

    def to_dict(self) -> dict:
        return {"steps": self.steps, "height": self.height, "width": self.width, "frames": self.frames,
                "seed": self.seed, "guidance_scale": self.guidance_scale}


@dataclass
class Render:
    """One rendered prompt: frames ``[T, H, W, 3]`` uint8, wall time and (sparse renders) measured sparsity."""

    frames: np.ndarray
    seconds: float
    step_seconds: List[float]
    call_kwargs: dict
    config: Optional[SpargeConfig] = None
    sparsity: Optional[float] = None
    sparsity_by_step: Dict[int, float] = field(default_factory=dict)
    attention_ms: Optional[float] = None
    backends: Dict[str, int] = field(default_factory=dict)
    policies: Dict[str, int] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "dense" if self.config is None else "sparse"

    def summary(self) -> dict:
        """JSON-ready view (no frames)."""
        out = {"mode": self.mode, "seconds": self.seconds, "step_seconds": self.step_seconds,
               "frames": int(self.frames.shape[0]), "height": int(self.frames.shape[1]),
               "width": int(self.frames.shape[2])}
        if self.config is not None:
            out.update({"sparsity": self.sparsity, "sparsity_by_step": self.sparsity_by_step,
                        "attention_ms": self.attention_ms, "backends": self.backends, "policies": self.policies})
        return out


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _call(model: LoadedModel, kwargs: dict, seed: int, step_times: Optional[list] = None):
    def on_step_end(pipe, step, timestep, callback_kwargs):
        if step_times is not None:
            _sync(model.device)
            step_times.append(time.perf_counter())
        return callback_kwargs

    generator = torch.Generator(device="cpu").manual_seed(seed)
    try:
        with torch.no_grad():  # not inference_mode: hooks may read tensor version counters
            output = model.pipe(**kwargs, generator=generator, output_type="np", callback_on_step_end=on_step_end)
    except ValueError as error:
        if not _raised_in(error, "check_inputs"):  # only the pipeline's own input checks are usage errors
            raise
        text = str(error).strip().splitlines()[0] if str(error).strip() else "ValueError"
        raise UsageError(f"the {model.family} pipeline rejected the settings: {text}") from None
    media = output.frames if hasattr(output, "frames") else output.images
    return to_uint8_frames(np.asarray(media[0]))


def _raised_in(error: BaseException, function: str) -> bool:
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name == function:
            return True
        frame = frame.tb_next
    return False


def render(model: LoadedModel, prompt: str, settings: RenderSettings, config: Optional[SpargeConfig], *,
           warmup: bool = False, label: Optional[str] = None) -> Render:
    """Render ``prompt`` dense (``config=None``) or with Sparge attention, timing the pipeline call.

    Args:
        warmup: first run an untimed call of ``config.dense_steps + 1`` steps (at most the full count), so one-time
            costs (kernel compilation, allocator growth, lazy imports) stay out of the measured time.
        label: progress bar description (bars are shown when the model was loaded with ``progress=True``).
    """
    from . import apply_sparge, get_sparge_stats, remove_sparge
    from .integration import begin_sparge_call

    pipe = model.pipe
    kwargs = {**settings.call_kwargs(model), **model.prompt_kwargs(prompt)}
    if config is not None:
        apply_sparge(pipe, config, collect_stats=True)
    try:
        if warmup:
            steps = kwargs.get("num_inference_steps")
            warm_steps = (config.dense_steps if config is not None else 0) + 1
            pipe.set_progress_bar_config(disable=True)
            _call(model, {**kwargs, "num_inference_steps": min(warm_steps, steps) if steps else warm_steps},
                  settings.seed)
        pipe.set_progress_bar_config(disable=not model.progress, leave=False, desc=label or prompt[:40])
        if config is not None:
            begin_sparge_call(pipe, reset_stats=True)
        marks: List[float] = []
        _sync(model.device)
        start = time.perf_counter()
        frames = _call(model, kwargs, settings.seed, marks)
        _sync(model.device)
        seconds = time.perf_counter() - start
        step_seconds = [b - a for a, b in zip([start] + marks[:-1], marks)]
        result = Render(frames=frames, seconds=seconds, step_seconds=step_seconds,
                        call_kwargs={k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)},
                        config=config)
        if config is not None:
            stats = get_sparge_stats(pipe)
            rows = stats.rows
            result.sparsity = stats.mean_sparsity if rows else None
            result.sparsity_by_step = stats.by_step()
            result.attention_ms = stats.total_attention_ms
            for row in rows:
                result.backends[row["backend"]] = result.backends.get(row["backend"], 0) + 1
                result.policies[row["policy"]] = result.policies.get(row["policy"], 0) + 1
        return result
    finally:
        if config is not None:
            remove_sparge(pipe)


# CLI helpers


def quiet_libraries(verbose: bool = False) -> None:
    """CLI only: keep diffusers' and transformers' warnings (dtype casts of the tiny models, torchvision fallbacks,
    weight-loading bars) off the terminal unless ``-v`` was given."""
    if verbose:
        return
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_sim_threshold(value, model: str):
    """``--sim-threshold auto``: SpargeConfig's θ for real models, off for the embedded random-weight ones, whose
    blocks are never self-similar enough to pass θ (every block would be computed: sparsity 0)."""
    if value != "auto":
        return value
    return None if model in EMBEDDED_MODELS else SpargeConfig.sim_threshold


def resolve_block_n(value, model: str) -> int:
    """``--block-n auto``: SpargeConfig's key block for real models, 64 tokens for the embedded tiny ones, whose
    sequences hold only a few 128-token blocks (too coarse for top-k to select anything)."""
    if value != "auto":
        return int(value)
    return 64 if model in EMBEDDED_MODELS else SpargeConfig.block_n


def slugify(text: str, limit: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug[:limit].rstrip("-") or "prompt")


def environment() -> dict:
    import diffusers

    info = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        pass
    return info


def _optional_float(text: str) -> Optional[float]:
    if text.strip().lower() in ("none", "off", ""):
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, size, seed, device and dtype flags (shared by generate and sweep)."""
    group = parser.add_argument_group("model and call")
    group.add_argument("--model", default="tiny", metavar="NAME_OR_DIR",
                       help=f"local diffusers folder (CogVideoX, Mochi, Flux) or an embedded tiny pipeline: "
                            f"{', '.join(EMBEDDED_MODELS)} (default: tiny)")
    group.add_argument("--steps", type=int, default=None, help=f"denoising steps (default: {TINY_STEPS} for the "
                                                                "tiny pipelines, the pipeline's default otherwise)")
    group.add_argument("--height", type=int, default=None, help="frame height in pixels (multiple of 16)")
    group.add_argument("--width", type=int, default=None, help="frame width in pixels (multiple of 16)")
    group.add_argument("--frames", type=int, default=None, help="video frames (video families)")
    group.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                       help="torch device (default: cuda when available, else cpu)")
    group.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: bfloat16 on CUDA, "
                                                     "float32 on the CPU)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="render prompts to mp4 / gif / png with sparse attention (+ JSON sidecar)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="text prompt(s)")
    parser.add_argument("-o", "--output", default="outputs", metavar="PATH",
                        help="output file (one prompt; .mp4, .gif or .png) or folder (default: outputs/)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="file format when --output is a folder (default: mp4 for video, png for images)")
    parser.add_argument("--fps", type=float, default=None, help="frames per second of mp4 / gif (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    add_model_arguments(parser)
    group = parser.add_argument_group("sparse attention (SpargeConfig)")
    group.add_argument("--topk", type=float, default=None, help="fraction of key blocks kept per query block, (0, 1] "
                                                                "(default: 0.5 unless --cdf-threshold is given)")
    group.add_argument("--cdf-threshold", type=float, default=None, metavar="TAU",
                       help="τ: TopCdf selection, keep blocks until their predicted mass reaches τ")
    group.add_argument("--target-error", type=float, default=None, metavar="EPS",
                       help="ε in (0, 1): relative L1 error budget against dense attention; replaces --topk and "
                            "--cdf-threshold")
    group.add_argument("--predictor", choices=PREDICTORS, default=SpargeConfig.predictor,
                       help=f"block predictor (default: {SpargeConfig.predictor}; 'sparge' is the paper's stage 1)")
    group.add_argument("--sim-threshold", type=_optional_float, default="auto", metavar="THETA",
                       help=f"θ: blocks less self-similar than θ are always computed; a number, 'none' or 'auto' "
                            f"(default: {SpargeConfig.sim_threshold}, but none for the embedded tiny models)")
    group.add_argument("--pv-threshold", type=_optional_float, default=None, metavar="LAMBDA",
                       help="λ <= 0: skip P·V of blocks far below the running max (default: off)")
    group.add_argument("--precision", choices=PRECISIONS, default=SpargeConfig.precision)
    add_block_argument(group)
    group.add_argument("--reorder", choices=REORDERS, default=SpargeConfig.reorder)
    group.add_argument("--dense-steps", type=int, default=0, metavar="N", help="first N steps stay dense")
    group.add_argument("--dense", action="store_true", help="render with the stock dense attention only")
    group.add_argument("--compare-dense", action="store_true",
                       help="also render dense (saved as *-dense.*) and report speed-up, PSNR and SSIM")
    group.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                       help="untimed warm-up call before each timed render (default: on with --compare-dense)")
    parser.set_defaults(run=run)


def add_block_argument(group) -> None:
    group.add_argument("--block-n", choices=("auto", "64", "128"), default="auto",
                       help=f"key block size in tokens (default: {SpargeConfig.block_n}, but 64 for the embedded "
                            "tiny models)")


def config_from_args(args: argparse.Namespace) -> SpargeConfig:
    """The `SpargeConfig` of the command line; `UsageError` with SpargeConfig's message on a bad value."""
    chosen = [flag for flag, value in (("--topk", args.topk), ("--cdf-threshold", args.cdf_threshold),
                                       ("--target-error", args.target_error)) if value is not None]
    if len(chosen) > 1:
        raise UsageError(f"give one of --topk, --cdf-threshold, --target-error, not {' and '.join(chosen)}")
    topk = args.topk if args.topk is not None else (SpargeConfig.topk if not chosen else None)
    try:
        return SpargeConfig(topk=topk, cdf_threshold=args.cdf_threshold, target_error=args.target_error,
                            predictor=args.predictor,
                            sim_threshold=resolve_sim_threshold(args.sim_threshold, args.model),
                            pv_threshold=args.pv_threshold, precision=args.precision, reorder=args.reorder,
                            dense_steps=args.dense_steps, block_n=resolve_block_n(args.block_n, args.model))
    except ValueError as error:
        raise UsageError(str(error)) from None


def settings_from_args(args: argparse.Namespace, seed: int = 0) -> RenderSettings:
    return RenderSettings(steps=args.steps, height=args.height, width=args.width, frames=args.frames, seed=seed,
                          guidance_scale=args.guidance_scale).validate()


def device_and_dtype(args: argparse.Namespace):
    device = check_device(args.device)
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return device, parse_dtype(dtype_name)


def _targets(args: argparse.Namespace, family_is_video: Optional[bool]) -> List[Path]:
    output = Path(args.output)
    suffix = output.suffix.lower().lstrip(".")
    if suffix in FORMATS and not output.is_dir():
        if len(args.prompts) > 1:
            raise UsageError(f"--output {args.output!r} is a file name, but {len(args.prompts)} prompts were "
                             "given: pass a folder")
        if args.format and args.format != suffix:
            raise UsageError(f"--format {args.format} does not match --output {args.output!r}")
        return [output]
    if output.suffix and not output.is_dir() and suffix not in FORMATS:
        raise UsageError(f"--output {args.output!r}: the file name must end in "
                         f"{', '.join('.' + f for f in FORMATS)} (or give a folder)")
    fmt = args.format or ("mp4" if family_is_video else "png")
    names, targets = set(), []
    for prompt in args.prompts:
        stem = f"{slugify(prompt)}-seed{args.seed}"
        while stem in names:
            stem += "-1"
        names.add(stem)
        targets.append(output / f"{stem}.{fmt}")
    return targets


def _model_is_video(model: str) -> bool:
    family = EMBEDDED_MODELS.get(model) or detect_family(model)
    return family in VIDEO_FAMILIES


def run(args: argparse.Namespace) -> int:
    for prompt in args.prompts:
        if not prompt.strip():
            raise UsageError("empty prompt")
    quiet_libraries(getattr(args, "verbose", False))
    if args.fps is not None and not args.fps > 0:
        raise UsageError(f"--fps must be > 0, got {args.fps}")
    config = None if args.dense else config_from_args(args)
    if args.dense and args.compare_dense:
        raise UsageError("--dense and --compare-dense exclude each other")
    settings = settings_from_args(args, seed=args.seed)
    device, dtype = device_and_dtype(args)
    is_video = _model_is_video(args.model)  # validates --model before anything is loaded
    targets = _targets(args, is_video)
    for target in targets:  # fail before rendering, not after
        check_writable(target)
        check_writable(sidecar_path(target))
        if args.compare_dense:
            check_writable(_dense_path(target))

    model = load_model(args.model, device=device, dtype=dtype, progress=not args.no_progress)
    settings.validate(model)
    fps = args.fps or (8.0 if model.embedded else FAMILY_FPS[model.family])
    warmup = args.compare_dense if args.warmup is None else args.warmup
    print(f"model {model.source} ({model.family}) on {device} {str(dtype).replace('torch.', '')}, "
          f"loaded in {model.load_seconds:.1f} s")
    for prompt, target in zip(args.prompts, targets):
        sidecar = {"prompt": prompt, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "model": {"source": model.source, "family": model.family, "embedded": model.embedded},
                   "settings": {**settings.to_dict(), "device": device, "dtype": str(dtype).replace("torch.", ""),
                                "fps": fps, "warmup": warmup},
                   "sparge": None if config is None else config.to_dict(),
                   "environment": environment()}
        dense = None
        if args.compare_dense:
            dense = render(model, prompt, settings, None, warmup=warmup, label="dense")
        result = render(model, prompt, settings, config, warmup=warmup, label="dense" if config is None else "sparse")
        sidecar["settings"]["call"] = result.call_kwargs
        sidecar["timings"] = {"load_s": model.load_seconds, "render_s": result.seconds,
                              "step_s": result.step_seconds, "attention_ms": result.attention_ms}
        sidecar["sparsity"] = None if config is None else {
            "mean": result.sparsity, "by_step": result.sparsity_by_step, "backends": result.backends,
            "policies": result.policies}
        line = f"{target}: {result.frames.shape[0]}×{result.frames.shape[1]}×{result.frames.shape[2]} in " \
               f"{result.seconds:.2f} s"
        if result.sparsity is not None:
            line += f", sparsity {result.sparsity:.3f} ({', '.join(sorted(result.backends))})"
        if dense is not None:
            from .metrics import psnr, ssim, ssim_status

            comparison = {"path": str(_dense_path(target)), "render_s": dense.seconds,
                          "speedup": dense.seconds / result.seconds if result.seconds > 0 else None,
                          "psnr": psnr(result.frames, dense.frames),
                          "ssim": None if ssim_status() else ssim(result.frames, dense.frames)}
            sidecar["dense"] = comparison
            value = comparison["psnr"]
            line += f"; dense {dense.seconds:.2f} s, speed-up {comparison['speedup']:.2f}×, PSNR " \
                    f"{'inf' if math.isinf(value) else f'{value:.2f}'} dB, SSIM " + \
                    (f"{comparison['ssim']:.4f}" if comparison["ssim"] is not None else "n/a (" + ssim_status() + ")")
        sidecar["media"] = write_media(target, result.frames, fps=fps)
        written = [target]
        try:
            if dense is not None:
                write_media(_dense_path(target), dense.frames, fps=fps)
                written.append(_dense_path(target))
            write_json(sidecar_path(target), sidecar)
        except BaseException:
            for path in written:  # a render without its sidecar is a half-written result
                path.unlink(missing_ok=True)
            raise
        print(line)
    return 0


def _dense_path(target: Path) -> Path:
    return target.with_name(f"{target.stem}-dense{target.suffix}")
