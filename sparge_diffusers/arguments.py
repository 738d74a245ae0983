"""Command-line arguments shared by the sub-commands (generate, sweep, eval, and the ones to come).

Each ``add_*`` function adds one group of flags to an argparse parser; each ``*_from_args`` function turns parsed
flags into the library object they describe, raising `UsageError` (one line, naming the flag) on a bad value.
"""

from __future__ import annotations

import argparse
from typing import Optional, Tuple

import torch

from .config import SpargeConfig
from .errors import UsageError
from .models import (EMBEDDED_MODELS, TINY_STEPS, TRAINED_MODEL, check_device, default_model, is_random_tiny,
                     is_small_embedded, parse_dtype)
from .rendering import RenderSettings


def optional_float(text: str):
    """argparse type: a number, ``none`` / ``off`` (None) or ``auto`` (the string ``"auto"``)."""
    if text.strip().lower() in ("none", "off", ""):
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, size, seed, device and dtype flags (shared by generate and sweep)."""
    group = parser.add_argument_group("model and call")
    group.add_argument("--model", default=None, metavar="NAME_OR_DIR",
                       help=f"local diffusers folder (CogVideoX, Mochi, Flux) or an embedded tiny pipeline: "
                            f"{', '.join(EMBEDDED_MODELS)} (random weights), {TRAINED_MODEL} (trained, shipped) "
                            f"(default: {default_model()})")
    group.add_argument("--steps", type=int, default=None, help=f"denoising steps (default: {TINY_STEPS} for the "
                                                                "tiny pipelines, the pipeline's default otherwise)")
    group.add_argument("--height", type=int, default=None, help="frame height in pixels (multiple of 16)")
    group.add_argument("--width", type=int, default=None, help="frame width in pixels (multiple of 16)")
    group.add_argument("--frames", type=int, default=None,
                       help="video frames; a count the model's VAE renders exactly (CogVideoX: 1, 9, 17, ...; "
                            "Mochi: 1, 7, 13, ...), others are refused")
    group.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                       help="torch device (default: cuda when available, else cpu)")
    group.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: bfloat16 on CUDA, "
                                                     "float32 on the CPU)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def model_from_args(args: argparse.Namespace) -> str:
    """``--model``, or `default_model()` when it was not given."""
    return getattr(args, "model", None) or default_model()


def add_block_argument(group) -> None:
    group.add_argument("--block-n", choices=("auto", "64", "128"), default="auto",
                       help=f"key block size in tokens (default: {SpargeConfig.block_n}, but 64 for the embedded "
                            "tiny models)")


def resolve_sim_threshold(value, model: Optional[str]):
    """``--sim-threshold auto``: SpargeConfig's θ for real models, off for the embedded random-weight ones, whose
    blocks are never self-similar enough to pass θ (every block would be computed: sparsity 0)."""
    if value != "auto":
        return value
    return None if is_random_tiny(model) else SpargeConfig.sim_threshold


def resolve_block_n(value, model: Optional[str]) -> int:
    """``--block-n auto``: SpargeConfig's key block for real models, 64 tokens for the embedded tiny ones, whose
    sequences hold only a few 128-token blocks (too coarse for top-k to select anything)."""
    if value != "auto":
        return int(value)
    return 64 if is_small_embedded(model) else SpargeConfig.block_n


def config_from_args(args: argparse.Namespace) -> SpargeConfig:
    """The `SpargeConfig` of the command line; `UsageError` with SpargeConfig's message on a bad value."""
    chosen = [flag for flag, value in (("--topk", args.topk), ("--cdf-threshold", args.cdf_threshold),
                                       ("--target-error", args.target_error)) if value is not None]
    if len(chosen) > 1:
        raise UsageError(f"give one of --topk, --cdf-threshold, --target-error, not {' and '.join(chosen)}")
    topk = args.topk  # none of the three named: SpargeConfig's default rule (the error budget)
    model = model_from_args(args)
    try:
        return SpargeConfig(topk=topk, cdf_threshold=args.cdf_threshold, target_error=args.target_error,
                            predictor=args.predictor, sim_threshold=resolve_sim_threshold(args.sim_threshold, model),
                            pv_threshold=args.pv_threshold, precision=args.precision, reorder=args.reorder,
                            dense_steps=args.dense_steps, block_n=resolve_block_n(args.block_n, model),
                            calibration=_calibration_path(getattr(args, "calibration", None)),
                            map_reuse=getattr(args, "map_reuse", None))
    except ValueError as error:
        raise UsageError(str(error)) from None


def _calibration_path(path: Optional[str]) -> Optional[str]:
    """``--calibration``: checked here so that a bad file is one line before any model is loaded."""
    if path is None:
        return None
    from .calibration import load_calibration

    try:
        load_calibration(path)
    except ValueError as error:
        raise UsageError(f"--calibration: {error}") from None
    return path


def settings_from_args(args: argparse.Namespace, seed: int = 0, family: Optional[str] = None) -> RenderSettings:
    """`RenderSettings` of the call flags, checked (against ``family`` when known)."""
    return RenderSettings(steps=args.steps, height=args.height, width=args.width, frames=args.frames, seed=seed,
                          guidance_scale=args.guidance_scale).validate(family=family)


def device_and_dtype(args: argparse.Namespace) -> Tuple[str, torch.dtype]:
    """``--device`` (checked on this machine) and ``--dtype`` (default bfloat16 on CUDA, float32 on the CPU)."""
    device = check_device(args.device)
    dtype_name = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return device, parse_dtype(dtype_name)


__all__ = [
    "add_block_argument", "add_model_arguments", "config_from_args", "device_and_dtype", "model_from_args",
    "optional_float", "quiet_libraries", "resolve_block_n", "resolve_sim_threshold", "settings_from_args",
]
