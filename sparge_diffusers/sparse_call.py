"""The one place where the diffusers integration calls `sparge_attn`, with the per-layer policy and statistics.

Both ways in (copied processors and the diffusers attention backend) end here: `layer_policy` decides whether a call
is sparse or dense (``dense_steps``, ``dense_layers``), `attend` runs `sparge_attn` on one attention sequence (with the
per-layer reorder fallback), and `record` appends a statistics row. Per-layer arguments for the kernel (calibrated
budgets, error-guard state) belong in `attend`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .attention import sparge_attn
from .context import LayerCall
from .run_stats import Timer


def layer_policy(layer: LayerCall) -> str:
    """``"dense_step"``, ``"dense_layer"`` or ``"sparse"`` for this call of the layer."""
    context = layer.context
    if context.current.dense_step:
        return "dense_step"
    dense_layers = context.config.dense_layers
    if dense_layers and layer.index in dense_layers:
        return "dense_layer"
    return "sparse"


def text_range(layer: LayerCall, seq_len: int, hint: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """``(start, end)`` of the text in an attention sequence of ``seq_len`` tokens of this layer.

    The geometry hook is the source (visual token count and text side of this forward); ``hint`` (or the layer's
    ``text_hint``) is used only when no hook ran (standalone processors).
    """
    cur = layer.context.current
    if cur.active:
        return cur.text_range(seq_len)
    hint = hint if hint is not None else layer.text_hint
    if hint is None:
        return (0, 0)
    start, end = hint
    return (max(0, min(start, seq_len)), max(0, min(end, seq_len)))


def keep_ranges_for(layer: LayerCall, text_start: int, text_end: int) -> Tuple[Tuple[int, int], ...]:
    """The text range (clipped by ``SpargeGeometry.text_len``, always computed) plus ``config.keep_token_ranges``."""
    context = layer.context
    ranges = tuple(context.config.keep_token_ranges)
    if text_end > text_start:
        keep = context.text_keep_len(text_end - text_start)
        ranges = ((text_start, text_start + keep),) + ranges
    return ranges


def _layer_permutation(layer: LayerCall, visual_offset: int, total_len: int, device):
    """Per-layer fallback (``reorder_at="layer"``): permutation of the attention sequence, or None."""
    context = layer.context
    cur = context.current
    if context.reorder_at != "layer" or cur.grid is None or context.reorder_kind == "rowmajor":
        return None
    if not context.reorder_pays(device) or visual_offset + cur.num_visual > total_len:
        return None
    from .token_order import BoundaryOrder

    return BoundaryOrder(cur.grid, context.reorder_kind, cur.num_visual, device, offset=visual_offset)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer: LayerCall, layout: str,
           keep_ranges: Sequence[Tuple[int, int]], visual_offset: int, scale: Optional[float] = None):
    """`sparge_attn` on one attention sequence of ``layer``, with the per-layer reorder fallback when enabled.

    Args:
        q, k, v: ``[B, H, S, D]`` (``layout="BHSD"``) or ``[B, S, H, D]`` (``"BSHD"``).
        keep_ranges: token ranges always computed (the text), in the positions of ``q`` / ``k``.
        visual_offset: position of the first visual token (for the per-layer reorder).
    Returns:
        ``(out, sparsity, backend)``: ``sparsity`` is a 0-d fp32 tensor (mean over batch and heads) and ``backend``
        the backend name, both None when stats are off.
    """
    context = layer.context
    seq_dim = 2 if layout == "BHSD" else 1
    perm = None
    if q.shape[seq_dim] == k.shape[seq_dim]:
        perm = _layer_permutation(layer, visual_offset, q.shape[seq_dim], q.device)
    if perm is not None:
        q, k, v = (perm.apply(x, dim=seq_dim) for x in (q, k, v))
    recorder = context.calibration_recorder
    want_stats = context.collecting() or recorder is not None
    eager = not torch.compiler.is_compiling()  # a traced read of the counter would guard the graph on its value
    maps_before = layer.guard.maps_reused if eager else 0
    result = sparge_attn(q, k, v, config=context.config, layout=layout, keep_ranges=keep_ranges, scale=scale,
                         return_stats=want_stats, layer=layer.index,
                         guard=None if recorder is not None or layer.shared else layer.guard,
                         finite_check=context.finite)
    if eager:
        layer.map_reused = layer.guard.maps_reused != maps_before
    out, stats = result if want_stats else (result, None)
    if recorder is not None and stats is not None and stats.drop_mass is not None:
        recorder.add(layer.index, stats.drop_mass)
    if perm is not None:
        out = perm.revert(out, dim=seq_dim)
    if stats is None:
        return out, None, None
    return out, stats.sparsity.float().mean(), stats.backend


def start_timer(layer: LayerCall, device) -> Optional[Timer]:
    return Timer(device) if layer.context.collecting() else None


def record(layer: LayerCall, timer: Optional[Timer], *, policy: str, sparsities: Sequence, backend: Optional[str],
           batch: int, heads: int, seq_len: int, text_len: int) -> None:
    """Append one row to the context's stats (no-op when stats are off or while compiling)."""
    if timer is None:
        return
    timer.stop()
    context = layer.context
    cur = context.current
    values = [s for s in sparsities if s is not None]
    sparsity = torch.stack(values).mean() if values else None
    reordered = cur.grid is not None and context.reorder_kind == "hilbert" and (
        cur.permutation is not None or context.reorder_at == "layer")
    row = {
        "step": cur.step, "generation": cur.generation, "forward": cur.forward_index, "layer": layer.index,
        "name": layer.name, "backend": backend or "dense", "policy": policy, "batch": batch, "heads": heads,
        "seq_len": seq_len, "text_len": text_len, "reorder": f"hilbert@{context.reorder_at}" if reordered else "none",
        "map_reused": layer.map_reused and backend not in (None, "dense"),
    }
    context.stats.record(row, sparsity, timer)


__all__ = ["attend", "keep_ranges_for", "layer_policy", "record", "start_timer", "text_range"]
