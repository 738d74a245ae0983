"""Run statistics of the Sparge attention calls of one transformer, and the per-call timer."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Tuple

import torch


class Timer:
    """Wall time of one attention call: CUDA events on a GPU (read lazily, no sync per layer), perf_counter else."""

    __slots__ = ("_start", "_end", "_ms")

    def __init__(self, device: torch.device) -> None:
        self._ms = None
        if device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start, self._end = time.perf_counter(), None

    def stop(self) -> "Timer":
        if isinstance(self._start, float):
            self._ms = (time.perf_counter() - self._start) * 1e3
        else:
            self._end.record()
        return self

    def milliseconds(self) -> float:
        if self._ms is None:
            self._end.synchronize()
            self._ms = float(self._start.elapsed_time(self._end))
        return self._ms


class SpargeRunStats:
    """Per-layer, per-step statistics of the Sparge attention calls of one transformer.

    ``rows`` is a list of dicts, one per attention-layer call, with the keys:
        ``step`` (denoising step index), ``generation`` (pipeline call counter), ``forward`` (transformer forward
        index), ``layer`` (attention layer index; Flux counts double-stream blocks first), ``name`` (module path),
        ``sparsity`` (fraction of skipped (query block, key block) pairs, averaged over batch and heads; 0 on dense
        calls), ``attention_ms`` (wall time of the attention call: CUDA events on a GPU, perf_counter on the CPU),
        ``backend`` (``"triton"``, ``"reference"`` or ``"dense"``), ``policy`` (``"sparse"``, ``"dense_step"``,
        ``"dense_layer"``, ``"masked"``, ``"cross"`` or ``"unsupported"``), ``batch``, ``heads``, ``seq_len``,
        ``text_len``, ``reorder``, ``map_reused`` (True when the call attended a block map predicted by an earlier
        call, ``SpargeConfig.map_reuse``).

    Device values (sparsity tensors, CUDA events) are read when ``rows`` is first accessed after new calls, so
    collecting does not synchronize the GPU in every layer. Calls made while ``torch.compile`` traces are not recorded.
    """

    def __init__(self) -> None:
        self._pending: List[Tuple[dict, Any, Timer]] = []
        self._rows: List[dict] = []

    def record(self, row: dict, sparsity, timer: Timer) -> None:
        self._pending.append((row, sparsity, timer))

    @property
    def rows(self) -> List[dict]:
        if self._pending:
            for row, sparsity, timer in self._pending:
                row = dict(row)
                row["sparsity"] = float(sparsity) if sparsity is not None else 0.0
                row["attention_ms"] = timer.milliseconds()
                self._rows.append(row)
            self._pending = []
        return self._rows

    def __len__(self) -> int:
        return len(self._rows) + len(self._pending)

    @property
    def mean_sparsity(self) -> float:
        """Mean of ``sparsity`` over all rows (dense calls count as 0); NaN when nothing was recorded."""
        rows = self.rows
        return sum(r["sparsity"] for r in rows) / len(rows) if rows else float("nan")

    @property
    def map_reuse_share(self) -> float:
        """Share of the sparse calls (backend not dense) that reused an earlier call's block map instead of
        predicting one; NaN when no call was sparse."""
        sparse = [r for r in self.rows if r["backend"] != "dense"]
        return sum(bool(r.get("map_reused")) for r in sparse) / len(sparse) if sparse else float("nan")

    @property
    def total_attention_ms(self) -> float:
        return sum(r["attention_ms"] for r in self.rows)

    def by_step(self) -> Dict[int, float]:
        """Mean sparsity per denoising step."""
        return _mean_by(self.rows, "step")

    def by_layer(self) -> Dict[int, float]:
        """Mean sparsity per attention layer."""
        return _mean_by(self.rows, "layer")

    def reset(self) -> None:
        self._pending = []
        self._rows = []

    def __repr__(self) -> str:
        n = len(self)
        return f"SpargeRunStats(rows={n}, mean_sparsity={self.mean_sparsity:.3f})" if n else "SpargeRunStats(rows=0)"


def _mean_by(rows: List[dict], key: str) -> Dict[int, float]:
    groups: Dict[int, List[float]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row["sparsity"])
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def capture_cuda_graph(fn, warmup: int = 3) -> "torch.cuda.CUDAGraph":
    """``fn`` captured once in a CUDA graph after ``warmup`` calls on a side stream (Triton compiles and the caching
    allocator settles there), for timing a call's device work alone (``graph.replay``). Raises what capture raises
    (a host read inside ``fn`` fails it)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


__all__ = ["SpargeRunStats", "Timer", "capture_cuda_graph"]
