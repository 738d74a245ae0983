"""diffusers integration: `apply_sparge` / `remove_sparge`, the Sparge attention processors and run statistics.

One call puts sparse attention (SpargeAttn, Zhang et al., ICML 2025, arXiv 2502.18137) into a diffusers pipeline::

    apply_sparge(pipe, SpargeConfig(topk=0.5), collect_stats=True)
    video = pipe(...).frames
    print(get_sparge_stats(pipe).mean_sparsity)
    remove_sparge(pipe)

What `apply_sparge` installs on the transformer (CogVideoX, Mochi or Flux; the per-model code lives in
``sparge_diffusers.pipelines.<family>``):

- a Sparge processor on every attention layer, which reproduces the stock diffusers processor of the model
  (projections, QK-norm, RoPE, the model's text / visual concatenation) and replaces only the attention call by
  `sparge_attn`, with the text tokens passed as ``keep_ranges`` (their rows and columns are always computed);
- a forward pre-hook on the transformer (``register_forward_pre_hook(with_kwargs=True)``) that reads the geometry of
  each forward: the latent grid ``(t, h, w)`` or ``(h, w)`` after patching, the text length, and the denoising step
  index (from the timestep, see `SpargeContext`), unless a `SpargeGeometry` overrides them;
- with ``config.reorder == "hilbert"``: hooks that put the visual tokens into Hilbert order ONCE per forward at the
  transformer boundary (hidden states and rotary embeddings together) and restore row-major order before the final
  projection / unpatchify. Every token-wise op commutes with the permutation, so the transformer output is unchanged
  up to rounding. ``reorder_at="layer"`` is the documented fallback: the processor permutes q, k, v of the visual
  tokens in every layer and reverts the attention output (costs a gather/scatter per layer).

Only torch module hooks and the ``processor`` attribute of the attention modules are touched; hooks of accelerate
(``enable_model_cpu_offload``) and diffusers' hook registry (caching) are left alone, and `remove_sparge` puts back
exactly the processors it found.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .attention import sparge_attn
from .config import SpargeConfig

logger = logging.getLogger(__name__)

REORDER_AT = ("boundary", "layer")
_STATE_ATTR = "_sparge_state"


# geometry


@dataclass(frozen=True)
class SpargeGeometry:
    """Explicit geometry; any field left None is read from the transformer's forward.

    Attributes:
        grid: latent grid after patching, ``(t, h, w)`` for video or ``(h, w)`` for Flux images. Its token count must
            equal the model's visual token count (Flux: at most, the first ``prod(grid)`` image tokens are reordered).
        text_len: number of text tokens whose rows and columns are always computed (clipped to the model's text
            length); None = all text tokens of the call.
        step: fixed denoising step index used by the ``dense_steps`` policy and the statistics; None = counted from
            the timesteps the transformer sees.
    """

    grid: Optional[Tuple[int, ...]] = None
    text_len: Optional[int] = None
    step: Optional[int] = None

    def __post_init__(self) -> None:
        if self.grid is not None:
            try:
                grid = tuple(int(g) for g in self.grid)
            except (TypeError, ValueError):
                raise ValueError(
                    f"SpargeGeometry.grid must be (t, h, w) or (h, w) integers, got {self.grid!r}") from None
            if len(grid) not in (2, 3) or min(grid) < 1:
                raise ValueError(f"SpargeGeometry.grid must be 2 or 3 positive integers, got {self.grid!r}")
            object.__setattr__(self, "grid", grid)
        for name in ("text_len", "step"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"SpargeGeometry.{name} must be an integer >= 0 or None, got {value!r}")


class ForwardGeometry:
    """What the geometry hook found for the current transformer forward (one mutable object per transformer).

    Attributes:
        active: True once the geometry hook has seen a forward (False for standalone processors).
        grid: latent grid after patching, or None when unknown (no hooks, or an unexpected token count).
        num_visual: visual tokens of the hidden states (Flux: image tokens, Kontext condition tokens included).
        text_len: text tokens of the attention sequence (Mochi: the padded length; valid tokens are per sample).
        text_first: True when the attention sequence is ``[text, visual]`` (CogVideoX, Flux), False for Mochi.
        step: denoising step index; ``generation``: how many times the step counter restarted at 0.
        forward_index: transformer forwards seen since `apply_sparge`.
        dense_step: ``step < config.dense_steps``.
        permutation: `TokenPermutation` of the visual tokens (offset 0, length ``num_visual``) applied at the boundary
            in this forward, or None (row-major order kept).
        entry_permutation: the same order for the tensor where the hidden states enter (CogVideoX: the patch
            embedding output ``[text, visual]``, so offset = text length), or None.
    """

    def __init__(self) -> None:
        self.active = False
        self.grid: Optional[Tuple[int, ...]] = None
        self.num_visual = 0
        self.text_len: Optional[int] = None
        self.text_first = True
        self.step = 0
        self.generation = 0
        self.forward_index = -1
        self.dense_step = False
        self.permutation = None
        self.entry_permutation = None

    def as_dict(self) -> dict:
        return {
            "grid": self.grid, "num_visual": self.num_visual, "text_len": self.text_len,
            "text_first": self.text_first, "step": self.step, "generation": self.generation,
            "forward_index": self.forward_index, "dense_step": self.dense_step,
            "reordered": self.permutation is not None and not self.permutation.is_identity,
        }

    def __repr__(self) -> str:
        return "ForwardGeometry(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


# statistics


class _Timer:
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

    def stop(self) -> "_Timer":
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
    """Per-layer, per-step statistics of the Sparge processors of one transformer.

    ``rows`` is a list of dicts, one per attention-layer call, with the keys:
        ``step`` (denoising step index), ``generation`` (pipeline call counter), ``forward`` (transformer forward
        index), ``layer`` (attention layer index; Flux counts double-stream blocks first), ``name`` (module path),
        ``sparsity`` (fraction of skipped (query block, key block) pairs, averaged over batch and heads; 0 on dense
        calls), ``attention_ms`` (wall time of the attention call: CUDA events on a GPU, perf_counter on the CPU),
        ``backend`` (``"triton"``, ``"reference"`` or ``"dense"``), ``policy`` (``"sparse"``, ``"dense_step"``,
        ``"dense_layer"`` or ``"masked"``), ``batch``, ``heads``, ``seq_len``, ``text_len``, ``reorder``.

    Device values (sparsity tensors, CUDA events) are read when ``rows`` is first accessed after new calls, so
    collecting does not synchronize the GPU in every layer. Calls made while ``torch.compile`` traces are not recorded.
    """

    def __init__(self) -> None:
        self._pending: List[Tuple[dict, Any, _Timer]] = []
        self._rows: List[dict] = []

    def record(self, row: dict, sparsity, timer: _Timer) -> None:
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


# shared state of the processors of one transformer


class SpargeContext:
    """State shared by the Sparge processors of one transformer: config, geometry of the current forward, stats.

    Step index: the geometry hook reads the first timestep of each forward. A timestep equal to the previous one is the
    same step (a second forward for true CFG), one that moves in the denoising direction (down, for CogVideoX, Mochi
    and Flux as diffusers 0.42 calls them) is the next step, and one that moves back up starts a new generation at
    step 0. The wrapped pipelines also restart the counter at the start of every call (`begin_call`). A fixed
    ``SpargeGeometry.step`` overrides all of this. Without ``dense_steps`` and statistics the step is not needed and
    not counted (reading the timestep would synchronize a GPU once per forward).
    """

    def __init__(self, config: SpargeConfig, *, collect_stats: bool = False, geometry: Optional[SpargeGeometry] = None,
                 reorder_at: str = "boundary", family: Optional[str] = None) -> None:
        if not isinstance(config, SpargeConfig):
            raise ValueError(f"config must be a SpargeConfig or None, got {type(config).__name__}")
        if geometry is not None and not isinstance(geometry, SpargeGeometry):
            raise ValueError(f"geometry must be a SpargeGeometry or None, got {type(geometry).__name__}")
        if reorder_at not in REORDER_AT:
            raise ValueError(f"reorder_at must be one of {REORDER_AT}, got {reorder_at!r}")
        self.config = config
        self.collect_stats = bool(collect_stats)
        self.geometry = geometry or SpargeGeometry()
        self.reorder_at = reorder_at
        self.family = family
        self.stats = SpargeRunStats()
        self.current = ForwardGeometry()
        self.layer_ids: Dict[int, int] = {}
        self.seen_text_len: Optional[int] = None
        self._last_timestep: Optional[float] = None

    @property
    def reorder_kind(self) -> str:
        """TokenPermutation kind for ``config.reorder``: ``"hilbert"`` or ``"rowmajor"`` (identity)."""
        return "hilbert" if self.config.reorder == "hilbert" else "rowmajor"

    def text_keep_len(self, text_len: int) -> int:
        """Text tokens to keep of a text segment of ``text_len`` tokens (``SpargeGeometry.text_len`` clips it)."""
        return text_len if self.geometry.text_len is None else min(text_len, self.geometry.text_len)

    def begin_call(self) -> None:
        """A new pipeline call: the next forward is step 0."""
        self._last_timestep = None

    def begin_forward(self, *, grid, num_visual: int, text_len: Optional[int], text_first: bool, timestep) -> None:
        """Called by the geometry hook at the start of every transformer forward."""
        cur = self.current
        cur.forward_index += 1
        cur.active = True
        cur.grid = grid
        cur.num_visual = num_visual
        cur.text_len = text_len
        cur.text_first = text_first
        self._advance_step(timestep)
        cur.dense_step = cur.step < self.config.dense_steps
        cur.permutation = None
        cur.entry_permutation = None

    def _advance_step(self, timestep) -> None:
        cur = self.current
        if self.geometry.step is not None:
            cur.step = self.geometry.step
            return
        if self.config.dense_steps == 0 and not self.collect_stats:
            return  # nobody needs the step: skip reading the timestep (a device-to-host sync on a GPU)
        value = _first_value(timestep)
        last = self._last_timestep
        if last is None or value is None:
            if last is not None or cur.forward_index > 0:
                cur.generation += 1
            cur.step = 0
        elif value > last:
            cur.generation += 1
            cur.step = 0
        elif value < last:
            cur.step += 1
        self._last_timestep = value

    def permutation_for(self, device) -> Optional[Any]:
        """The boundary permutation of the visual tokens for the current grid, or None (row-major kept)."""
        cur = self.current
        if cur.grid is None or self.reorder_kind == "rowmajor":
            return None
        from .hilbert import TokenPermutation

        return TokenPermutation.for_grid(cur.grid, self.reorder_kind, device=device, offset=0,
                                         total_len=cur.num_visual)


def _first_value(timestep) -> Optional[float]:
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().flatten()[0]) if timestep.numel() else None
    try:
        return float(timestep)
    except (TypeError, ValueError):
        return None


# processors


class SpargeProcessor:
    """Sparse + quantized attention processor for CogVideoX, Mochi and Flux (diffusers 0.42).

    Usable directly, ``pipe.transformer.set_attn_processor(SpargeProcessor(config))`` (CogVideoX, Flux), or through
    `apply_sparge` (all three, and the only way for Mochi, whose transformer has no ``set_attn_processor``). The model
    is recognised from the attention module it is called with: ``FluxAttention`` → Flux
    (`pipelines.flux.flux_attention`), ``MochiAttention`` → Mochi, diffusers' generic ``Attention`` called with
    encoder hidden states → CogVideoX. Each reproduces the stock processor of diffusers 0.42 and replaces only the
    attention call by `sparge_attn` with the text tokens in ``keep_ranges``.

    Used directly (without `apply_sparge`) the processor has no geometry hook: tokens stay in the model's row-major
    order, ``dense_steps`` cannot be honoured (the step is unknown), layer indices are assigned in call order, and a
    Flux single-stream block takes its text length from the double-stream block that ran before it.

    Args:
        config: the sparse attention setting (`SpargeConfig()` when None).
        collect_stats: record per-call statistics (standalone use; `apply_sparge` passes its own context).
        layer_index, name, context: set by `apply_sparge`.
    """

    # diffusers' attention-backend machinery sets these on processors; the stock Flux processor reads them.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, config: Optional[SpargeConfig] = None, *, collect_stats: bool = False,
                 layer_index: Optional[int] = None, name: Optional[str] = None,
                 context: Optional[SpargeContext] = None) -> None:
        if context is None:
            context = SpargeContext(SpargeConfig() if config is None else config, collect_stats=collect_stats)
        self.context = context
        self.config = context.config if config is None else config
        if not isinstance(self.config, SpargeConfig):
            raise ValueError(f"config must be a SpargeConfig or None, got {type(self.config).__name__}")
        self.layer_index = layer_index
        self.name = name

    # The family processors pin their model's attention function here; the generic processor looks it up per module.
    attention_impl: Optional[Callable] = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        impl = self.attention_impl or _family_attention(attn)
        return impl(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer_index}, config={self.config})"

    # helpers used by the family processors

    def layer_of(self, attn) -> int:
        if self.layer_index is not None:
            return self.layer_index
        return self.context.layer_ids.setdefault(id(attn), len(self.context.layer_ids))

    def policy(self, attn) -> str:
        """``"dense_step"``, ``"dense_layer"`` or ``"sparse"`` for this call."""
        if self.context.current.dense_step:
            return "dense_step"
        if self.config.dense_layers and self.layer_of(attn) in self.config.dense_layers:
            return "dense_layer"
        return "sparse"

    def keep_ranges(self, text_start: int, text_end: int) -> Tuple[Tuple[int, int], ...]:
        """The text range (always computed) plus ``config.keep_token_ranges``."""
        ranges = tuple(self.config.keep_token_ranges)
        if text_end > text_start:
            ranges = ((text_start, text_end),) + ranges
        return ranges

    def layer_permutation(self, visual_offset: int, total_len: int, device):
        """Per-layer fallback (``reorder_at="layer"``): permutation of the attention sequence, or None."""
        ctx = self.context
        cur = ctx.current
        if ctx.reorder_at != "layer" or cur.grid is None or ctx.reorder_kind == "rowmajor":
            return None
        from .hilbert import TokenPermutation

        return TokenPermutation.for_grid(cur.grid, ctx.reorder_kind, device=device, offset=visual_offset,
                                         total_len=total_len)

    def sparse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str, keep_ranges,
               visual_offset: int):
        """`sparge_attn` on one attention sequence, with the per-layer reorder fallback when enabled.

        Returns:
            ``(out, sparsity, backend)``: ``sparsity`` is a 0-d fp32 tensor (mean over batch and heads) and
            ``backend`` the backend name, both None when stats are off.
        """
        seq_dim = 2 if layout == "BHSD" else 1
        perm = self.layer_permutation(visual_offset, q.shape[seq_dim], q.device)
        if perm is not None:
            q, k, v = (perm.apply(x, dim=seq_dim) for x in (q, k, v))
        want_stats = self._collecting()
        result = sparge_attn(q, k, v, config=self.config, layout=layout, keep_ranges=keep_ranges,
                             return_stats=want_stats)
        out, stats = result if want_stats else (result, None)
        if perm is not None:
            out = perm.revert(out, dim=seq_dim)
        if stats is None:
            return out, None, None
        return out, stats.sparsity.float().mean(), stats.backend

    def _collecting(self) -> bool:
        return self.context.collect_stats and not torch.compiler.is_compiling()

    def start_timer(self, device) -> Optional[_Timer]:
        return _Timer(device) if self._collecting() else None

    def record(self, attn, timer: Optional[_Timer], *, policy: str, sparsities: Sequence, backend: Optional[str],
               batch: int, heads: int, seq_len: int, text_len: int) -> None:
        """Append one row to the context's stats (no-op when stats are off or while compiling)."""
        if timer is None:
            return
        timer.stop()
        ctx = self.context
        cur = ctx.current
        values = [s for s in sparsities if s is not None]
        sparsity = torch.stack(values).mean() if values else None
        reordered = cur.grid is not None and ctx.reorder_kind == "hilbert" and (
            cur.permutation is not None or ctx.reorder_at == "layer")
        reorder = f"hilbert@{ctx.reorder_at}" if reordered else "none"
        row = {
            "step": cur.step, "generation": cur.generation, "forward": cur.forward_index, "layer": self.layer_of(attn),
            "name": self.name, "backend": backend or "dense", "policy": policy, "batch": batch, "heads": heads,
            "seq_len": seq_len, "text_len": text_len, "reorder": reorder,
        }
        ctx.stats.record(row, sparsity, timer)


