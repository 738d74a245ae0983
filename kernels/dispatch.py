"""The fused Triton path of `sparge_attn`: availability check, launch sequence and the ``torch.library`` op.

Launch sequence for one call (q, k, v ``[B, H, S, D]``, any strides):
    1. `quantize.prepare_fwd` (three launches): INT8 Q and K, FP8 V (transposed; an FP16 copy of V on GPUs without
       FP8), and the predictor's block statistics (pooled means and self-similarities, or the "lse" block
       log-masses; for "mixed" mixed with the exact block masses of sampled query rows, two more launches);
    2. `predict.select_blocks_fwd`: the kept-block list (after one small matmul of the pooled means for "sparge");
    3. `block_sparse_attn.block_sparse_attn_fwd`.
The whole sequence is registered as the custom op ``sparge_diffusers::sparge_attention`` with a fake (meta)
implementation, so ``torch.compile`` traces through it without a graph break.
"""

from __future__ import annotations

import contextlib
import functools
from typing import List, Optional, Sequence, Tuple

import torch

from ._lazy import triton_device_reason
from .budget import budget_drop_mass
from .geometry import block_token_counts, num_blocks
from .predict.naive import check_predictor
from .selection import MODE_CDF, MODE_TOPK, Selection

KERNEL_HEAD_DIMS = (64, 128)


def triton_unavailable_reason(q: torch.Tensor) -> Optional[str]:
    """None when the Triton path can run on ``q``'s device, else a short reason."""
    return triton_device_reason(q.device, _kernel_modules)


_MODULES: list = []


def _kernel_modules():
    # memoized in a list, not functools.lru_cache: torch.compile traces this (through `triton_unavailable_reason`)
    # and warns about every lru_cache wrapper it meets
    if not _MODULES:
        from .block_sparse_attn import kernel as block_sparse_attn
        from .predict import kernel as predict
        from .quantize import kernel as quantize

        _MODULES.append((quantize, predict, block_sparse_attn))
    return _MODULES[0]


@functools.lru_cache(maxsize=16)
def has_fp8(device_index: int) -> bool:
    """FP8 e4m3 tensor cores (sm89 Ada, sm90 Hopper and newer)."""
    return torch.cuda.get_device_capability(device_index) >= (8, 9)


def sparge_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    block_m: int,
    block_n: int,
    selection: Selection,
    sim_threshold: Optional[float],
    pv_threshold: Optional[float],
    precision: str,
    keep_ranges: Sequence[Tuple[int, int]],
    predictor: str,
    drop_mass: Optional[torch.Tensor] = None,
    block_map: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predict + quantize + block-sparse attention on the GPU.

    Args:
        q: ``[B, H, Sq, D]``; k, v: ``[B, H, Sk, D]`` (any strides), D in (64, 128) (callers pad other head dims).
        selection: the resolved rule (`selection.resolve_selection`).
        drop_mass: fp32 ``[B, H]`` per-head drop masses for the ``"budget"`` rule (calibrated, or reused from an
            earlier call); None measures them in this call (`budget.budget_drop_mass`).
        block_map: ``(lut, counts)`` of an earlier call of this shape, attended instead of predicting a map (a
            reused map, `budget_guard.BudgetGuard.reuse_map`); used in eager inference only (elsewhere the call
            predicts its own). The returned ``lut`` and ``counts`` are then these tensors.
    Returns:
        ``out`` ``[B, H, Sq, D]`` in q's dtype, contiguous or in q's transposed ``[B, Sq, H, D]`` layout
        (`output_like`); ``lut`` int32 ``[B, H, NQ, NK]`` (entries past ``counts`` unspecified); ``counts`` int32
        ``[B, H, NQ]``; ``drop`` fp32 ``[B, H]``: the drop masses used (unspecified values for rules without one:
        allocated, never written, which saves a fill launch per call).
    """
    if eager_launch(q, k, v):
        # eager inference: the launch sequence itself, without the custom op's dispatch round trip (tens of µs a
        # call); torch.compile and autograd see the op
        on_other_gpu = q.is_cuda and q.device.index != torch.cuda.current_device()
        with torch.cuda.device(q.device) if on_other_gpu else contextlib.nullcontext():
            return sparge_attention_launch(q, k, v, scale, block_m, block_n, selection, sim_threshold, pv_threshold,
                                           precision, flat_ranges(keep_ranges), predictor, drop_mass, block_map)
    return torch.ops.sparge_diffusers.sparge_attention(
        q, k, v, scale, block_m, block_n, selection.rule, selection.value, sim_threshold, pv_threshold, precision,
        flat_ranges(keep_ranges), predictor, drop_mass,
    )


def eager_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """True when the op can be skipped: not traced by torch.compile and no input needs a gradient. Only such calls
    attend a given ``block_map`` (`sparge_attention_triton`)."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))


def flat_ranges(keep_ranges: Sequence[Tuple[int, int]]) -> List[int]:
    """``[(start0, end0), (start1, end1), ...]`` as the op takes it: ``[start0, end0, start1, end1, ...]``."""
    return [bound for pair in keep_ranges for bound in pair]


