"""Running a sweep: the dense render once per (prompt, seed), every sparse config after it, one CSV row per render,
resumed from the rows already written; the settings file that refuses a rerun with other settings; the ranks'
shards and done-markers."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import SpargeConfig
from ..errors import UsageError
from ..evaluate import Evaluator
from ..media import atomic_path, check_writable_dir, write_json, write_media, write_text
from .grid import config_label, rank_info, split_work
from .report import finish
from .rows import CONFIG_COLUMNS, DENSE_LABEL, META, RESULTS, number, merge_rows, read_rows, row_key, write_rows

logger = logging.getLogger(__name__)


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
        from ..outputs import slugify

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

    from ..models import default_model, load_model
    from ..rendering import RenderSettings, render

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
    check_meta(paths.root / META, sweep_meta(model, settings, dtype, evaluator, launch=launch), write=writer)

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
            dense_seconds = number(dense_row["seconds"]) if dense_row else None
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


def check_meta(path: Path, meta: dict, *, write: bool) -> None:
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
