"""After a sweep: merge the ranks' shards, summarise per config, draw quality against speed, write the report."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UsageError
from ..evaluate import METRICS
from ..media import atomic_path, write_text
from .rows import DENSE_LABEL, META, PLOT, REPORT, RESULTS, number, merge_rows, read_rows, write_rows

logger = logging.getLogger(__name__)


METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS", "clip_score": "CLIPScore",
                 "clip_t": "CLIP-T", "vqa": "VQA score"}
PSNR_PLOT_CAP = 60.0  # identical renders have infinite PSNR; they are drawn at this height


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
            values = [number(r.get(column)) for r in members]
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
    from ..models import EMBEDDED_MODELS, TINY_STEPS

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
