"""`sparge-diffusers eval`: alignment and fidelity metrics of rendered videos; `Evaluator`, used by the sweep.

Metrics (names as in CSV columns and ``--metrics``):
    ``clip_score``  CLIPScore (0–100) of the frames against the prompt                 needs a CLIP folder
    ``clip_t``      CLIP-T consecutive-frame consistency (0–100; videos only)           needs a CLIP folder
    ``vqa``         mean P("yes") of a BLIP VQA model to a question from the prompt    needs a VQA folder
    ``psnr``, ``ssim``, ``lpips``   fidelity to the dense reference render          needs a reference
``--metrics auto`` (the default) computes every metric whose inputs are there: CLIP / VQA metrics when a folder is
given by flag or environment variable, fidelity when a reference is given (or recorded in the sidecar), LPIPS when
its weights are local. Naming a metric explicitly makes a missing input an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import UsageError
from .media import read_media, sidecar_path, write_json

logger = logging.getLogger(__name__)

ALIGNMENT_METRICS = ("clip_score", "clip_t", "vqa")
FIDELITY_METRICS = ("psnr", "ssim", "lpips")
METRICS = ALIGNMENT_METRICS + FIDELITY_METRICS
_ALIASES = {"clip": "clip_score", "clipscore": "clip_score", "clip-score": "clip_score", "clip-t": "clip_t",
            "clipt": "clip_t", "vqa_score": "vqa", "vqa-score": "vqa"}


def parse_metrics(text: Optional[str]) -> Optional[tuple]:
    """``"auto"`` / None → None; ``"all"`` → every metric; else a comma list of metric names (aliases allowed)."""
    if text is None or text.strip().lower() == "auto":
        return None
    if text.strip().lower() == "all":
        return METRICS
    names = []
    for raw in text.split(","):
        name = _ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if not name:
            continue
        if name not in METRICS:
            raise UsageError(f"unknown metric {raw.strip()!r}; choose from {', '.join(METRICS)}, auto or all")
        names.append(name)
    return tuple(dict.fromkeys(names))


@dataclass
class Evaluator:
    """The metric models of one run, loaded once, and the metrics to compute.

    Build it with `Evaluator.create`; then `alignment(frames, prompt)` and `fidelity(frames, reference)` return
    ``{metric: value}`` dicts (None where a metric is undefined, e.g. CLIP-T of a single image).
    """

    clip: Optional[object] = None
    vqa: Optional[object] = None
    metrics: tuple = ("psnr", "ssim")
    vqa_frames: int = 8
    notes: List[str] = field(default_factory=list)

    @classmethod
    def create(cls, metrics: Optional[Sequence[str]] = None, *, clip_model: Optional[str] = None,
               vqa_model: Optional[str] = None, device: str = "cpu", vqa_frames: int = 8,
               fidelity: bool = True) -> "Evaluator":
        """Load what ``metrics`` need (None = auto: every metric whose weights are given).

        Raises:
            MissingWeightsError: an explicitly named metric lacks its weights, or a given folder cannot be loaded.
        """
        from .metrics import CLIP_ENV, VQA_ENV, load_clip, load_vqa, lpips_status, ssim_status

        if vqa_frames < 1:
            raise UsageError(f"--vqa-frames must be >= 1, got {vqa_frames}")
        notes: List[str] = []
        auto = metrics is None
        if auto:
            chosen = []
            if clip_model or os.environ.get(CLIP_ENV):
                chosen += ["clip_score", "clip_t"]
            if vqa_model or os.environ.get(VQA_ENV):
                chosen.append("vqa")
            if fidelity:
                chosen.append("psnr")
                reason = ssim_status()
                if reason is None:
                    chosen.append("ssim")
                else:
                    notes.append(reason)
                reason = lpips_status()
                if reason is None:
                    chosen.append("lpips")
                else:
                    notes.append(reason)
            metrics = tuple(chosen)
        elif "lpips" in metrics:
            reason = lpips_status()
            if reason is not None:
                raise UsageError(reason.replace("LPIPS skipped", "LPIPS unavailable"))
        clip = load_clip(clip_model, device=device) if {"clip_score", "clip_t"} & set(metrics) else None
        vqa = load_vqa(vqa_model, device=device) if "vqa" in metrics else None
        if auto and clip is None:
            notes.append(f"CLIPScore / CLIP-T skipped: pass --clip-model PATH or set {CLIP_ENV}")
        if auto and vqa is None:
            notes.append(f"VQA score skipped: pass --vqa-model PATH or set {VQA_ENV}")
        return cls(clip=clip, vqa=vqa, metrics=tuple(metrics), vqa_frames=vqa_frames, notes=notes)

    def describe(self) -> dict:
        """What decides the scores: the metrics, the metric model folders (resolved paths) and the VQA frames
        (a sweep records it with its settings and refuses a resumed run that would score with other models)."""
        def folder(model):
            return None if model is None else str(Path(getattr(model, "path", "") or "?").resolve())

        return {"metrics": list(self.metrics), "clip_model": folder(self.clip), "vqa_model": folder(self.vqa),
                "vqa_frames": self.vqa_frames if "vqa" in self.metrics else None}

    @property
    def alignment_metrics(self) -> tuple:
        return tuple(m for m in self.metrics if m in ALIGNMENT_METRICS)

    @property
    def fidelity_metrics(self) -> tuple:
        return tuple(m for m in self.metrics if m in FIDELITY_METRICS)

    def alignment(self, frames: np.ndarray, prompt: str) -> Dict[str, Optional[float]]:
        from .metrics import clip_score, clip_t_consistency, vqa_score

        out: Dict[str, Optional[float]] = {}
        if "clip_score" in self.metrics:
            out["clip_score"] = clip_score(frames, prompt, self.clip)
        if "clip_t" in self.metrics:
            out["clip_t"] = clip_t_consistency(frames, self.clip)
        if "vqa" in self.metrics:
            out["vqa"] = vqa_score(frames, prompt, self.vqa, max_frames=self.vqa_frames)
        return out

    def fidelity(self, frames: np.ndarray, reference: np.ndarray) -> Dict[str, Optional[float]]:
        from .metrics import lpips, psnr, ssim

        functions = {"psnr": psnr, "ssim": ssim, "lpips": lpips}
        return {name: functions[name](frames, reference) for name in self.fidelity_metrics}


# CLI


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    """``--clip-model``, ``--vqa-model``, ``--metrics``, ``--vqa-frames`` (shared by eval and sweep)."""
    group = parser.add_argument_group("metrics (weights are never downloaded)")
    group.add_argument("--clip-model", metavar="DIR", default=None,
                       help="local CLIP folder (transformers save_pretrained; or open_clip) [env SPARGE_CLIP_MODEL]")
    group.add_argument("--vqa-model", metavar="DIR", default=None,
                       help="local BLIP VQA folder (BlipForQuestionAnswering) [env SPARGE_VQA_MODEL]")
    group.add_argument("--metrics", default="auto", metavar="LIST",
                       help=f"comma list of {', '.join(METRICS)}; 'auto' (default: those whose inputs are given) "
                            "or 'all'")
    group.add_argument("--vqa-frames", type=int, default=8, metavar="N",
                       help="frames scored by the VQA model per video, evenly spaced (default: 8)")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="CLIPScore, CLIP-T, VQA score and fidelity (PSNR/SSIM/LPIPS) of rendered videos",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("media", nargs="+", help="mp4 / gif / png files (sidecars are read when present)")
    parser.add_argument("--prompt", default=None, help="prompt to score against (default: the sidecar's prompt)")
    parser.add_argument("--reference", default=None, metavar="FILE",
                        help="dense reference render for PSNR/SSIM/LPIPS (default: the sidecar's dense render)")
    add_metric_arguments(parser)
    parser.add_argument("--device", default="cpu", help="device of the metric models (default: cpu)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(run=run)


def _read_sidecar(path: str) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        logger.warning("ignoring unreadable sidecar %s", side)
        return {}


def _sidecar_reference(path: str, sidecar: dict) -> Optional[str]:
    """The dense render recorded by ``generate --compare-dense``: as recorded, else next to the media file."""
    recorded = (sidecar.get("dense") or {}).get("path")
    if not recorded:
        return None
    for candidate in (recorded, os.path.join(os.path.dirname(path), os.path.basename(recorded))):
        if os.path.isfile(candidate):
            return candidate
    return None


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def evaluate_file(path: str, evaluator: Evaluator, *, prompt: Optional[str] = None,
                  reference: Optional[str] = None, require_fidelity: bool = False) -> Dict[str, object]:
    """The metrics of one media file (prompt and reference default to its sidecar's).

    Raises:
        UsageError: the file cannot be read, it has no prompt while alignment metrics are asked, it has no
            reference while fidelity metrics were named, or the reference does not match it.
    """
    sidecar = _read_sidecar(path)
    frames = read_media(path, sidecar=sidecar or None)
    prompt = prompt or sidecar.get("prompt")
    row: Dict[str, object] = {"file": path, "prompt": prompt, "frames": int(frames.shape[0])}
    if evaluator.alignment_metrics:
        if prompt is None:
            raise UsageError(f"{path}: no prompt (pass --prompt; the file has no sidecar with one)")
        row.update(evaluator.alignment(frames, prompt))
    reference_path = reference or _sidecar_reference(path, sidecar)
    if evaluator.fidelity_metrics:
        if reference_path:
            # frames_hint: a contact sheet without a sidecar holds as many frames as the file it is compared with
            reference_frames = read_media(reference_path, frames_hint=int(frames.shape[0]))
            row["reference"] = reference_path
            row.update(evaluator.fidelity(frames, reference_frames))
        elif require_fidelity:
            raise UsageError(f"{path}: fidelity metrics need a dense reference: pass --reference FILE")
    return row


def run(args: argparse.Namespace) -> int:
    """Evaluate every file; a file that fails is reported (one line on stderr) and the others are still
    evaluated. Exit status 1 when any file failed, 2 for bad arguments (nothing evaluated)."""
    import sys

    from .arguments import quiet_libraries
    from .media import check_writable

    quiet_libraries(getattr(args, "verbose", False))
    if args.json:
        check_writable(args.json)
    for path in args.media:
        if not os.path.isfile(path):
            raise UsageError(f"no such media file: {path!r}")
    if args.reference and not os.path.isfile(args.reference):
        raise UsageError(f"no such reference file: {args.reference!r}")
    evaluator = Evaluator.create(parse_metrics(args.metrics), clip_model=args.clip_model, vqa_model=args.vqa_model,
                                 device=args.device, vqa_frames=args.vqa_frames)
    for note in evaluator.notes:
        print(note)
    results, failures = [], []
    for path in args.media:
        try:
            results.append(evaluate_file(path, evaluator, prompt=args.prompt, reference=args.reference,
                                         require_fidelity=parse_metrics(args.metrics) is not None))
        except UsageError as error:
            message = " ".join(str(error).split())
            failures.append({"file": path, "error": message})
            print(f"sparge-diffusers eval: error: {message}", file=sys.stderr)
    columns = [m for m in METRICS if any(m in row for row in results)]
    if results:
        print("  ".join([f"{'file':<40}"] + [f"{c:>10}" for c in columns]))
    for row in results:
        print("  ".join([f"{str(row['file'])[-40:]:<40}"] + [f"{_format(row.get(c)):>10}" for c in columns]))
    if failures:
        print(f"{len(failures)} of {len(args.media)} file(s) failed; {len(results)} evaluated", file=sys.stderr)
    if args.json:
        write_json(args.json, {"results": results, "failures": failures, "metrics": list(evaluator.metrics),
                               "notes": evaluator.notes})
    return 1 if failures else 0
