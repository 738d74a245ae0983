"""`sparge-diffusers sweep`: quality versus speed over prompts × seeds × a grid of sparse attention configs.

For every prompt and seed the dense render is made once, then every sparse config of the grid (the product of the
``--topk`` / ``--cdf-threshold`` values, ``--sim-threshold``, ``--pv-threshold``, ``--dense-steps``, ``--reorder`` and
``--precision`` lists). Each render is one CSV row: wall time, speed-up over the dense render, measured sparsity,
fidelity to the dense render (PSNR, SSIM, LPIPS where available) and alignment to the prompt (CLIPScore, CLIP-T, VQA
score, for the metric models given). The out folder then holds:

    results.csv             one row per render (rewritten atomically after every row)
    quality_vs_speed.png    each quality metric against the speed-up, one point per config (mean over prompts)
    report.md               the settings, a per-config table and the plot
    sweep.json              the model and call settings; a rerun with other settings is refused
    dense/*.npz             the dense frames, so a resumed sweep can score sparse rows without re-rendering

Resuming: rerun the same command; rows already in the CSV are skipped (new grid values or prompts are added).

Several GPUs: launch with ``torchrun --nproc-per-node N`` or ``accelerate launch``; each rank (``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK``) renders its share of the (prompt, seed) pairs on ``cuda:LOCAL_RANK`` into
``shards/results.rank<r>-of-<n>.csv``, and rank 0 waits for the other ranks' done-markers, merges the shards into
``results.csv`` and writes the plot and report. ``--merge-only`` redoes that merge (e.g. after a rank failed).

One render over several GPUs instead: ``--context-parallel ulysses`` under torchrun splits every attention sequence
over the ranks (`sparge_diffusers.launch`); all ranks render every row together, rank 0 writes the files, and
``sweep.json`` records the world size (a folder is resumed only with the same one).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .config import PRECISIONS, REORDERS, SpargeConfig
from .errors import UsageError
from .evaluate import METRICS, Evaluator, add_metric_arguments, parse_metrics
from .launch import read_rank_env
from .media import atomic_path, check_writable_dir, write_json, write_media, write_text

logger = logging.getLogger(__name__)

RESULTS = "results.csv"
PLOT = "quality_vs_speed.png"
REPORT = "report.md"
META = "sweep.json"
DENSE_LABEL = "dense"
CONFIG_COLUMNS = ("topk", "cdf_threshold", "target_error", "calibration", "sim_threshold", "pv_threshold", "dense_steps", "reorder", "precision")
COLUMNS = (("prompt", "seed", "config", "mode") + CONFIG_COLUMNS
           + ("seconds", "dense_seconds", "speedup", "sparsity", "attention_ms", "backend")
           + METRICS + ("frames", "height", "width", "media", "rank", "finished_at"))
METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "clip_score": "CLIPScore",
                 "clip_t": "CLIP-T", "vqa": "VQA score"}
PSNR_PLOT_CAP = 60.0  # identical renders have infinite PSNR; they are drawn at this height


# grid


def config_label(config: SpargeConfig) -> str:
    """Short, stable name of a sparse config (the CSV key with prompt and seed)."""
    rule = config.selection
    selection = {"topk": f"topk={rule.value:g}", "cdf": f"tau={rule.value:g}", "budget": f"eps={rule.value:g}",
                 "all": "all"}[rule.rule]
    if rule.rule == "budget" and config.calibration:
        selection += " calibrated"
    sim = "off" if config.sim_threshold is None else f"{config.sim_threshold:g}"
    pv = "off" if config.pv_threshold is None else f"{config.pv_threshold:g}"
    label = f"{selection} sim={sim} pv={pv} dense_steps={config.dense_steps} {config.reorder} {config.precision}"
    return label if config.block_n == SpargeConfig.block_n else f"{label} kblock={config.block_n}"


def expand_grid(topk: Sequence[float] = (), cdf_threshold: Sequence[float] = (),
                sim_threshold: Sequence[Optional[float]] = (SpargeConfig.sim_threshold,),
                pv_threshold: Sequence[Optional[float]] = (None,), dense_steps: Sequence[int] = (0,),
                reorder: Sequence[str] = ("hilbert",), precision: Sequence[str] = ("int8-fp8",),
                block_n: int = SpargeConfig.block_n, *, target_error: Sequence[float] = (),
                calibration: Sequence[Optional[str]] = (None,)) -> List[SpargeConfig]:
    """Every `SpargeConfig` of the grid (top-k values first, then τ, then ε values), duplicates removed; ``block_n``
    is the key block size of every config (not a grid axis); ``calibration`` (None = uncalibrated, or calibration
    files) is an axis of the ε configs only.

    Raises:
        UsageError: a value SpargeConfig rejects (its message), or an empty grid.
    """
    selections = [("topk", v, None) for v in topk] + [("cdf", v, None) for v in cdf_threshold]
    selections += [("eps", v, cal) for v in target_error for cal in calibration]
    if not selections:
        raise UsageError("the grid is empty: give --topk, --cdf-threshold and/or --target-error values")
    configs: Dict[str, SpargeConfig] = {}
    for (kind, value, cal), sim, pv, steps, order, prec in itertools.product(
            selections, sim_threshold, pv_threshold, dense_steps, reorder, precision):
        try:
            config = SpargeConfig(topk=value if kind == "topk" else None,
                                  cdf_threshold=value if kind == "cdf" else None,
                                  target_error=value if kind == "eps" else None, calibration=cal,
                                  sim_threshold=sim,
                                  pv_threshold=pv, dense_steps=steps, reorder=order, precision=prec, block_n=block_n)
        except ValueError as error:
            raise UsageError(str(error)) from None
        configs.setdefault(config_label(config), config)
    return list(configs.values())


def rank_info(env: Optional[dict] = None) -> Tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun / accelerate environment variables (``(0, 1, 0)`` alone)."""
    return read_rank_env(env)