@torch.library.custom_op("sparge_diffusers::sparge_attention", mutates_args=())
def _sparge_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    block_m: int,
    block_n: int,
    rule: str,
    rule_value: float,
    sim_threshold: Optional[float],
    pv_threshold: Optional[float],
    precision: str,
    keep_ranges: List[int],
    predictor: str,
    drop_mass: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    device_scope = torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()
    with device_scope:
        return sparge_attention_launch(q, k, v, scale, block_m, block_n, Selection(rule, rule_value), sim_threshold,
                                       pv_threshold, precision, keep_ranges, predictor, drop_mass)


def sparge_attention_launch(q, k, v, scale, block_m, block_n, selection, sim_threshold, pv_threshold, precision,
                            keep_ranges, predictor, drop_mass=None, block_map=None):
    """The launch sequence behind the custom op (callable directly, e.g. under ``TRITON_INTERPRET=1``).

    ``keep_ranges`` is flat (``[start0, end0, start1, end1, ...]``), as the op takes it. ``block_map`` (``(lut,
    counts)`` of an earlier call of the same shape) skips the prediction: only quantization and attention run.

    Selection follows `reference.naive_sparge_attention` through the same `selection.Selection`. The predictors run
    in Triton: ``"sparge"`` as pooled scores + `predict.select_blocks_fwd`, ``"lse"`` as the block log-masses of
    `quantize.prepare_fwd` (ground truth `predict.naive.naive_lse_block_logits`) + the same selection kernel,
    ``"mixed"`` as those log-masses mixed with sampled exact rows (`predict.kernel.mixed_block_logits_fwd`). The
    error budget measures its per-head drop masses on sampled exact rows (`budget.budget_drop_mass`: four Triton
    launches on CUDA, `budget.kernel`) from the predicted block masses, unless ``drop_mass`` gives them.
    """
    quantize, predict, attn = _kernel_modules()
    check_predictor(predictor)
    ranges = list(zip(keep_ranges[0::2], keep_ranges[1::2]))
    b, h, sq, d = q.shape
    sk = k.shape[2]
    keeps_all = selection.keeps_all or predictor == "full"
    reused = (block_map is not None and not keeps_all
              and tuple(block_map[0].shape) == (b, h, num_blocks(sq, block_m), num_blocks(sk, block_n)))
    quantized = precision != "bf16"
    pv_mode = _pv_mode(precision, q.device)
    use_fp8 = quantized and pv_mode == attn.PV_FP8
    stats = "none" if keeps_all or reused else ("pooled" if predictor == "sparge" else "lse")
    prepared = quantize.prepare_fwd(q, k, v, block_m=block_m, block_n=block_n, quantize_qk=quantized, v_fp8=use_fp8,
                                    stats=stats, q_scale_mult=scale * attn.LOG2E, softmax_scale=scale)
    if predictor == "mixed" and stats != "none":
        prepared = prepared._replace(block_logits=predict.mixed_block_logits_fwd(
            prepared.block_logits, q, k, block_m=block_m, block_n=block_n, scale=scale))
    common = dict(seq_len_q=sq, seq_len_k=sk, block_m=block_m, block_n=block_n, scale=scale, keep_ranges=ranges)
    used_drop = _no_drop(b, h, q.device)
    if keeps_all:
        lut, counts = full_lut(b, h, sq, sk, block_m, block_n, q.device)
    elif reused:
        lut, counts = block_map
        if drop_mass is not None:
            used_drop = drop_mass.float().clone()
    else:
        mode = selection.kernel_mode(predictor)
        topk = selection.value if mode == MODE_TOPK else None
        cdf = selection.value if mode == MODE_CDF else None
        drop = selection.fixed_drop_mass()
        if selection.rule == "budget":
            if drop_mass is None:
                drop_mass = _budget(q, k, v, prepared, predictor, selection.value, scale, ranges, sim_threshold,
                                    block_m, block_n)
            drop = drop_mass.float()
            used_drop = drop.clone()  # an op output must not alias its input
        if stats == "pooled":
            lut, counts = predict.select_blocks_fwd(prepared.q_means, prepared.k_means, prepared.q_sims,
                                                    prepared.k_sims, topk=topk, cdf_threshold=cdf,
                                                    sim_threshold=sim_threshold, drop_mass=drop, **common)
        else:
            lut, counts = predict.select_blocks_fwd(None, None, None, None, topk=topk, cdf_threshold=None,
                                                    sim_threshold=None, block_logits=prepared.block_logits,
                                                    drop_mass=drop, **common)
        # the predictor's statistics are spent: free them before the output is allocated (the allocator can reuse
        # their blocks for it)
        prepared = prepared._replace(q_means=None, q_sims=None, k_means=None, k_sims=None, block_logits=None)

    out = output_like(q)
    kwargs = dict(seq_len_q=sq, seq_len_k=sk, block_m=block_m, block_n=block_n, pv_mode=pv_mode,
                  softmax_scale=scale, pv_threshold=pv_threshold)
    if not quantized:
        attn.block_sparse_attn_fwd(q, k, v, lut, counts, out, **kwargs)
        return out, lut, counts, used_drop
    quantized_qk = dict(q_scale=prepared.q_scale, k_scale=prepared.k_scale, **kwargs)
    if use_fp8:
        attn.block_sparse_attn_fwd(prepared.q_int8, prepared.k_int8, prepared.v_fp8, lut, counts, out,
                                   v_scale=prepared.v_scale, v_transposed=True, **quantized_qk)
    else:
        attn.block_sparse_attn_fwd(prepared.q_int8, prepared.k_int8, padded_fp16(v, block_n), lut, counts, out,
                                   **quantized_qk)
    return out, lut, counts, used_drop


