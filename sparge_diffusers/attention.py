"""`sparge_attn`: the public sparse attention call, its input checks and its backend dispatch.

Backends, chosen per call:
    ``"triton"``: fused prediction + block-sparse INT8/FP8 kernel on a CUDA GPU (when Triton and the kernels load).
    ``"reference"``: the pure-PyTorch algorithm of `sparge_diffusers.kernels.reference` (CPU, or any device
        where the Triton path is unavailable; logged once).
    ``"dense"``: ``torch.nn.functional.scaled_dot_product_attention``, the documented fallback for unsupported head
        dims, sequences below ``dense_below_seq_len`` and settings that keep every block in ``bf16`` precision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from ._logging import log_once
from .block_map import BlockMap, block_mask_from_lut
from .budget_guard import BudgetGuard, call_key
from .config import PRECISION_ERROR_FLOOR, SpargeConfig, _check_ranges
from .finite import FiniteCheck, raise_if_not_finite, skip_check
from .speed_rule import measuring_budget_loses, should_go_dense
from .kernels import reference

logger = logging.getLogger(__name__)

LAYOUTS = ("BHSD", "BSHD")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
KERNEL_HEAD_DIMS = (64, 128)


@dataclass(frozen=True)
class SpargeStats:
    """What one `sparge_attn` call did.

    Attributes:
        sparsity: fp32 ``[B, H]`` fraction of skipped block pairs per head (0 on the dense path).
        block_map: the kept blocks (None on the dense path).
        backend: ``"triton"``, ``"reference"`` or ``"dense"``.
        drop_mass: fp32 ``[B, H]`` drop masses the error budget used (None for other rules and the dense path).
    """

    sparsity: torch.Tensor
    block_map: Optional[BlockMap]
    backend: str
    drop_mass: Optional[torch.Tensor] = None

    @property
    def mean_sparsity(self) -> float:
        return float(self.sparsity.float().mean())


def sparge_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    config: Optional[SpargeConfig] = None,
    layout: str = "BHSD",
    scale: Optional[float] = None,
    return_stats: bool = False,
    keep_ranges: Optional[Sequence[Tuple[int, int]]] = None,
    layer: Optional[int] = None,
    guard: Optional[BudgetGuard] = None,
    finite_check: Optional[FiniteCheck] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, SpargeStats]]:
    """Sparse + quantized attention (SpargeAttn, arXiv 2502.18137), a drop-in for softmax attention.

    Args:
        q: ``[B, H, Sq, D]`` (``layout="BHSD"``) or ``[B, Sq, H, D]`` (``"BSHD"``); fp16, bf16 or fp32. Views with
            any strides are accepted.
        k, v: ``[B, H, Sk, D]`` / ``[B, Sk, H, D]``, same dtype and device as ``q``.
        config: the sparsity / precision setting; ``SpargeConfig()`` when None.
        layout: ``"BHSD"`` or ``"BSHD"``; the output has the layout of the input.
        scale: softmax scale, ``1/sqrt(D)`` when None.
        return_stats: also return a `SpargeStats`.
        keep_ranges: ``(start, end)`` token ranges whose rows and columns are always computed; overrides
            ``config.keep_token_ranges`` for this call (integrations pass the text tokens here).
        layer: the attention layer index, for a calibrated budget (``config.calibration``).
        guard: per-layer state across calls (`BudgetGuard`): the error budget's drop masses are reused for a
            few calls and measured again when they are due, and with ``config.map_reuse`` > 1 its last block map
            serves the next calls instead of a new prediction. Without one (and without a calibration) every call
            with ``target_error`` measures its drop masses on sampled exact rows (about 1% of the attention work).
        finite_check: with ``config.check_finite``, where the NaN / inf check of q, k and v goes: None checks now
            (one host synchronization per call); a `FiniteCheck` queues it on the device, and its owner reads it
            later (`sparge_diffusers.finite`; the diffusers integration reads it once per transformer forward).
    Returns:
        the attention output shaped and typed like ``q``, and the stats when asked.
    Raises:
        ValueError: on mismatched shapes, devices or dtypes, an empty head dim, an unknown layout, NaN/inf inputs
            (``config.check_finite`` without a ``finite_check``), or a non-positive scale.
    """
    config = SpargeConfig() if config is None else config
    if not isinstance(config, SpargeConfig):
        raise ValueError(f"config must be a SpargeConfig or None, got {type(config).__name__}")
    q, k, v = _to_bhsd(q, k, v, layout)
    _check_inputs(q, k, v, config)
    head_dim = q.shape[-1]
    scale = _check_scale(scale, head_dim)
    ranges = config.keep_token_ranges if keep_ranges is None else _check_ranges("keep_ranges", keep_ranges)

    selection = config.selection
    backend = _choose_backend(q, k, config, _forced_tokens(ranges, k.shape[-2]))
    drop = None
    stored = None  # a block map of an earlier call that this one attends instead of predicting (`BudgetGuard`)
    if selection.rule == "budget" and backend != "dense":
        _warn_below_floor(config)
        drop = _known_drop_mass(config, layer, guard, call_key(q, k), q.device)
        if (drop is None and guard is None and q.is_cuda and config.speed_rule == "auto"
                and measuring_budget_loses(q.device, k.shape[-2])):
            log_once(logger, "budget-measure-dense", "sparge_attn: measuring the error budget in every call costs "
                     "more than it saves below the measured length on this GPU; using dense attention (pass a "
                     "BudgetGuard, use apply_sparge, or give a calibration)", level=logging.INFO)
            backend = "dense"
    reuse_maps = (guard is not None and config.map_reuse_calls > 1 and backend != "dense" and not selection.keeps_all
                  and not torch.compiler.is_compiling() and (backend != "triton" or _triton_takes_a_map(q, k, v)))
    if reuse_maps and (selection.rule != "budget" or drop is not None):  # a call measuring its budget predicts
        stored = guard.reuse_map(call_key(q, k), config.map_reuse_calls, backend)
    if backend != "dense" and config.check_finite and not skip_check():
        # the quantized path can turn a NaN into finite garbage; dense SDPA propagates it, so it is not checked
        if finite_check is None:
            raise_if_not_finite(q, k, v)
        else:
            finite_check.add(layer, q, k, v)
    if backend == "dense":
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
        stats = SpargeStats(torch.zeros(q.shape[:2], device=q.device), None, "dense") if return_stats else None
    else:
        if (backend == "triton" and selection.rule == "budget" and guard is not None and drop is None
                and not return_stats and torch.compiler.is_compiling()):
            # compiled: the guard cannot run in the trace; one opaque op runs it with the launch (`compiled_guard`)
            from .compiled_guard import guarded_sparge_attention
            from .kernels.dispatch import flat_ranges

            out = guarded_sparge_attention(
                *_pad_head_dim(q, k, v), float(scale), config.block_m, config.block_n, float(selection.value),
                config.sim_threshold, config.pv_threshold, config.precision, flat_ranges(ranges),
                config.predictor, guard.key, config.map_reuse_calls)[..., :head_dim]
        elif backend == "triton":
            from .kernels.dispatch import sparge_attention_triton

            padded = _pad_head_dim(q, k, v)
            out, lut, counts, used = sparge_attention_triton(
                *padded, scale=scale, block_m=config.block_m, block_n=config.block_n, selection=selection,
                sim_threshold=config.sim_threshold, pv_threshold=config.pv_threshold, precision=config.precision,
                keep_ranges=ranges, predictor=config.predictor, drop_mass=drop, block_map=stored,
            )
            out = out[..., :head_dim]
            block_mask = block_mask_from_lut(lut, counts) if return_stats else None
            predicted = (lut, counts)
        else:
            out = reference.naive_sparge_attention(
                q, k, v, scale=scale, block_m=config.block_m, block_n=config.block_n, topk=config.topk,
                cdf_threshold=config.cdf_threshold, sim_threshold=config.sim_threshold,
                pv_threshold=config.pv_threshold, precision=config.precision, keep_ranges=ranges,
                predictor=config.predictor, target_error=config.target_error, drop_mass=drop,
                return_drop_mass=True, block_mask=stored,
            )
            out, block_mask, used = out
            predicted = block_mask
        if selection.rule == "budget" and guard is not None and drop is None and not torch.compiler.is_compiling():
            guard.update(call_key(q, k), used)
        if reuse_maps and stored is None:
            guard.store_map(call_key(q, k), backend, predicted)
        out = out.to(q.dtype)
        stats = None
        if return_stats:
            block_map = BlockMap(block_mask, config.block_m, config.block_n, q.shape[-2], k.shape[-2])
            stats = SpargeStats(block_map.sparsity_per_head(), block_map, backend,
                                used if selection.rule == "budget" else None)
    if layout == "BSHD":
        out = out.transpose(1, 2)
    return (out, stats) if return_stats else out


def _triton_takes_a_map(q, k, v) -> bool:
    """The Triton path attends a given block map in eager inference only (`kernels.dispatch.eager_launch`)."""
    from .kernels.dispatch import eager_launch

    return eager_launch(q, k, v)


def _known_drop_mass(config: SpargeConfig, layer: Optional[int], guard: Optional[BudgetGuard], key,
                     device) -> Optional[torch.Tensor]:
    """Drop masses that need no measuring in this call: calibrated for this layer, or the guard's still fresh
    ones; None means measure them."""
    if config.calibration is not None and layer is not None:
        from .calibration import load_calibration

        calibrated = load_calibration(config.calibration).drop_mass(layer, config.target_error, *key[:2],
                                                                    device=device)
        if calibrated is not None:
            return calibrated
    if guard is not None and not torch.compiler.is_compiling():
        return guard.reuse(key)
    return None


def _warn_below_floor(config: SpargeConfig) -> None:
    floor = PRECISION_ERROR_FLOOR[config.precision]
    if config.target_error < floor:
        log_once(logger, f"floor:{config.precision}:{config.target_error}", "sparge_attn: target_error=%.3g is below "
                 "the error floor of precision=%r (about %.3g relative L1 with every block kept); the budget bounds "
                 "the selection error only, quantization adds its own", config.target_error, config.precision, floor,
                 level=logging.WARNING)


def _to_bhsd(q, k, v, layout: str):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D ({layout}), got shape {tuple(x.shape)}")
    if layout == "BSHD":
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return q, k, v


def _check_inputs(q, k, v, config: SpargeConfig) -> None:
    if q.dtype not in DTYPES:
        raise ValueError(f"q must be float16, bfloat16 or float32, got {q.dtype}")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but q has {q.dtype}; q, k and v must share one dtype")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; q, k and v must share one device")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(
            f"q and k must agree on batch and heads, got q {tuple(q.shape)} and k {tuple(k.shape)} (as [B, H, S, D])"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dim, got {q.shape[-1]} and {k.shape[-1]}")
    if q.shape[-1] == 0:
        raise ValueError("head dim (last dim of q, k, v) must be >= 1, got 0")
    if q.shape[0] == 0 or q.shape[1] == 0 or q.shape[-2] == 0 or k.shape[-2] == 0:
        raise ValueError(
            f"batch, heads and sequence lengths must be >= 1, got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )


def _check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return head_dim ** -0.5
    if not isinstance(scale, (int, float)) or not (scale > 0) or scale == float("inf"):
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    return float(scale)


def _pad_head_dim(q, k, v):
    """Zero-pad the head dim up to the next kernel head dim (zeros change neither scores nor kept outputs)."""
    head_dim = q.shape[-1]
    target = next(d for d in KERNEL_HEAD_DIMS if d >= head_dim)
    if target == head_dim:
        return q, k, v
    return tuple(torch.nn.functional.pad(x, (0, target - head_dim)) for x in (q, k, v))


def _forced_tokens(ranges, seq_len: int) -> int:
    """Tokens of ``seq_len`` inside the always-computed ranges (overlaps counted once)."""
    covered, end_so_far = 0, 0
    for start, end in sorted(ranges):
        start, end = max(start, end_so_far), min(end, seq_len)
        if end > start:
            covered += end - start
            end_so_far = end
    return covered


def _choose_backend(q: torch.Tensor, k: torch.Tensor, config: SpargeConfig, forced_tokens: int = 0) -> str:
    head_dim = q.shape[-1]
    if head_dim > max(KERNEL_HEAD_DIMS) or (head_dim not in KERNEL_HEAD_DIMS and config.head_dim_fallback == "dense"):
        log_once(logger, f"head_dim{head_dim}", "sparge_attn: head dim %d is not supported by the sparse kernels; "
                 "using dense scaled_dot_product_attention", head_dim)
        return "dense"
    if k.shape[-2] < config.dense_below_seq_len:
        return "dense"
    if config.is_dense and config.precision == "bf16":
        return "dense"
    if q.is_cuda:
        choice, reason = _cuda_backend(q, k, config, forced_tokens)
        if reason is not None:
            log_once(logger, f"triton:{reason}", "sparge_attn: Triton kernels unavailable (%s); using the PyTorch "
                     "reference path, which is correct but slow", reason)
        return choice
    return "reference"


# (device, head dim, key length, batch * heads, forced tokens, selection, speed rule) -> (backend, reason the Triton
# path is unavailable)
_CUDA_BACKENDS: dict = {}


def _cuda_backend(q: torch.Tensor, k: torch.Tensor, config: SpargeConfig,
                  forced_tokens: int = 0) -> Tuple[str, Optional[str]]:
    """The speed rule and the Triton check of a CUDA call, memoized per geometry in eager mode (they read the device
    capability and the crossover table: about 10-20 µs of Python a call)."""
    compiling = torch.compiler.is_compiling()
    key = (q.device, q.shape[-1], k.shape[-2], q.shape[0] * q.shape[1], forced_tokens, config.selection,
           config.speed_rule)
    if not compiling and key in _CUDA_BACKENDS:
        return _CUDA_BACKENDS[key]
    from .kernels.dispatch import triton_unavailable_reason

    if should_go_dense(q, k, config, forced_tokens):
        result = ("dense", None)
    else:
        reason = triton_unavailable_reason(q)
        result = ("triton", None) if reason is None else ("reference", reason)
    if not compiling:
        if len(_CUDA_BACKENDS) >= 4096:
            _CUDA_BACKENDS.clear()
        _CUDA_BACKENDS[key] = result
    return result
