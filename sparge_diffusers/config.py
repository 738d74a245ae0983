"""`SpargeConfig`: the one frozen, validated description of a sparse attention setting.

Paper symbols (SpargeAttn, Zhang et al., ICML 2025, arXiv 2502.18137):

- τ (``cdf_threshold``): TopCdf keeps, per query block, the fewest key blocks whose predicted attention mass
  reaches τ (Sec. 3.2).
- θ (``sim_threshold``): a block whose mean pairwise cosine similarity is below θ is not well represented by its
  mean token; such blocks are always computed (the paper's "fix" blocks, Sec. 3.2).
- ε (``target_error``): an error budget, the relative L1 error of the block selection against dense attention
  that the user accepts. Per (batch, head), the least massive blocks are dropped up to a drop mass measured on
  sampled exact rows of the same call to meet ε (`sparge_diffusers.kernels.budget`), so no threshold needs tuning
  per model; a calibration file (``sparge-diffusers calibrate``) or the integration's per-layer state can supply
  those drop masses instead of measuring them in every call.
- λ (``pv_threshold``): stage-2 filter; inside the kernel a key block's P·V product is skipped when its row maxima
  all lie more than ``-λ`` below the running maxima of the online softmax (Sec. 3.4). λ ≤ 0 in natural-log units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional, Tuple

from .kernels.predict.naive import PREDICTORS
from .kernels.selection import Selection, resolve_selection

PRECISIONS = ("int8-fp8", "int8-fp16", "bf16")
REORDERS = ("hilbert", "rowmajor", "none")
HEAD_DIM_FALLBACKS = ("pad", "dense")
BLOCK_SIZES = (64, 128)
DEFAULT_TARGET_ERROR = 0.05
SELECTION_FIELDS = ("topk", "cdf_threshold", "target_error")
# calls one predicted block map serves under the error budget when ``map_reuse`` is None (`SpargeConfig.map_reuse`)
DEFAULT_MAP_REUSE = 2
# Relative L1 against fp32 dense attention that each precision adds with every block kept (the error floor of a
# budget). Measured on an H200 with random normal inputs, the worst case (near-uniform attention rounds most P
# values): int8-fp8 0.039-0.041 (`scripts/fp8_error_floor.py`: 0.037 from e4m3 rounding of P and V alone),
# int8-fp16 0.013-0.014, bf16 0.003 (cuDNN 0.002). See benchmarks/results/kernels_h200.md.
PRECISION_ERROR_FLOOR = {"int8-fp8": 0.04, "int8-fp16": 0.014, "bf16": 0.003}

TokenRange = Tuple[int, int]


def _check_ranges(name: str, ranges) -> Tuple[TokenRange, ...]:
    try:
        normalized = tuple((int(start), int(end)) for start, end in ranges)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of (start, end) integer pairs, got {ranges!r}") from None
    for start, end in normalized:
        if start < 0 or end < start:
            raise ValueError(f"{name} must hold ranges with 0 <= start <= end, got ({start}, {end})")
    return normalized


@dataclass(frozen=True)
class SpargeConfig:
    """How sparse attention is predicted and computed.

    Selection (exactly one rule is used, decided by `kernels.selection.resolve_selection`: ``target_error`` when
    given, else ``topk``, else ``cdf_threshold``; when none is given, the error budget ε = `DEFAULT_TARGET_ERROR`
    (0.05). `replace` with one of them clears the other two):
        target_error: ε in (0, 1) or None: the relative L1 error budget of the block selection against dense
            attention (the default rule, at `DEFAULT_TARGET_ERROR`). Per (batch, head) the least
            massive key blocks are dropped up to the largest drop mass whose error on sampled exact rows stays within
            ε; where none does, every block is kept. Quantization adds its own error (`PRECISION_ERROR_FLOOR`).
            Measuring costs 3.8% (Mochi, 44,776 tokens) to 8.2% (CogVideoX-2b, 17,776) of a dense cuDNN call on an
            H200 (benchmarks/results/budget_eval.md): pass a `BudgetGuard` (the diffusers integration keeps one per
            layer, also under ``torch.compile``) or a ``calibration`` to reuse it. With ``predictor="mixed"`` the
            budget holds with ≥ 0.85 of the oracle's sparsity on every evaluation family.
        topk: fraction of key blocks kept per query block, in (0, 1]. ``1.0`` is dense attention. A fixed fraction
            is fast and predictable but not safe on broad attention (a trained video transformer measured relL1
            0.16-0.36 at top-k 0.5, benchmarks/results/budget_eval.md); the default budget keeps more blocks there.
        cdf_threshold: τ in (0, 1] or None; TopCdf selection of key blocks by predicted mass.
        calibration: path of a calibration JSON (``sparge-diffusers calibrate``): per layer and head drop masses
            that meet ε, used instead of measuring them (layers not in the file are measured).
        sim_threshold: θ in [-1, 1] or None (off). Query blocks below θ keep all key blocks; key blocks below θ are
            kept for every query block.
        pv_threshold: λ ≤ 0 or None (off); stage-2 skip of P·V for key blocks far below the running max.
        predictor: ``"sparge"`` (the paper's stage 1: pooled q̄·k̄ scores, self-similarity test),
            ``"lse"`` (mean query of each block scored against every key token, log-sum-exp per key block, with a
            query-variance correction; ``sim_threshold`` is not used), ``"mixed"`` (the default: lse averaged with
            the exact block masses of 4 sampled query rows per block; ranks local-window, temporal-diagonal and hub
            heads better, so the budget keeps 0.82-1.04 of the oracle's sparsity on every evaluation family at
            ε = 0.05 where lse keeps 0.52 on the structured heads, for 3-3.8% of a dense call more than lse's ~2%
            at ≥ 16K tokens on an H200) or ``"full"`` (keep every block; quantized dense attention). See
            `sparge_diffusers.kernels.predict.naive`.

    Kernel:
        block_m, block_n: query / key block sizes in tokens (64 or 128).
        precision: ``"int8-fp8"`` (INT8 Q·Kᵀ, FP8 e4m3 P·V; FP16 P·V where the GPU has no FP8),
            ``"int8-fp16"`` (INT8 Q·Kᵀ, FP16 P·V) or ``"bf16"`` (no quantization, sparsity only).

    Tokens:
        reorder: ``"hilbert"`` (visual tokens in Hilbert-curve order), ``"rowmajor"`` or ``"none"`` (keep the model's
            own order, which for the supported models is row-major over (t, h, w)). Used by the diffusers
            integration, which knows the latent grid; ``sparge_attn`` itself never reorders.
        keep_token_ranges: ``(start, end)`` token ranges whose query rows and key columns are always computed
            (text tokens); integrations pass the model's text range per call.

    Fallbacks and policies:
        dense_below_seq_len: sequences shorter than this use dense attention (the predictor does not pay there).
        head_dim_fallback: head dims other than 64/128 are zero-padded up to 64 or 128 (``"pad"``) or sent to dense
            attention (``"dense"``). Head dims above 128 always use dense attention.
        dense_steps: the first N denoising steps use dense attention (integration only).
        dense_layers: indices of attention layers that always use dense attention (integration only).
        check_finite: raise ValueError on NaN/inf in q, k or v of a sparse call (the quantized path could turn a
            NaN into finite output; dense calls propagate it and are not checked). The check stays on the device
            (`sparge_diffusers.finite`): `sparge_attn` alone reads it at once (one host sync per call), the
            diffusers integration once at the end of each transformer forward. Skipped under torch.compile and
            CUDA-graph capture.
        speed_rule: ``"auto"``: CUDA calls where the measured crossover says the sparse path cannot beat cuDNN SDPA
            (short sequences, low top-k sparsity, padded head dims) use dense SDPA (`sparge_diffusers.speed_rule`);
            ``"sparse"``: always the sparse path.
        map_reuse: the most calls of one layer and call shape that one predicted block map serves (1: predict in
            every call); None (the default) is `DEFAULT_MAP_REUSE` (2) with the error budget and 1 with top-k or τ
            (`map_reuse_calls`). Needs a `BudgetGuard` (the diffusers integration keeps one per layer, and forgets
            its maps and drop masses at every new pipeline call: `sparge_diffusers.call_hook`). Calls that reuse a
            map skip the prediction and only quantize and attend. With the error budget a map is reused only while
            the drop masses are (a re-measurement that finds drift predicts in every call again), also under
            ``torch.compile``; with top-k or τ it is reused for a fixed number of calls, in eager mode only
            (`sparge_diffusers.budget_guard`).
            Measured (H200, session 11, benchmarks/results/map_reuse.md): with ε = 0.05 and 2, the mixed prediction
            drops from 5.9% to 3.0% of a dense cuDNN call at CogVideoX-2b length (4.6% to 2.4% at Mochi's), steps
            run 1.7-5% faster, and the trained embedded model's renders stay as close to dense (PSNR 30.8 against
            30.6 dB); with top-k (lse, 1.5-2% a call) no step got measurably faster, so it stays off there.
    """

    topk: Optional[float] = None
    cdf_threshold: Optional[float] = None
    sim_threshold: Optional[float] = 0.6
    pv_threshold: Optional[float] = None
    predictor: str = "mixed"
    block_m: int = 128
    block_n: int = 128
    precision: str = "int8-fp8"
    reorder: str = "hilbert"
    keep_token_ranges: Tuple[TokenRange, ...] = ()
    dense_below_seq_len: int = 0
    head_dim_fallback: str = "pad"
    dense_steps: int = 0
    dense_layers: Tuple[int, ...] = ()
    check_finite: bool = True
    target_error: Optional[float] = None  # last, so that positional arguments keep their meaning
    calibration: Optional[str] = None
    speed_rule: str = "auto"
    map_reuse: Optional[int] = None

    def __post_init__(self) -> None:
        if self.target_error is not None and not (
            isinstance(self.target_error, (int, float)) and 0.0 < self.target_error < 1.0
        ):
            raise ValueError(f"target_error (ε) must be in (0, 1) or None, got {self.target_error!r}")
        if (self.topk is None and self.cdf_threshold is None and self.target_error is None
                and self.predictor != "full"):
            object.__setattr__(self, "target_error", DEFAULT_TARGET_ERROR)  # no rule named: the error budget
        if self.calibration is not None and not isinstance(self.calibration, str):
            raise ValueError(f"calibration must be a path (str) or None, got {type(self.calibration).__name__}")
        for name in ("topk", "cdf_threshold"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if self.sim_threshold is not None and not (-1.0 <= self.sim_threshold <= 1.0):
            raise ValueError(f"sim_threshold (θ) must be in [-1, 1] or None, got {self.sim_threshold!r}")
        if self.pv_threshold is not None and not (
            isinstance(self.pv_threshold, (int, float)) and self.pv_threshold <= 0 and not math.isnan(self.pv_threshold)
        ):
            raise ValueError(f"pv_threshold (λ) must be a number <= 0 or None, got {self.pv_threshold!r}")
        _check_choice("predictor", self.predictor, PREDICTORS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("reorder", self.reorder, REORDERS)
        _check_choice("head_dim_fallback", self.head_dim_fallback, HEAD_DIM_FALLBACKS)
        _check_choice("speed_rule", self.speed_rule, ("auto", "sparse"))
        _check_choice("block_m", self.block_m, BLOCK_SIZES)
        _check_choice("block_n", self.block_n, BLOCK_SIZES)
        object.__setattr__(self, "keep_token_ranges", _check_ranges("keep_token_ranges", self.keep_token_ranges))
        for name in ("dense_below_seq_len", "dense_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.map_reuse is not None and (not isinstance(self.map_reuse, int) or isinstance(self.map_reuse, bool)
                                           or self.map_reuse < 1):
            raise ValueError(f"map_reuse must be an integer >= 1 or None, got {self.map_reuse!r}")
        try:
            layers = tuple(int(layer) for layer in self.dense_layers)
        except (TypeError, ValueError):
            raise ValueError(f"dense_layers must be a sequence of layer indices, got {self.dense_layers!r}") from None
        object.__setattr__(self, "dense_layers", layers)

    @property
    def selection(self) -> Selection:
        """The selection rule this setting uses (`kernels.selection.resolve_selection`)."""
        return resolve_selection(predictor=self.predictor, topk=self.topk, cdf_threshold=self.cdf_threshold,
                                 target_error=self.target_error)

    @property
    def map_reuse_calls(self) -> int:
        """Calls one predicted block map serves: ``map_reuse``, or when None `DEFAULT_MAP_REUSE` for the error budget
        and 1 (predict in every call) for the other rules."""
        if self.map_reuse is not None:
            return self.map_reuse
        return DEFAULT_MAP_REUSE if self.selection.rule == "budget" else 1

    @property
    def is_dense(self) -> bool:
        """True when the setting keeps every block (no sparsity is possible)."""
        return self.selection.keeps_all

    def replace(self, **changes) -> "SpargeConfig":
        """A copy with some fields changed (validated again). Naming one selection rule (``topk``,
        ``cdf_threshold``, ``target_error``) clears the others, so ``SpargeConfig().replace(topk=0.5)`` is top-k and
        not the default budget with a top-k beside it."""
        if any(name in changes for name in SELECTION_FIELDS):
            changes = {**{name: None for name in SELECTION_FIELDS}, **changes}
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-JSON view, for sidecars and benchmark rows."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
