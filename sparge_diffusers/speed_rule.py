"""Never slower than stock: calls where the sparse path cannot beat dense cuDNN attention go dense.

The whole sparse call (prediction, quantization, kernel, Python launch cost in eager mode) beats cuDNN SDPA only
above some amount of work and sparsity. Those crossovers were measured per GPU class (`scripts/bench_crossover.py`)
and are committed as small tables (``sparge_diffusers/crossover/sm90.json``: for each head dim and each measured call,
key length × batch·heads, the least sparsity at which the eager sparse call was faster). A call's work is
``batch · heads · Sq · Sk``: the launch cost of the sparse path is fixed, so the same length with half the heads
(Flux.1-dev's batch 1 against a CFG batch of 2) may lose where the larger call wins. With
``SpargeConfig(speed_rule="auto")`` (the default) a CUDA call goes to dense SDPA unless some measured call that was
no longer and did no more work than it won at a sparsity the call reaches:

- its key length is below the shortest measured length, or its work below the least measured work;
- its sparsity is below every crossover that applies. Top-k's sparsity is known before prediction (``1 − topk``,
  lowered for the always-computed text); τ and ε can keep every block, so they count as sparsity 0 and go sparse
  only where the sparse path wins even with a full mask (the quantized kernel beats cuDNN at long lengths);
- its head dim is padded (e.g. 96 → 128) and the sparsity does not pay for the padding as well.

A ``target_error`` call that has to measure its drop masses itself (no `BudgetGuard`, no calibration) also goes
dense below the shortest length where such calls were measured faster than cuDNN (`measuring_budget_loses`). The eager
table is conservative under ``torch.compile``, whose launches cost less (the custom op's own launches still run in
Python).
``speed_rule="sparse"`` always runs the sparse path (benchmarks and tests do).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch

from ._logging import log_once

logger = logging.getLogger(__name__)

SPEED_RULES = ("auto", "sparse")
_TABLE_DIR = os.path.join(os.path.dirname(__file__), "crossover")


def _load_measurements() -> Dict[str, dict]:
    data = {}
    for name in sorted(os.listdir(_TABLE_DIR)):
        if name.endswith(".json"):
            with open(os.path.join(_TABLE_DIR, name)) as handle:
                data[name[:-len(".json")]] = json.load(handle)
    return data


Entry = Tuple[int, int, Optional[float]]  # (key length, batch * heads, least winning sparsity or None)


def _table_of(data: dict) -> Dict[int, List[Entry]]:
    return {int(d): sorted((int(s), int(bh), None if w is None else float(w)) for s, bh, w in entries)
            for d, entries in data["min_sparsity"].items()}


# Read once at import, not at the first call: torch.compile traces the speed rule, and a file read inside the trace
# is a graph break (a transformer compiled before any eager call broke its graph at the first attention layer).
_MEASUREMENTS: Dict[str, dict] = _load_measurements()
_TABLES: Dict[str, Dict[int, List[Entry]]] = {
    capability: _table_of(data) for capability, data in _MEASUREMENTS.items()}


def _measurements(capability: str) -> Optional[dict]:
    """The committed measurement file of a GPU class (``crossover/<capability>.json``), or None."""
    return _MEASUREMENTS.get(capability)


# GPU class per CUDA device index, read once per device (`prime_capability`): a capability query traced by
# torch.compile stays in the graph and runs at every forward.
_CAPABILITIES: Dict[int, str] = {}


def prime_capability(device) -> None:
    """Record the GPU class of a CUDA ``device`` now (eagerly), so that compiled forwards only look it up."""
    device = device if isinstance(device, torch.device) else torch.device(device)
    if device.type == "cuda" and not torch.compiler.is_compiling():
        _capability_for(device)


def _capability_for(device: torch.device) -> str:
    """The GPU class whose measurements apply to ``device``: its own, else sm90 (H100/H200; logged once)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    known = _CAPABILITIES.get(index)
    if known is not None:
        return known
    major, minor = torch.cuda.get_device_capability(index)
    capability = f"sm{major}{minor}"
    if _measurements(capability) is None:
        if not torch.compiler.is_compiling():  # logging inside a trace is a graph break
            log_once(logger, f"crossover:{capability}", "speed_rule: no crossover table for %s; using the sm90 "
                     "(H100/H200) table", capability, level=logging.INFO)
        capability = "sm90"
    _CAPABILITIES[index] = capability
    return capability


def crossover_table(capability: str) -> Optional[Dict[int, List[Entry]]]:
    """``{head_dim: [(seq_len, batch_heads, least winning sparsity or None), ...]}`` measured on a GPU class
    (``"sm90"``), or None when no table was measured for it."""
    return _TABLES.get(capability)


