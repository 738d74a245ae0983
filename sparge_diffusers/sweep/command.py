"""The ``sparge-diffusers sweep`` sub-command: its arguments, and the one-line errors of bad input."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List

from ..config import PRECISIONS, PREDICTORS, REORDERS, SpargeConfig
from ..errors import UsageError
from ..evaluate import Evaluator, add_metric_arguments, parse_metrics
from ..media import check_writable_dir
from .grid import expand_grid, rank_info
from .report import finish
from .rows import META, PLOT, REPORT, RESULTS
from .runner import check_meta, run_sweep, sweep_meta

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    from ..arguments import add_block_argument, add_model_arguments, optional_float

    parser = subparsers.add_parser(
        "sweep", help="quality versus speed over prompts × a grid of sparse configs (CSV, PNG plot, report)",
        description=sys.modules[__package__].__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompt(s)")
    parser.add_argument("--prompts-file", default=None, metavar="FILE",
                        help="more prompts, one per line (blank lines and # comments ignored)")
    parser.add_argument("--out-dir", default="outputs/sweep", metavar="DIR", help="default: outputs/sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED")
    grid = parser.add_argument_group("grid (the product of all lists)")
    grid.add_argument("--topk", type=float, nargs="*", default=None, metavar="K",
                      help="top-k fractions (default: 0.7 0.5 0.3 unless --cdf-threshold or --target-error is given)")
    grid.add_argument("--target-error", type=float, nargs="*", default=[], metavar="EPS",
                      help="error budgets ε (the library's default rule)")
    grid.add_argument("--calibration", nargs="+", default=[None], type=lambda v: None if v == "none" else v,
                      metavar="JSON", help="calibration files for the ε configs, 'none' = uncalibrated (default: none)")
    grid.add_argument("--cdf-threshold", type=float, nargs="*", default=[], metavar="TAU", help="τ values (TopCdf)")
    grid.add_argument("--sim-threshold", type=optional_float, nargs="+", default=["auto"], metavar="THETA",
                      help=f"θ values, 'none' or 'auto' (default: {SpargeConfig.sim_threshold}, none for the "
                           "embedded tiny models)")
    grid.add_argument("--pv-threshold", type=optional_float, nargs="+", default=[None], metavar="LAMBDA",
                      help="λ values (<= 0) or 'none' (default: none)")
    grid.add_argument("--dense-steps", type=int, nargs="+", default=[0], metavar="N")
    grid.add_argument("--reorder", nargs="+", choices=REORDERS, default=["hilbert"])
    grid.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["int8-fp8"])
    grid.add_argument("--predictor", nargs="+", choices=[p for p in PREDICTORS if p != "full"],
                      default=[SpargeConfig.predictor],
                      help=f"block predictors (default: {SpargeConfig.predictor}; 'mixed' adds sampled exact rows)")
    grid.add_argument("--map-reuse", type=int, nargs="+", default=[None], metavar="N",
                      help="calls one predicted block map serves (default: 2 for the ε configs, 1 for top-k / τ; 1 "
                           "predicts in every call)")
    add_block_argument(grid)
    add_model_arguments(parser)
    add_metric_arguments(parser)
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                           help="untimed warm-up call before every timed render (default: on)")
    run_group.add_argument("--save-media", action="store_true", help="also write every render as mp4 under media/")
    run_group.add_argument("--overwrite", action="store_true", help="discard the results already in --out-dir")
    run_group.add_argument("--merge-only", action="store_true",
                           help="only merge rank shards and rewrite the plot and report")
    run_group.add_argument("--merge-timeout", type=float, default=3600.0, metavar="S",
                           help="how long rank 0 waits for the other ranks (default: 3600)")
    from ..launch import add_context_parallel_arguments

    add_context_parallel_arguments(parser)
    parser.set_defaults(run=run)


def read_prompts(args: argparse.Namespace) -> List[str]:
    prompts = [p for p in args.prompts]
    if args.prompts_file:
        try:
            text = Path(args.prompts_file).read_text(encoding="utf-8")
        except OSError as error:
            raise UsageError(f"cannot read --prompts-file {args.prompts_file!r}: {error.strerror}") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    prompts = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    if not prompts:
        raise UsageError("no prompts: give PROMPT arguments or --prompts-file")
    return prompts


def _clear(root: Path) -> None:
    for name in (RESULTS, PLOT, REPORT, META):
        (root / name).unlink(missing_ok=True)
    for folder in ("shards", "dense", "media"):
        if (root / folder).is_dir():
            for child in (root / folder).iterdir():
                if child.is_file():
                    child.unlink()


def run(args: argparse.Namespace) -> int:
    from ..arguments import (device_and_dtype, model_from_args, quiet_libraries, resolve_block_n,
                            resolve_sim_threshold, settings_from_args)
    from ..models import model_family

    root = check_writable_dir(args.out_dir)
    if args.merge_only:
        out = finish(root)
        print(f"merged {out['results']}; report {out['report']}; plot {out['plot']}")
        return 0
    prompts = read_prompts(args)
    quiet_libraries(getattr(args, "verbose", False))
    model = model_from_args(args)
    topk = args.topk if args.topk is not None else ([] if args.cdf_threshold or args.target_error else [0.7, 0.5, 0.3])
    sim_thresholds = list(dict.fromkeys(resolve_sim_threshold(v, model) for v in args.sim_threshold))
    for path in args.calibration:
        if path is not None:
            from ..calibration import load_calibration

            try:
                load_calibration(path)
            except ValueError as error:
                raise UsageError(f"--calibration: {error}") from None
    configs = expand_grid(topk, args.cdf_threshold, sim_thresholds, args.pv_threshold, args.dense_steps,
                          args.reorder, args.precision, resolve_block_n(args.block_n, model),
                          target_error=args.target_error, calibration=args.calibration, predictor=args.predictor,
                          map_reuse=args.map_reuse)
    if any(s < 0 for s in args.dense_steps):
        raise UsageError("--dense-steps values must be >= 0")
    family = model_family(model)  # validates --model before anything is loaded
    settings = settings_from_args(args, family=family)
    device, dtype = device_and_dtype(args)
    rank, world, _ = rank_info()
    if args.overwrite and world > 1:
        raise UsageError("--overwrite does not work with several ranks: empty --out-dir before the launch")
    from ..launch import launch_from_args

    launch = launch_from_args(args, device)
    try:
        evaluator = Evaluator.create(parse_metrics(args.metrics), clip_model=args.clip_model,
                                     vqa_model=args.vqa_model, device=launch.device(device),
                                     vqa_frames=args.vqa_frames)
        if not args.overwrite:
            check_meta(root / META, sweep_meta(model, settings, dtype, evaluator, launch=launch), write=False)
        if args.overwrite and root.is_dir():
            _clear(root)
        for note in evaluator.notes:
            if rank == 0:
                print(note)
        out = run_sweep(prompts, configs, root, seeds=args.seeds, model=model, settings=settings, device=device,
                        dtype=dtype, evaluator=evaluator, warmup=args.warmup, save_media=args.save_media,
                        progress=not args.no_progress, merge_timeout=args.merge_timeout, launch=launch)
    finally:
        launch.close()
    if launch.parallel and not launch.writer:
        return 0
    where = f"rank {rank}/{world}: " if world > 1 and not launch.parallel else ""
    print(f"{where}{out['rendered']} render(s), {out['skipped']} already done")
    if out["report"] is not None:
        print(f"results {out['results']}\nplot    {out['plot']}\nreport  {out['report']}")
    return 0