def split_work(items: Sequence, rank: int, world: int) -> list:
    """Round-robin share of ``items`` for ``rank`` of ``world``."""
    return [item for index, item in enumerate(items) if index % world == rank]


# CSV


def row_key(row: dict) -> Tuple[str, str, str]:
    return (str(row["prompt"]), str(row["seed"]), str(row["config"]))


def read_rows(path: Path) -> List[dict]:
    """Rows of a results CSV (missing file → ``[]``; rows without a key are ignored)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row.get("prompt") and row.get("config")]


def write_rows(path: Path, rows: Iterable[dict]) -> None:
    """Write rows atomically (the file is replaced only when complete)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    write_text(path, buffer.getvalue())


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else ("" if math.isnan(value) else f"{value:.6g}")
    return value


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def merge_rows(*groups: Iterable[dict]) -> List[dict]:
    """Union of row groups, one row per key (the later group wins), dense rows first within a prompt."""
    merged: Dict[Tuple[str, str, str], dict] = {}
    for group in groups:
        for row in group:
            merged[row_key(row)] = row
    return sorted(merged.values(), key=lambda r: (r["prompt"], str(r["seed"]), r["config"] != DENSE_LABEL,
                                                  r["config"]))


# sweep


@dataclass
class SweepPaths:
    root: Path
    rank: int = 0
    world: int = 1

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def shard(self) -> Path:
        if self.world == 1:
            return self.results
        return self.root / "shards" / f"results.rank{self.rank}-of-{self.world}.csv"

    def marker(self, rank: int) -> Path:
        return self.root / "shards" / f"rank{rank}-of-{self.world}.done"

    def dense_frames(self, prompt: str, seed: int) -> Path:
        digest = hashlib.sha256(f"{prompt}\x00{seed}".encode("utf-8")).hexdigest()[:16]
        return self.root / "dense" / f"{digest}.npz"

    def media(self, prompt: str, seed: int, label: str) -> Path:
        from .outputs import slugify

        return self.root / "media" / f"{slugify(prompt, 40)}-seed{seed}-{slugify(label, 80)}.mp4"


def _save_frames(path: Path, frames: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, frames=frames)