def _measured_budget_min_len(capability: str) -> Optional[int]:
    data = _measurements(capability)
    entry = None if data is None else data.get("budget_measured_call")
    return None if entry is None else int(entry["min_seq_len"])


def measuring_budget_loses(device: torch.device, seq_len_k: int) -> bool:
    """True when a ``target_error`` call that must measure its drop masses in the call (no `BudgetGuard`, no
    calibration) was measured slower than dense cuDNN at this key length on this GPU class."""
    min_len = _measured_budget_min_len(_capability_for(device))
    return min_len is not None and seq_len_k < min_len


def least_winning_sparsity(table, head_dim: int, seq_len: int, batch_heads: int) -> Optional[float]:
    """The crossover sparsity for a call of ``batch_heads`` (batch × heads) attention problems of ``seq_len`` keys:
    the least sparsity that won at a measured call no longer and with no more work (None: cannot win)."""
    kernel_dim = 64 if head_dim <= 64 else 128
    work = batch_heads * seq_len * seq_len
    # a plain loop: torch.compile traces this, and dynamo has no ``min(..., default=)``
    winning = None
    for s, bh, w in table.get(kernel_dim, []):
        if w is not None and s <= seq_len and bh * s * s <= work and (winning is None or w < winning):
            winning = w
    if winning is not None and head_dim < kernel_dim:
        # padding costs kernel_dim / head_dim more work than dense at the true head dim: the kept share must
        # shrink by that factor too
        winning = 1.0 - (1.0 - winning) * head_dim / kernel_dim
    return winning


def sparse_can_win(table, head_dim: int, seq_len: int, batch_heads: int, expected_sparsity: float) -> bool:
    winning = least_winning_sparsity(table, head_dim, seq_len, batch_heads)
    return winning is not None and expected_sparsity >= winning


def expected_sparsity(config, forced_share: float = 0.0) -> float:
    """The sparsity a call of ``config`` is sure to reach before prediction: top-k's ``1 − topk`` over the blocks
    it selects, 0 for τ and ε (they may keep every block). ``forced_share``: the share of the tokens always
    computed (the text): their query rows are dense and their key columns always kept, so top-k's ``1 − topk``
    applies to about ``(1 − forced_share)²`` of the blocks (Flux.1-dev 1024²: 512 of 4,608 tokens, topk 0.5 → 0.40)."""
    selection = config.selection
    if selection.rule != "topk":
        return 0.0
    return (1.0 - selection.value) * (1.0 - min(max(forced_share, 0.0), 1.0)) ** 2


def dense_by_table(table, head_dim: int, seq_len_k: int, batch_heads: int, config, forced_share: float = 0.0) -> bool:
    """True when ``table`` (`crossover_table`) says dense cuDNN attention beats the sparse call of ``config`` at this
    head dim, key length and batch × heads (``forced_share``: `expected_sparsity`). The one place the rule is decided:
    `should_go_dense` (per call) and `SpargeContext.reorder_pays` (per forward: no token reorder when every call would
    go dense) both ask it."""
    if config.speed_rule != "auto" or table is None:
        return False
    return not sparse_can_win(table, head_dim, seq_len_k, batch_heads, expected_sparsity(config, forced_share))


def dense_for(device: torch.device, head_dim: int, seq_len_k: int, batch_heads: int, config,
              forced_share: float = 0.0) -> bool:
    """`dense_by_table` with the table of ``device``'s GPU class; False off CUDA (the rule is measured on GPUs)."""
    device = device if isinstance(device, torch.device) else torch.device(device)  # as given under torch.compile
    if device.type != "cuda":
        return False
    return dense_by_table(crossover_table(_capability_for(device)), head_dim, seq_len_k, batch_heads, config,
                          forced_share)


def should_go_dense(q: torch.Tensor, k: torch.Tensor, config, forced_tokens: int = 0) -> bool:
    """True when the measured crossover says dense cuDNN attention is faster for this call (CUDA only); ``q``, ``k``
    are ``[B, H, S, D]``; ``forced_tokens``: tokens always computed (the text)."""
    seq_len_k = k.shape[-2]
    return dense_for(q.device, q.shape[-1], seq_len_k, q.shape[0] * q.shape[1], config,
                     forced_tokens / seq_len_k if seq_len_k else 0.0)


__all__ = ["SPEED_RULES", "crossover_table", "prime_capability", "dense_by_table", "dense_for", "least_winning_sparsity",
           "expected_sparsity", "measuring_budget_loses", "should_go_dense", "sparse_can_win"]
