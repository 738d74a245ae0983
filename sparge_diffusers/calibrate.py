"""`sparge-diffusers calibrate`: per layer and head error budgets of a pipeline, recorded in a few steps.

Runs the pipeline on the prompts for ``--steps`` denoising steps with ``target_error=ε``, every attention call
measuring the drop masses that meet ε on sampled exact rows (`kernels.budget`), and writes, per layer and head, the
smallest drop mass any call measured (the most cautious, so the file holds on every step it saw) to a JSON that
`SpargeConfig(calibration=...)`, `apply_sparge` and ``generate --calibration`` / ``sweep --calibration`` read. A
calibrated run skips the measurement (about 1% of the attention work per call, less with the per-layer guard).

    sparge-diffusers calibrate "a red ball rolling" --model DIR --target-error 0.05 -o calibration.json
"""

from __future__ import annotations

import argparse
import time

from .arguments import (add_block_argument, add_model_arguments, device_and_dtype, model_from_args, quiet_libraries,
                        resolve_block_n, settings_from_args)
from .calibration import CalibrationRecorder
from .config import DEFAULT_TARGET_ERROR, PREDICTORS, SpargeConfig
from .errors import UsageError
from .media import check_writable
from .models import load_model
from .rendering import render


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="record per layer and head error budgets of a pipeline (JSON for --calibration)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="text prompt(s) to calibrate on")
    parser.add_argument("-o", "--output", default="calibration.json", metavar="JSON",
                        help="calibration file to write (default: calibration.json)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--target-error", type=float, default=DEFAULT_TARGET_ERROR, metavar="EPS",
                        help=f"ε in (0, 1) (default: {DEFAULT_TARGET_ERROR})")
    parser.add_argument("--predictor", choices=[p for p in PREDICTORS if p != "full"], default=SpargeConfig.predictor)
    add_block_argument(parser)
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    output = check_writable(args.output)
    model_name = model_from_args(args)
    device, dtype = device_and_dtype(args)
    try:
        config = SpargeConfig(target_error=args.target_error, predictor=args.predictor,
                              block_n=resolve_block_n(args.block_n, model_name), sim_threshold=None)
    except ValueError as error:
        raise UsageError(str(error)) from None
    model = load_model(model_name, device=device, dtype=dtype, progress=not args.no_progress)
    settings = settings_from_args(args, seed=args.seed, family=model.family)
    recorder = CalibrationRecorder()

    def attach(pipe) -> None:
        from .integration import get_sparge_context

        get_sparge_context(pipe).calibration_recorder = recorder

    start = time.perf_counter()
    for prompt in args.prompts:
        render(model, prompt, settings, config, prepare=attach)
    if not len(recorder):
        raise UsageError(f"--model {model_name}: no attention call measured a budget (the calls went dense: too "
                         "short for the sparse path on this device, or dense steps); nothing to calibrate")
    calibration = recorder.calibration(
        args.target_error, predictor=config.predictor, block_m=config.block_m, block_n=config.block_n,
        meta={"model": model.source, "prompts": list(args.prompts), "seed": args.seed,
              "call": settings.to_dict(), "seconds": round(time.perf_counter() - start, 2)})
    calibration.save(str(output))
    sparse_heads = sum(sum(1 for x in values if x > 0) for values in calibration.layers.values())
    heads = sum(len(values) for values in calibration.layers.values())
    print(f"{output}: {len(calibration.layers)} layers, {recorder.calls} calls; {sparse_heads}/{heads} heads drop "
          f"blocks at ε = {args.target_error}")
    return 0