def _load_frames(path: Path) -> Optional[np.ndarray]:
    try:
        with np.load(path) as data:
            return data["frames"]
    except (OSError, ValueError, KeyError):
        return None


def _render_row(prompt: str, seed: int, label: str, config: Optional[SpargeConfig], render, evaluator: Evaluator,
                dense_frames: Optional[np.ndarray], dense_seconds: Optional[float], rank: int) -> dict:
    row = {"prompt": prompt, "seed": seed, "config": label, "mode": "dense" if config is None else "sparse",
           "seconds": render.seconds, "frames": render.frames.shape[0], "height": render.frames.shape[1],
           "width": render.frames.shape[2], "rank": rank,
           "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if config is not None:
        row.update({name: getattr(config, name) for name in CONFIG_COLUMNS})
        row.update({"sparsity": render.sparsity, "attention_ms": render.attention_ms,
                    "backend": "+".join(sorted(render.backends))})
    if dense_seconds is not None:
        row["dense_seconds"] = dense_seconds
        row["speedup"] = dense_seconds / render.seconds if render.seconds > 0 else None
    if dense_frames is not None and config is not None:
        row.update(evaluator.fidelity(render.frames, dense_frames))
    row.update(evaluator.alignment(render.frames, prompt))
    return row


def run_sweep(prompts: Sequence[str], configs: Sequence[SpargeConfig], out_dir, *, seeds: Sequence[int] = (0,),
              model: Optional[str] = None, settings=None, device: str = "cpu", dtype=None,
              evaluator: Optional[Evaluator] = None,
              warmup: bool = True, save_media: bool = False, progress: bool = True, env: Optional[dict] = None,
              merge_timeout: float = 3600.0, launch=None) -> dict:
    """Run (or resume) a sweep; returns ``{"rendered", "skipped", "results", "plot", "report"}`` (paths None on
    ranks other than 0). See the module docstring for the files written. ``launch``: a context-parallel
    `sparge_diffusers.launch.Launch` (every rank renders every row; rank 0 writes)."""
    import torch

    from .models import default_model, load_model
    from .rendering import RenderSettings, render

    model = model or default_model()
    settings = settings or RenderSettings()
    dtype = dtype or torch.float32
    evaluator = evaluator or Evaluator()
    parallel = launch is not None and launch.parallel
    if parallel:  # context parallel: one stream of work, written by rank 0
        rank, world, writer, device = 0, 1, launch.writer, launch.device(device)
    else:
        rank, world, local_rank = rank_info(env)
        writer = True
        if world > 1 and str(device) == "cuda":
            device = f"cuda:{local_rank}"
    paths = SweepPaths(Path(out_dir), rank, world)
    check_writable_dir(paths.root)
    _check_meta(paths.root / META, sweep_meta(model, settings, dtype, evaluator, launch=launch), write=writer)

    own = read_rows(paths.shard)  # the results CSV itself when there is one rank
    done = {row_key(r): r for r in merge_rows(read_rows(paths.results), own)}
    pairs = split_work([(p, s) for p in prompts for s in seeds], rank, world)
    labels = [DENSE_LABEL] + [config_label(c) for c in configs]
    todo = [(p, s, lab) for p, s in pairs for lab in labels if (p, str(s), lab) not in done]
    if parallel:
        todo = launch.broadcast(todo)  # the ranks run collectives together: rank 0's view of the folder decides
    skipped = len(pairs) * len(labels) - len(todo)
    if world > 1:
        paths.marker(rank).unlink(missing_ok=True)
    shard_rows = merge_rows(own)
    rendered = 0
    if todo:
        loaded = load_model(model, device=device, dtype=dtype)
        settings.validate(loaded)
        if parallel:
            launch.enable(loaded)
        bar = _progress_bar(len(todo), progress and writer, f"sweep rank {rank}" if world > 1 else "sweep")
        by_pair: Dict[Tuple[str, int], List[str]] = {}
        for p, s, lab in todo:
            by_pair.setdefault((p, s), []).append(lab)
        config_of = {config_label(c): c for c in configs}

        def record(row, prompt, seed, label, result, rows):
            """Save the media (when asked), add the row to this rank's CSV on disk, advance the bar."""
            nonlocal rendered
            if save_media:
                row["media"] = str(write_media(paths.media(prompt, seed, label), result.frames)["path"])
            rows = merge_rows(rows, [row])
            write_rows(paths.shard, rows)
            rendered += 1
            bar.update(1)
            return rows
        for (prompt, seed), pair_labels in by_pair.items():
            run_settings = settings.with_seed(seed)
            dense_row = done.get((prompt, str(seed), DENSE_LABEL))
            dense_path = paths.dense_frames(prompt, seed)
            dense_frames = _load_frames(dense_path) if dense_path.is_file() else None
            dense_seconds = _number(dense_row["seconds"]) if dense_row else None
            need_dense = DENSE_LABEL in pair_labels or dense_frames is None
            if parallel:
                need_dense = launch.broadcast(need_dense)
            if need_dense:
                bar.set_description(f"{prompt[:24]} dense")
                result = render(loaded, prompt, run_settings, None, warmup=warmup)
                dense_frames, dense_seconds = result.frames, result.seconds
                if writer:
                    _save_frames(dense_path, dense_frames)
                if DENSE_LABEL in pair_labels and writer:
                    shard_rows = record(_render_row(prompt, seed, DENSE_LABEL, None, result, evaluator, None, None,
                                                    rank), prompt, seed, DENSE_LABEL, result, shard_rows)
            for label in pair_labels:
                if label == DENSE_LABEL:
                    continue
                bar.set_description(f"{prompt[:24]} {label.split()[0]}")
                result = render(loaded, prompt, run_settings, config_of[label], warmup=warmup)
                if not writer:
                    continue
                shard_rows = record(_render_row(prompt, seed, label, config_of[label], result, evaluator,
                                                dense_frames, dense_seconds, rank),
                                    prompt, seed, label, result, shard_rows)
        bar.close()
    out = {"rendered": rendered, "skipped": skipped, "results": None, "plot": None, "report": None}
    if not writer:
        return out
    if world > 1:
        write_text(paths.marker(rank), datetime.now(timezone.utc).isoformat() + "\n")
        if rank != 0:
            return out
        _wait_for_markers(paths, merge_timeout)
    out.update(finish(paths.root, evaluator_notes=evaluator.notes))
    return out


def sweep_meta(model: str, settings, dtype, evaluator: Optional[Evaluator] = None, launch=None) -> dict:
    """What must not change between the runs that fill one out folder: the model, the call settings, the metric
    models that score the rows (two CLIP models' scores in one column would not compare) and, for a
    context-parallel launch, its world size (the timings depend on it)."""
    evaluator = evaluator or Evaluator()
    meta = {"model": model, "settings": settings.to_dict(), "dtype": str(dtype).replace("torch.", ""),
            "metrics": evaluator.describe()}
    if launch is not None and launch.parallel:
        meta["parallel"] = {"context_parallel": launch.mode, "world_size": launch.world_size}
    return meta


def _check_meta(path: Path, meta: dict, *, write: bool) -> None:
    """Refuse an out folder that holds a sweep with other settings; write ``sweep.json`` when asked."""
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous is not None and previous != meta:
            raise UsageError(f"{path.parent} holds a sweep with other settings ({_diff(previous, meta)}); use another "
                             "--out-dir or --overwrite")
        return
    if write:
        write_json(path, meta)


_FLAGS = {"clip_model": "--clip-model", "vqa_model": "--vqa-model", "vqa_frames": "--vqa-frames",
          "metrics": "--metrics", "model": "--model", "steps": "--steps", "height": "--height", "width": "--width",
          "frames": "--frames", "guidance_scale": "--guidance-scale", "dtype": "--dtype"}


def _flatten(meta: dict) -> dict:
    flat = {}
    for key, value in meta.items():
        if key in ("settings", "metrics") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _diff(old: dict, new: dict) -> str:
    flat_old, flat_new = _flatten(old), _flatten(new)
    changed = [f"{_FLAGS.get(k, k)}: {flat_old.get(k)} -> {flat_new.get(k)}"
               for k in flat_new if flat_old.get(k) != flat_new.get(k)]
    return ", ".join(changed) or "unreadable"


def _wait_for_markers(paths: SweepPaths, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    missing = [r for r in range(paths.world) if not paths.marker(r).is_file()]
    while missing and time.monotonic() < deadline:
        time.sleep(2.0)
        missing = [r for r in missing if not paths.marker(r).is_file()]
    if missing:
        logger.warning("ranks %s did not finish within %.0f s; merging what is there (rerun with --merge-only later)",
                       missing, timeout)


def _progress_bar(total: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, unit="render", dynamic_ncols=True)


# merge, plot, report


def finish(root, *, evaluator_notes: Sequence[str] = ()) -> dict:
    """Merge shards into ``results.csv``, then draw the plot and write the report; returns their paths."""
    root = Path(root)
    shards = sorted((root / "shards").glob("results.rank*-of-*.csv")) if (root / "shards").is_dir() else []
    rows = merge_rows(read_rows(root / RESULTS), *[read_rows(shard) for shard in shards])
    if not rows:
        raise UsageError(f"{root} holds no sweep results to report")
    write_rows(root / RESULTS, rows)
    summary = summarize(rows)
    notes = list(evaluator_notes)
    plot = None
    try:
        plot = plot_quality_vs_speed(summary, root / PLOT)
    except ImportError:
        notes.append("plot skipped: matplotlib is not installed (pip install matplotlib)")
    meta = {}
    if (root / META).is_file():
        try:
            meta = json.loads((root / META).read_text())
        except (OSError, ValueError):
            meta = {}
    report = write_report(root / REPORT, summary, rows, meta, plot, notes)
    return {"results": root / RESULTS, "plot": plot, "report": report}


def summarize(rows: Sequence[dict]) -> List[dict]:
    """Per-config means over prompts and seeds: the config label, ``n``, seconds, speed-up, sparsity and metrics."""
    groups: Dict[str, List[dict]] = {}
    for row in rows:
        groups.setdefault(row["config"], []).append(row)
    summary = []
    for label, members in groups.items():
        entry = {"config": label, "n": len(members), "mode": members[0].get("mode", "")}
        for column in ("seconds", "speedup", "sparsity") + METRICS:
            values = [_number(r.get(column)) for r in members]
            values = [v for v in values if v is not None]
            if column == "speedup" and label == DENSE_LABEL:
                values = [1.0]
            # identical renders have PSNR inf: the mean is over the finite values, inf when all are inf
            entry[column] = (math.inf if values and all(math.isinf(v) for v in values)
                             else float(np.mean([v for v in values if not math.isinf(v)])) if values else None)
        summary.append(entry)
    summary.sort(key=lambda e: (e["config"] != DENSE_LABEL, e["config"]))
    return summary


def _present_metrics(summary: Sequence[dict]) -> List[str]:
    return [m for m in METRICS if any(e.get(m) is not None for e in summary)]


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
DENSE_STYLE = {"color": "black", "marker": "*", "size": 140}


def config_styles(labels: Sequence[str]) -> Dict[str, dict]:
    """One style per config, the same in every panel: ``{"color", "marker", "size", "number"}``.

    Sparse config ``n`` (0-based, in ``labels`` order) gets colour ``n mod 10`` of matplotlib's ``tab10`` and
    marker ``(n + n div 10) mod 10`` of `MARKERS`, so the (colour, marker) pair is unique for up to 100 configs and
    neighbours differ in both; ``number`` (1-based) labels the point and its legend entry. Dense: a black star.
    """
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    styles: Dict[str, dict] = {}
    number = 0
    for label in labels:
        if label in styles:
            continue
        if label == DENSE_LABEL:
            styles[label] = dict(DENSE_STYLE, number=0)
            continue
        styles[label] = {"color": tuple(palette[number % 10]), "marker": MARKERS[(number + number // 10) % 10],
                         "size": 46, "number": number + 1}
        number += 1
    return styles


def quality_figure(summary: Sequence[dict]):
    """The quality-versus-speed figure: one panel per quality metric (mean over prompts) against the speed-up;
    each config has one numbered colour + marker in every panel, explained by one legend beside the panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    metrics = _present_metrics(summary) or ["sparsity"]
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    styles = config_styles([entry["config"] for entry in summary])
    legend_rows = len(styles)
    figure = Figure(figsize=(4.6 * columns + 4.4, max(3.9 * rows, 0.9 + 0.19 * legend_rows)), dpi=110,
                    layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(rows, columns + 1, width_ratios=[1.0] * columns + [0.95])
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(grid[index // columns, index % columns])
        for entry in summary:
            value, speedup = entry.get(metric), entry.get("speedup")
            if value is None or speedup is None:
                continue
            capped = metric == "psnr" and math.isinf(value)
            style = styles[entry["config"]]
            axes.scatter([speedup], [PSNR_PLOT_CAP if capped else value], color=style["color"],
                         marker=style["marker"], s=style["size"], edgecolors="black", linewidths=0.4, zorder=3,
                         label=entry["config"])
            if style["number"]:
                axes.annotate(str(style["number"]), (speedup, PSNR_PLOT_CAP if capped else value), fontsize=6,
                              xytext=(3, 3), textcoords="offset points", color="0.25")
        axes.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axes.margins(x=0.12, y=0.12)
        axes.set_xlabel("speed-up over dense (×)")
        axes.set_ylabel(METRIC_LABELS.get(metric, metric) + (f" (∞ drawn at {PSNR_PLOT_CAP:g})"
                                                              if metric == "psnr" else ""))
        axes.grid(True, alpha=0.3)
    legend_axes = figure.add_subplot(grid[:, columns])
    legend_axes.axis("off")
    short, common = short_labels([entry["config"] for entry in summary if entry["config"] != DENSE_LABEL])
    handles, texts = [], []
    for entry in summary:
        style = styles[entry["config"]]
        handles.append(Line2D([], [], linestyle="none", marker=style["marker"], color=style["color"],
                              markeredgecolor="black", markeredgewidth=0.4, markersize=7 if style["number"] else 10))
        text = DENSE_LABEL if not style["number"] else f"{style['number']}: {short[entry['config']]}"
        if entry.get("sparsity") is not None and style["number"]:
            text += f" (s={entry['sparsity']:.2f})"
        texts.append(text)
    title = "config (s = sparsity)" + (f"\nall: {' '.join(common)}" if common else "")
    legend_axes.legend(handles, texts, loc="upper left", fontsize=7, frameon=False, borderaxespad=0.0,
                       title=title, title_fontsize=8, alignment="left")
    figure.suptitle("sparge-diffusers: quality versus speed (mean over prompts and seeds)")
    return figure


def plot_quality_vs_speed(summary: Sequence[dict], path: Path) -> Path:
    """Draw `quality_figure` to ``path`` (png, written atomically)."""
    figure = quality_figure(summary)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return path


def short_labels(labels: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """Legend labels: each config label without the parts every config shares; returns ``(short, shared)``."""
    parts = [label.split() for label in labels]
    shared = [p for p in parts[0] if all(p in other for other in parts)] if len(parts) > 1 else []
    short = {}
    for label, words in zip(labels, parts):
        kept = [w for w in words if w not in shared]
        short[label] = " ".join(kept) or words[0]
    return short, shared


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def write_report(path: Path, summary: Sequence[dict], rows: Sequence[dict], meta: dict, plot: Optional[Path],
                 notes: Sequence[str]) -> Path:
    metrics = [m for m in _present_metrics(summary)]
    prompts = sorted({r["prompt"] for r in rows})
    seeds = sorted({str(r["seed"]) for r in rows})
    backends = sorted({b for r in rows for b in str(r.get("backend") or "").split("+") if b})
    lines = ["# sparge-diffusers sweep: quality versus speed", ""]
    settings = meta.get("settings", {})
    from .models import EMBEDDED_MODELS, TINY_STEPS

    model = meta.get("model", "?")
    steps = settings.get("steps") or (f"{TINY_STEPS} (tiny default)" if model in EMBEDDED_MODELS
                                      else "pipeline default")
    first = rows[0]
    lines.append(f"- model: `{model}`, dtype {meta.get('dtype', '?')}; {steps} steps; rendered "
                 f"{first.get('frames')} frame(s) of {first.get('height')}×{first.get('width')}")
    lines.append(f"- {len(prompts)} prompt(s) × {len(seeds)} seed(s) ({', '.join(seeds)}), "
                 f"{len(summary) - 1} sparse config(s), {len(rows)} render(s); attention backends: "
                 f"{', '.join(backends) or 'dense only'}")
    scoring = meta.get("metrics") or {}
    if scoring.get("clip_model") or scoring.get("vqa_model"):
        clip, vqa = scoring.get("clip_model") or "–", scoring.get("vqa_model") or "–"
        frames = f" ({scoring['vqa_frames']} frames per video)" if scoring.get("vqa_frames") else ""
        lines.append(f"- metric models: CLIP `{clip}`, VQA `{vqa}`{frames}")
    written = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines.append(f"- written {written}; rows: [`{RESULTS}`]({RESULTS})")
    if "reference" in backends:
        lines.append("- timings used the pure-PyTorch reference backend (no GPU / Triton): speed-ups here measure "
                     "the reference, not the kernels")
    lines.append("")
    if plot is not None:
        lines += [f"![quality versus speed]({Path(plot).name})", ""]
    lines.append("## Per config (mean over prompts and seeds)")
    lines.append("")
    header = ["config", "n", "sparsity", "time (s)", "speed-up"] + [METRIC_LABELS[m] for m in metrics]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for entry in summary:
        cells = [f"`{entry['config']}`", str(entry["n"]), _fmt(entry.get("sparsity")), _fmt(entry.get("seconds"), 2),
                 _fmt(entry.get("speedup"), 2)]
        cells += [_fmt(entry.get(m), 2 if m == "psnr" else 4) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Fidelity (PSNR, SSIM, LPIPS) compares each sparse render with the dense render of the same prompt "
                 "and seed; alignment (CLIPScore, CLIP-T, VQA score) scores each render against its prompt.")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    lines += ["", "## Prompts", ""] + [f"- {prompt}" for prompt in prompts]
    return write_text(path, "\n".join(lines) + "\n")


# CLI


def add_parser(subparsers) -> None:
    from .arguments import add_block_argument, add_model_arguments, optional_float

    parser = subparsers.add_parser(
        "sweep", help="quality versus speed over prompts × a grid of sparse configs (CSV, PNG plot, report)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    from .launch import add_context_parallel_arguments

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
    from .arguments import (device_and_dtype, model_from_args, quiet_libraries, resolve_block_n,
                            resolve_sim_threshold, settings_from_args)
    from .models import model_family

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
            from .calibration import load_calibration

            try:
                load_calibration(path)
            except ValueError as error:
                raise UsageError(f"--calibration: {error}") from None
    configs = expand_grid(topk, args.cdf_threshold, sim_thresholds, args.pv_threshold, args.dense_steps,
                          args.reorder, args.precision, resolve_block_n(args.block_n, model),
                          target_error=args.target_error, calibration=args.calibration)
    if any(s < 0 for s in args.dense_steps):
        raise UsageError("--dense-steps values must be >= 0")
    family = model_family(model)  # validates --model before anything is loaded
    settings = settings_from_args(args, family=family)
    device, dtype = device_and_dtype(args)
    rank, world, _ = rank_info()
    if args.overwrite and world > 1:
        raise UsageError("--overwrite does not work with several ranks: empty --out-dir before the launch")
    from .launch import launch_from_args

    launch = launch_from_args(args, device)
    try:
        evaluator = Evaluator.create(parse_metrics(args.metrics), clip_model=args.clip_model,
                                     vqa_model=args.vqa_model, device=launch.device(device),
                                     vqa_frames=args.vqa_frames)
        if not args.overwrite:
            _check_meta(root / META, sweep_meta(model, settings, dtype, evaluator, launch=launch), write=False)
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