def _no_drop(b: int, h: int, device) -> torch.Tensor:
    # an op output of fixed shape that nobody reads for rules without a drop mass: no fill kernel
    return torch.empty((b, h), dtype=torch.float32, device=device)


def _budget(q, k, v, prepared, predictor, target_error, scale, ranges, sim_threshold, block_m, block_n):
    """Per-head drop masses of the error budget from the predicted block masses of `quantize.prepare_fwd`."""
    sq, sk = q.shape[2], k.shape[2]
    if predictor != "sparge":  # lse, or the mixed log-masses
        probs = torch.softmax(prepared.block_logits, dim=-1)
    else:
        counts = block_token_counts(sk, block_n, q.device)
        logits = torch.matmul(prepared.q_means, prepared.k_means.transpose(-1, -2)) * scale + torch.log(counts)
        probs = torch.softmax(logits, dim=-1)
    _, predict, _ = _kernel_modules()
    # the selection kernel's own forced blocks (cached per geometry and device), not a second derivation per call
    forced_rows = predict.forced_blocks(ranges, sq, block_m, q.device).bool()
    forced_cols = predict.forced_blocks(ranges, sk, block_n, k.device).bool()
    if predictor == "sparge" and sim_threshold is not None:
        forced_rows = forced_rows | (prepared.q_sims < sim_threshold)
        forced_cols = forced_cols | (prepared.k_sims < sim_threshold)
    return budget_drop_mass(q, k, v, probs, target_error=target_error, block_m=block_m, block_n=block_n,
                            scale=scale, forced_rows=forced_rows, forced_cols=forced_cols)


@_sparge_attention_op.register_fake
def _sparge_attention_fake(q, k, v, scale, block_m, block_n, rule, rule_value, sim_threshold, pv_threshold,
                           precision, keep_ranges, predictor, drop_mass):
    b, h, sq, d = q.shape
    nq, nk = num_blocks(sq, block_m), num_blocks(k.shape[2], block_n)
    out = output_like(q)
    return (out, q.new_empty((b, h, nq, nk), dtype=torch.int32), q.new_empty((b, h, nq), dtype=torch.int32),
            q.new_empty((b, h), dtype=torch.float32))


def output_like(q: torch.Tensor) -> torch.Tensor:
    """The attention output ``[B, H, Sq, D]`` in q's memory layout: a transposed ``[B, Sq, H, D]`` when q is one (the
    layout diffusers' attention dispatch passes), so that the caller's ``transpose(1, 2).flatten(2, 3)`` is a view and
    not a copy of the whole output (as with cuDNN / flash SDPA, whose outputs follow q's layout); else contiguous."""
    b, h, sq, d = q.shape
    if h > 1 and q.stride(3) == 1 and q.stride(1) == d and q.stride(2) == h * d:
        return q.new_empty((b, sq, h, d)).transpose(1, 2)
    return q.new_empty((b, h, sq, d))


def _pv_mode(precision: str, device: torch.device) -> int:
    from .block_sparse_attn.kernel import PV_FP8, PV_FP16, PV_NATIVE

    if precision == "bf16":
        return PV_NATIVE
    if precision == "int8-fp8" and (device.type != "cuda" or has_fp8(device.index or 0)):
        return PV_FP8
    return PV_FP16


def padded_fp16(v: torch.Tensor, block_n: int) -> torch.Tensor:
    """FP16 copy of ``v [B, H, S, D]`` zero padded to whole key blocks: ``[B, H, S_pad, D]``."""
    b, h, s, d = v.shape
    s_pad = num_blocks(s, block_n) * block_n
    out = torch.empty((b, h, s_pad, d), dtype=torch.float16, device=v.device)
    out[:, :, :s].copy_(v)
    out[:, :, s:].zero_()
    return out


def full_lut(b: int, h: int, sq: int, sk: int, block_m: int, block_n: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The kept-block list of dense attention: every key block for every query block."""
    nq, nk = num_blocks(sq, block_m), num_blocks(sk, block_n)
    lut = torch.arange(nk, dtype=torch.int32, device=device).expand(b, h, nq, nk).contiguous()
    counts = torch.full((b, h, nq), nk, dtype=torch.int32, device=device)
    return lut, counts
