"""`sparge-diffusers generate`: prompts → mp4 / gif / png with sparse attention, a JSON sidecar per file.

Models (``--model``):
    ``tiny`` (default, = ``tiny-cogvideox``), ``tiny-mochi``, ``tiny-flux``: the embedded random-weight pipelines of
        `sparge_diffusers.pipelines.tiny`; they need no weights and run on a CPU in seconds. Their prompts become
        deterministic random embeddings (no text encoder), so the output shows the sparse attention path at work, not
        prompt following.
    a local diffusers folder of a ``CogVideoXPipeline``, ``MochiPipeline`` or ``FluxPipeline`` (its family is read
        from ``model_index.json``). Its own text encoder and tokenizer encode the prompts; a folder saved without a
        text encoder gets the same deterministic embeddings as the tiny models.

Frame counts: a video VAE renders only some counts exactly (CogVideoX 1, 9, 17, ...; Mochi 1, 7, 13, ...); any
other ``--frames`` is refused with the allowed counts.

With ``--compare-dense`` the sidecar records PSNR / SSIM to the dense render twice: on the raw frames, and (mp4,
gif) on the encoded files as ``sparge-diffusers eval`` reads them; the encoder's loss makes the second lower.

Several GPUs for one render: ``torchrun --nproc-per-node N sparge-diffusers generate --context-parallel ulysses
...`` splits every attention sequence over the N ranks (Wan; `sparge_diffusers.launch`); rank 0 writes the files and
the sidecar records the world size.

This module is the command only; library use goes through `sparge_diffusers.models.load_model` and
`sparge_diffusers.rendering.render` (also importable from here).
"""

from __future__ import annotations

import argparse

from .arguments import (add_block_argument, add_model_arguments, config_from_args, device_and_dtype,
                        model_from_args, optional_float, quiet_libraries, settings_from_args)
from .config import PRECISIONS, PREDICTORS, REORDERS, SpargeConfig
from .errors import UsageError
from .launch import add_context_parallel_arguments, launch_from_args
from .media import FORMATS, check_writable, sidecar_path
from .models import EMBEDDED_MODELS, FAMILY_SPECS, LoadedModel, detect_family, load_model, model_family
from .outputs import dense_path, output_targets, render_sidecar, slugify, summary_line, write_render
from .rendering import Render, RenderSettings, render

EMBEDDED_FPS = 8.0


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
                                                                "(default: none; with no rule given the error budget "
                                                                "ε = 0.05 is used)")
    group.add_argument("--cdf-threshold", type=float, default=None, metavar="TAU",
                       help="τ: TopCdf selection, keep blocks until their predicted mass reaches τ")
    group.add_argument("--target-error", type=float, default=None, metavar="EPS",
                       help="ε in (0, 1): relative L1 error budget of the block selection against dense attention "
                            "(default 0.05 when no --topk / --cdf-threshold is given)")
    group.add_argument("--calibration", default=None, metavar="JSON",
                       help="per layer and head budgets from `sparge-diffusers calibrate` (same ε)")
    group.add_argument("--predictor", choices=PREDICTORS, default=SpargeConfig.predictor,
                       help=f"block predictor (default: {SpargeConfig.predictor}; 'sparge' is the paper's stage 1)")
    group.add_argument("--sim-threshold", type=optional_float, default="auto", metavar="THETA",
                       help=f"θ: blocks less self-similar than θ are always computed; a number, 'none' or 'auto' "
                            f"(default: {SpargeConfig.sim_threshold}, but none for the embedded tiny models)")
    group.add_argument("--pv-threshold", type=optional_float, default=None, metavar="LAMBDA",
                       help="λ <= 0: skip P·V of blocks far below the running max (default: off)")
    group.add_argument("--precision", choices=PRECISIONS, default=SpargeConfig.precision)
    add_block_argument(group)
    group.add_argument("--reorder", choices=REORDERS, default=SpargeConfig.reorder)
    group.add_argument("--dense-steps", type=int, default=0, metavar="N", help="first N steps stay dense")
    group.add_argument("--map-reuse", type=int, default=None, metavar="N",
                       help="one predicted block map serves up to N calls of a layer (default: 2 with the error "
                            "budget, 1 with --topk / --cdf-threshold; 1 predicts in every call)")
    group.add_argument("--dense", action="store_true", help="render with the stock dense attention only")
    group.add_argument("--compare-dense", action="store_true",
                       help="also render dense (saved as *-dense.* with its own sidecar) and report speed-up, PSNR "
                            "and SSIM (of the raw frames and, for mp4 / gif, of the encoded files)")
    group.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                       help="untimed warm-up call before each timed render (default: on with --compare-dense)")
    add_context_parallel_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for prompt in args.prompts:
        if not prompt.strip():
            raise UsageError("empty prompt")
    quiet_libraries(getattr(args, "verbose", False))
    if args.fps is not None and not args.fps > 0:
        raise UsageError(f"--fps must be > 0, got {args.fps}")
    if args.dense and args.compare_dense:
        raise UsageError("--dense and --compare-dense exclude each other")
    config = None if args.dense else config_from_args(args)
    model_name = model_from_args(args)
    family = model_family(model_name)  # validates --model before anything is loaded
    settings = settings_from_args(args, seed=args.seed, family=family)
    device, dtype = device_and_dtype(args)
    targets = output_targets(args.output, args.prompts, seed=args.seed, fmt=args.format,
                             is_video=FAMILY_SPECS[family].video)
    for target in targets:  # fail before rendering, not after
        check_writable(target)
        check_writable(sidecar_path(target))
        if args.compare_dense:
            check_writable(dense_path(target))
    launch = launch_from_args(args, device)
    try:
        return _generate(args, launch, model_name, settings, config, targets, launch.device(device), dtype)
    finally:
        launch.close()


def _generate(args, launch, model_name, settings, config, targets, device, dtype) -> int:
    model = load_model(model_name, device=device, dtype=dtype, progress=not args.no_progress and launch.writer)
    settings.validate(model)
    launch.enable(model)
    fps = args.fps or (EMBEDDED_FPS if model.embedded else model.spec.fps)
    warmup = args.compare_dense if args.warmup is None else args.warmup
    if launch.writer:
        where = f", context parallel ({launch.mode}) over {launch.world_size} ranks" if launch.parallel else ""
        print(f"model {model.source} ({model.family}) on {device} {str(dtype).replace('torch.', '')}{where}, "
              f"loaded in {model.load_seconds:.1f} s")
    for prompt, target in zip(args.prompts, targets):
        dense = render(model, prompt, settings, None, warmup=warmup, label="dense") if args.compare_dense else None
        result = render(model, prompt, settings, config, warmup=warmup, label="dense" if config is None else "sparse")
        if not launch.writer:  # every rank renders (they run the collectives together); rank 0 writes
            continue
        sidecar = render_sidecar(prompt, model, settings, config, result, device=device, fps=fps, warmup=warmup)
        sidecar = write_render(target, result, launch.record(sidecar), fps=fps, dense=dense)
        print(summary_line(target, result, sidecar))
    return 0


# library names, importable from here as before the split
__all__ = ["EMBEDDED_MODELS", "LoadedModel", "Render", "RenderSettings", "add_parser", "detect_family", "load_model",
           "render", "run", "slugify"]