def _family_attention(attn) -> Callable:
    """The family's attention function for an attention module (cached per module class and added-KV flag)."""
    key = (type(attn), getattr(attn, "added_kv_proj_dim", None) is not None)
    impl = _FAMILY_ATTENTION.get(key)
    if impl is None:
        from .pipelines import family_attention_for

        impl = family_attention_for(attn)
        _FAMILY_ATTENTION[key] = impl
    return impl


_FAMILY_ATTENTION: Dict[Tuple[type, bool], Callable] = {}


# apply / remove


class _SpargeState:
    """What `apply_sparge` changed on a transformer, so that `remove_sparge` can undo exactly that."""

    def __init__(self, family, context: SpargeContext) -> None:
        self.family = family
        self.context = context
        self.original_processors: List[Tuple[Any, Any]] = []
        self.handles: List[Any] = []


def resolve_transformer(pipe_or_transformer) -> torch.nn.Module:
    """The transformer of a pipeline (or the module itself), unwrapping ``torch.compile``."""
    if isinstance(pipe_or_transformer, torch.nn.Module):
        module = pipe_or_transformer
    else:
        module = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    if module is None:
        raise ValueError(f"{type(pipe_or_transformer).__name__} has no transformer (transformer is None)")
    module = getattr(module, "_orig_mod", module)  # torch.compile's OptimizedModule
    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            "apply_sparge needs a diffusers pipeline with a `transformer` or a transformer model, got "
            f"{type(pipe_or_transformer).__name__}"
        )
    return module


