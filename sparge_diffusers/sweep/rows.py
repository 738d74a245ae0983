"""The sweep's results table: file names, CSV columns, and reading, writing and merging rows (resumable: a row is
keyed by prompt, seed and config label)."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from ..evaluate import METRICS
from ..media import write_text

logger = logging.getLogger(__name__)


RESULTS = "results.csv"
PLOT = "quality_vs_speed.png"
REPORT = "report.md"
META = "sweep.json"
DENSE_LABEL = "dense"
CONFIG_COLUMNS = ("topk", "cdf_threshold", "target_error", "calibration", "sim_threshold", "pv_threshold", "dense_steps", "reorder", "precision", "predictor")
COLUMNS = (("prompt", "seed", "config", "mode") + CONFIG_COLUMNS
           + ("seconds", "dense_seconds", "speedup", "sparsity", "attention_ms", "backend")
           + METRICS + ("frames", "height", "width", "media", "rank", "finished_at"))


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


def number(value) -> Optional[float]:
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