def apply_sparge(pipe_or_transformer, config: Optional[SpargeConfig] = None, *,
                 geometry: Optional[SpargeGeometry] = None, collect_stats: bool = False,
                 reorder_at: str = "boundary"):
    """Put Sparge attention into a CogVideoX, Mochi or Flux pipeline or transformer (diffusers 0.42).

    Args:
        pipe_or_transformer: a pipeline with a ``transformer`` attribute, or the transformer itself (a
            ``torch.compile``-d transformer is unwrapped; hooks go on the original module).
        config: the sparse attention setting; `SpargeConfig()` when None. ``config.reorder`` picks the token order,
            ``config.dense_steps`` / ``config.dense_layers`` the dense policies.
        geometry: explicit grid / text length / step; fields left None are read from each forward.
        collect_stats: record per-layer, per-step statistics (`get_sparge_stats`).
        reorder_at: ``"boundary"`` (reorder once per forward at the transformer boundary) or ``"layer"`` (the
            fallback: permute q, k, v in every attention layer).
    Returns:
        ``pipe_or_transformer``, for chaining.
    Raises:
        ValueError: an unsupported transformer class (the message names it), an attention layer whose processor is
            neither the stock one nor a Sparge processor, or a bad argument.
    """
    config = SpargeConfig() if config is None else config
    transformer = resolve_transformer(pipe_or_transformer)
    from .pipelines import family_for

    family = family_for(transformer)
    if getattr(transformer, _STATE_ATTR, None) is not None:
        logger.info("apply_sparge: %s already had Sparge attention; replacing it", type(transformer).__name__)
        remove_sparge(transformer)
    context = SpargeContext(config, collect_stats=collect_stats, geometry=geometry, reorder_at=reorder_at,
                            family=family.name)
    layers = family.attention_layers(transformer)
    for _, name, attn in layers:
        processor = family.get_processor(attn)
        if not (isinstance(processor, SpargeProcessor) or family.is_stock_processor(processor)):
            raise ValueError(
                f"apply_sparge replaces only the stock {family.name} attention processors; {name} of "
                f"{type(transformer).__name__} uses {type(processor).__name__}"
            )
    state = _SpargeState(family, context)
    for index, name, attn in layers:
        processor = family.get_processor(attn)
        if isinstance(processor, SpargeProcessor):
            processor = family.stock_processor()
        state.original_processors.append((attn, processor))
        family.set_processor(attn, family.processor_class(config, layer_index=index, name=name, context=context))
    state.handles = family.install_hooks(transformer, context)
    setattr(transformer, _STATE_ATTR, state)
    logger.info("apply_sparge: %d %s attention layers use Sparge (%s)", len(layers), family.name, config)
    return pipe_or_transformer


def remove_sparge(pipe_or_transformer):
    """Undo `apply_sparge`: the original processors come back and the Sparge hooks are removed.

    Sparge processors set without `apply_sparge` (``set_attn_processor(SpargeProcessor(...))``) are replaced by the
    model's stock processor. Other hooks (accelerate offload, diffusers caches) are not touched.
    """
    transformer = resolve_transformer(pipe_or_transformer)
    state = getattr(transformer, _STATE_ATTR, None)
    if state is not None:
        for handle in state.handles:
            handle.remove()
        for attn, processor in state.original_processors:
            state.family.set_processor(attn, processor)
        delattr(transformer, _STATE_ATTR)
        return pipe_or_transformer
    from .pipelines import family_for

    family = family_for(transformer)
    for _, _, attn in family.attention_layers(transformer):
        if isinstance(family.get_processor(attn), SpargeProcessor):
            family.set_processor(attn, family.stock_processor())
    return pipe_or_transformer


def get_sparge_stats(pipe_or_transformer) -> SpargeRunStats:
    """The statistics of the Sparge processors of a pipeline or transformer.

    Rows are recorded only when `apply_sparge` ran with ``collect_stats=True`` (or standalone processors were built
    with it); the object is live: it grows with every call until ``reset()``.

    Raises:
        ValueError: no Sparge processor is installed.
    """
    transformer = resolve_transformer(pipe_or_transformer)
    state = getattr(transformer, _STATE_ATTR, None)
    if state is not None:
        return state.context.stats
    contexts = []
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, SpargeProcessor) and all(processor.context is not c for c in contexts):
            contexts.append(processor.context)
    if len(contexts) == 1:
        return contexts[0].stats
    if not contexts:
        raise ValueError(f"{type(transformer).__name__} has no Sparge processors; call apply_sparge first")
    merged = SpargeRunStats()
    for context in contexts:
        merged._rows.extend(context.stats.rows)
    return merged


def get_sparge_context(pipe_or_transformer) -> Optional[SpargeContext]:
    """The `SpargeContext` installed by `apply_sparge` (geometry of the last forward in ``.current``), or None."""
    state = getattr(resolve_transformer(pipe_or_transformer), _STATE_ATTR, None)
    return None if state is None else state.context


def begin_sparge_call(pipe_or_transformer, *, reset_stats: bool = False) -> None:
    """Mark the start of a pipeline call: the step counter restarts at 0 (and the stats are cleared when asked)."""
    context = get_sparge_context(pipe_or_transformer)
    if context is not None:
        context.begin_call()
        if reset_stats:
            context.stats.reset()


__all__ = [
    "ForwardGeometry",
    "SpargeContext",
    "SpargeGeometry",
    "SpargeProcessor",
    "SpargeRunStats",
    "apply_sparge",
    "begin_sparge_call",
    "get_sparge_context",
    "get_sparge_stats",
    "remove_sparge",
    "resolve_transformer",
]

