"""The ``"sparge"`` attention backend of diffusers' attention dispatch (``diffusers.models.attention_dispatch``).

After ``import sparge_diffusers`` (with a supported diffusers installed), diffusers' own API accepts it::

    transformer.set_attention_backend("sparge")          # every attention module of that model
    with attention_backend("sparge"): ...               # the active backend, for processors without one

`apply_sparge` sets it on the sparse-eligible attention modules of one transformer and installs the family's hooks,
which give the backend the geometry (text range, step, dense policies, layer index) through the active-layer slot of
`sparge_diffusers.context`. Called outside `apply_sparge` the backend uses ``SpargeConfig()`` without text
protection or reorder (logged once).

Registration (`register_sparge_backend`): diffusers' backend enum ``AttentionBackendName`` is closed, so a new member
is made the way NVIDIA Model-Optimizer and cache-dit add theirs (``str.__new__`` of the enum, entered in its
``_member_map_``, ``_value2member_map_`` and ``_member_names_``), and the function is entered with the registry's own
``_AttentionBackendRegistry.register`` decorator, ``supports_context_parallel=True`` when diffusers has its
context-parallel template (``_templated_context_parallel_attention``, 0.42). Nothing of diffusers is patched or
wrapped. The version is checked first (tested with 0.42; `SUPPORTED_DIFFUSERS`); a different version, or
tables of another shape, log one line and skip, and ``import sparge_diffusers`` never fails because of diffusers.

What the backend honours, and what goes dense (diffusers' native SDPA backend, one log line per reason):
    - ``is_causal``, ``dropout_p > 0``, grouped-query attention: dense (``"unsupported"``);
    - context parallelism (`sparge_diffusers.parallel`): Ulysses runs diffusers' own template (all-to-all, the
      attention on all tokens of ``H / P`` heads, inverse all-to-all) around the same sparse path, whose block map is
      then predicted per rank on its heads; dense calls go to the native backend with the parallel config; ring is
      refused (`RING_REFUSAL`: the kernel returns no log-sum-exp). A rank then holds the concatenation of every
      rank's chunk (Flux: ``[txt_0, img_0, txt_1, img_1, ...]``), so the text is kept as one range per chunk
      (`chunked_ranges`); text with a mask, clipped text (``SpargeGeometry.text_len``), ``keep_token_ranges``,
      ``ulysses_anything`` or the per-layer reorder go dense there (``"cp_text"``);
    - ``Sq != Sk`` (cross-attention, e.g. Wan's text cross-attention, image K/V of Wan I2V) or a layer the family
      marks as not sparse: dense (``"cross"``): short keys, nothing to gain;
    - a key-padding ``attn_mask`` (bool, or additive with 0 / <= -1e4 values, shaped ``[B, Sk]``, ``[B, 1, Sk]``
      or ``[B, 1, 1, Sk]``, or a family-declared pair mask ``m[i, j] = valid[i] & valid[j]``): honoured in the
      sparse path by removing the padded keys (`sparge_attn` never sees them); padded query rows attend to the
      valid keys, exactly as SDPA with a key-padding mask;
    - any other mask, or a mask while ``torch.compile`` traces (reading it is data-dependent): dense with the mask
      (``"masked"``). A mask is never ignored.
"""

from __future__ import annotations

import importlib
import logging
from typing import Dict, List, Optional, Tuple

import torch

from ._logging import log_once as _log_once
from .context import LayerCall, SpargeContext, active_layer, layer_by_key
from .parallel import RING_REFUSAL, check_heads, context_parallel_info
from .sparse_call import attend, keep_ranges_for, layer_policy, record, start_timer, text_range

logger = logging.getLogger(__name__)

BACKEND_NAME = "sparge"
ENUM_NAME = "SPARGE"
# diffusers releases whose attention dispatch has the tables this module writes into; tested with 0.42
SUPPORTED_DIFFUSERS = ((0, 36), (0, 43))
# additive masks: entries at or below this are "not attended" (LTX uses -10000, others -inf)
MASKED_BELOW = -1e4
# masks up to this many elements are cached (held) per tensor; larger ones are read at every call
MASK_CACHE_MAX_NUMEL = 1 << 22

_state: Dict[str, object] = {"member": None, "tried": False}


def log_once(logger_, key: str, message: str, *args, **kwargs) -> None:
    """`log_once`, skipped while ``torch.compile`` traces (logging would break the graph)."""
    if not torch.compiler.is_compiling():
        _log_once(logger_, key, message, *args, **kwargs)


def _parse_version(text: str) -> Tuple[int, int]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (2 - len(parts)))  # type: ignore[return-value]


def register_sparge_backend(*, force: bool = False):
    """Register the ``"sparge"`` backend with diffusers' attention dispatch; idempotent.

    Returns:
        the ``AttentionBackendName`` member, or None when diffusers is missing, its version is not supported (one
        log line) or its dispatch tables have another shape.
    """
    if _state["member"] is not None:
        return _state["member"]
    if _state["tried"] and not force:
        return None
    _state["tried"] = True
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("diffusers")
        except PackageNotFoundError:
            logger.debug("diffusers is not installed; the sparge attention backend is not registered")
            return None
        low, high = SUPPORTED_DIFFUSERS
        if not low <= _parse_version(installed) < high:
            log_once(logger, "backend-version", "diffusers %s is outside the versions the sparge attention backend "
                     "supports (>= %d.%d, < %d.%d); not registering it (apply_sparge still works for the models "
                     "with copied processors)", installed, *low, *high)
            return None
        dispatch = importlib.import_module("diffusers.models.attention_dispatch")
        names = dispatch.AttentionBackendName
        registry = dispatch._AttentionBackendRegistry
        needed = ("_backends", "_constraints", "_supported_arg_names", "_supports_context_parallel", "register")
        if not all(hasattr(registry, name) for name in needed) or not hasattr(names, "_value2member_map_"):
            log_once(logger, "backend-tables", "diffusers %s: the attention dispatch tables have another shape; the "
                     "sparge attention backend is not registered", installed)
            return None
    except Exception as error:  # a broken diffusers install must not break `import sparge_diffusers`
        log_once(logger, "backend-import", "the sparge attention backend is not registered: %s: %s",
                 type(error).__name__, error)
        return None

    member = names._value2member_map_.get(BACKEND_NAME)
    if member is None:
        member = str.__new__(names, BACKEND_NAME)
        member._name_ = ENUM_NAME
        member._value_ = BACKEND_NAME
        names._member_map_[ENUM_NAME] = member
        names._value2member_map_[BACKEND_NAME] = member
        if ENUM_NAME not in names._member_names_:
            names._member_names_.append(ENUM_NAME)
    template = getattr(dispatch, "_templated_context_parallel_attention", None)
    registry.register(member, constraints=[], supports_context_parallel=template is not None)(
        sparge_dispatch_attention)
    _state["native"] = registry._backends[names.NATIVE]
    _state["cp_template"] = template
    _make_standalone_layer()
    _state["member"] = member
    logger.debug("registered the sparge attention backend with diffusers %s", installed)
    return member


def sparge_backend_member():
    """The registered ``AttentionBackendName`` member (registering it if needed), or None."""
    return register_sparge_backend()


def native_backend():
    """diffusers' native (SDPA) backend function: the dense path of this backend (looked up at registration)."""
    return _state["native"]


_STANDALONE: Dict[str, LayerCall] = {}


def _make_standalone_layer() -> LayerCall:
    """The layer the backend uses for calls outside `apply_sparge` (made once, eagerly: at registration)."""
    layer = _STANDALONE.get("layer")
    if layer is None:
        from .config import SpargeConfig

        layer = _STANDALONE["layer"] = LayerCall(SpargeContext(SpargeConfig()), -1, None, shared=True)
    return layer


def _standalone_layer() -> LayerCall:
    log_once(logger, "backend-standalone", "sparge attention backend called outside apply_sparge: SpargeConfig() "
             "defaults, no text protection, no token reorder (use apply_sparge for the supported models)")
    return _STANDALONE["layer"] if "layer" in _STANDALONE else _make_standalone_layer()


def sparge_dispatch_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    _parallel_config=None,
) -> torch.Tensor:
    """The ``"sparge"`` backend: ``query: [B, Sq, H, D]``, ``key, value: [B, Sk, Hk, D]`` -> ``[B, Sq, H, D]``."""
    layer = active_layer.call or _standalone_layer()
    batch, seq_q, heads, _ = query.shape
    seq_k = key.shape[1]
    parallel = context_parallel_info(_parallel_config)
    if parallel is None:
        _parallel_config = None  # a degree-1 config: the single-device path
    elif parallel.ring_degree > 1:
        raise ValueError(RING_REFUSAL)
    if dropout_p or is_causal or key.shape[2] != heads:
        policy = "unsupported"
        log_once(logger, "backend-unsupported", "sparge backend: is_causal, dropout or grouped-query attention "
                 "requested; those calls use dense SDPA")
    elif not layer.sparse or seq_q != seq_k:
        policy = "cross"
    else:
        policy = layer_policy(layer)
    if parallel is not None:
        return _context_parallel_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                           _parallel_config, parallel, layer, policy)
    return _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, layer, policy)


def _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, layer: LayerCall, policy: str,
               chunks: int = 1) -> torch.Tensor:
    """One device's attention ``[B, S, H, D]`` under ``policy``. ``chunks > 1``: the sequence is the concatenation of
    ``chunks`` equal rank chunks (after a Ulysses all-to-all), each laid out as the single-device sequence (Flux:
    ``[txt_0, img_0, txt_1, img_1, ...]``), so the text is one range per chunk."""
    batch, seq_q, heads, _ = query.shape
    seq_k = key.shape[1]
    if policy == "sparse" and attn_mask is not None and torch.compiler.is_compiling():
        # reading the mask is data-dependent: one opaque op reads it and runs the same path eagerly
        return _masked_sparse_op(query, key, value, attn_mask, layer.key, -1.0 if scale is None else float(scale))
    plan = None
    if policy == "sparse" and attn_mask is not None:
        plan = key_padding_plan(attn_mask, batch, seq_q, seq_k, layer.context, pair_ok=layer.context.pair_masks)
        if plan is None:
            policy = "masked"
    timer = start_timer(layer, query.device)
    text = text_range(layer, seq_q)
    sparsities, backend = [], None
    if policy != "sparse":
        out = native_backend()(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                               scale=scale, enable_gqa=enable_gqa)
    elif chunks > 1 and text != (0, 0):  # text in every rank chunk (no mask, no clipping: see the CP checks)
        out, sparsity, backend = attend(query, key, value, layer=layer, layout="BSHD",
                                        keep_ranges=chunked_ranges(text, seq_q, chunks), visual_offset=0,
                                        scale=scale)
        sparsities.append(sparsity)
    elif plan is None or plan.all_valid:
        visual_offset = text[1] if text[0] == 0 and text[1] > 0 else 0
        out, sparsity, backend = attend(query, key, value, layer=layer, layout="BSHD",
                                        keep_ranges=keep_ranges_for(layer, *text), visual_offset=visual_offset,
                                        scale=scale)
        sparsities.append(sparsity)
    else:
        out, sparsities, backend = _attend_key_padded(query, key, value, plan, layer, text, scale)
    record(layer, timer, policy=policy, sparsities=sparsities, backend=backend, batch=batch, heads=heads,
           seq_len=seq_q, text_len=text[1] - text[0])
    return out


def _context_parallel_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                parallel_config, parallel, layer: LayerCall, policy: str) -> torch.Tensor:
    """One call under Ulysses: ``query, key, value: [B, S / P, H, D]`` (this rank's tokens, every head) ->
    ``[B, S / P, H, D]``; the sparse path runs between diffusers' all-to-alls on ``[B, S, H / P, D]``."""
    heads = query.shape[2]
    check_heads(heads, parallel.ulysses_degree, parallel.ulysses_anything)
    full_len = query.shape[1] * parallel.ulysses_degree
    text = text_range(layer, full_len)
    if policy == "sparse" and text != (0, 0) and not _chunked_text_ok(layer, text, full_len, parallel, attn_mask):
        policy = "cp_text"
        log_once(logger, "backend-cp-text", "sparge backend: under context parallelism, a self-attention sequence "
                 "with text and a mask, clipped text, keep_token_ranges, ulysses_anything or the per-layer reorder is "
                 "computed densely (its text positions are spread over the ranks' chunks)")
    template = _state.get("cp_template")
    if policy != "sparse" or template is None:
        timer = start_timer(layer, query.device)
        out = native_backend()(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                               scale=scale, enable_gqa=enable_gqa, _parallel_config=parallel_config)
        record(layer, timer, policy=policy, sparsities=[], backend=None, batch=query.shape[0], heads=heads,
               seq_len=full_len, text_len=text[1] - text[0])
        return out
    return template(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, False,
                    forward_op=_sparge_forward_op, backward_op=_sparge_backward_op,
                    _parallel_config=parallel_config)


def _chunked_text_ok(layer: LayerCall, text, full_len: int, parallel, attn_mask) -> bool:
    """Whether the text of a sequence split into equal rank chunks is one range per chunk that the sparse path can
    keep (the family's text first or last in every chunk, nothing that needs single-device positions)."""
    context = layer.context
    degree = parallel.ulysses_degree
    text_len = text[1] - text[0]
    return (attn_mask is None and not parallel.ulysses_anything and context.reorder_at == "boundary"
            and not context.config.keep_token_ranges and context.text_keep_len(text_len) == text_len
            and full_len % degree == 0 and text_len % degree == 0)


def chunked_ranges(text, seq_len: int, chunks: int):
    """The text ``(start, end)`` of a single-device sequence of ``seq_len`` tokens (text first or last), in the
    sequence that concatenates ``chunks`` equal rank chunks of it: one range per chunk.

    E.g. Flux, text first, 2 ranks: ``[txt, img]`` -> ``[txt_0, img_0, txt_1, img_1]``, ranges
    ``(0, T/2), (S/2, S/2 + T/2)``."""
    start, end = text
    local, text_local = seq_len // chunks, (end - start) // chunks
    offset = 0 if start == 0 else local - text_local  # text first: at the chunk start; last: at its end
    return tuple((r * local + offset, r * local + offset + text_local) for r in range(chunks))


def _sparge_forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                       enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
    """The rank's attention between the all-to-alls: ``[B, S, H / P, D]``, the same sparse path as one device."""
    if return_lse:
        raise ValueError(RING_REFUSAL)
    layer = active_layer.call or _standalone_layer()
    parallel = context_parallel_info(_parallel_config)
    return _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, layer,
                      layer_policy(layer) if layer.sparse else "cross",
                      chunks=1 if parallel is None else parallel.ulysses_degree)


def _sparge_backward_op(ctx, grad_out, *args, **kwargs):
    raise NotImplementedError("the sparge attention backend is inference-only (no backward under context "
                              "parallelism)")


@torch.library.custom_op("sparge_diffusers::masked_sparse_attention", mutates_args=())
def _masked_sparse_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor,
                      layer_key: str, scale: float) -> torch.Tensor:
    """A masked call of a compiled model: the eager backend (mask read, padded keys removed, or dense)."""
    previous = active_layer.call
    active_layer.call = layer_by_key(layer_key)
    try:
        out = sparge_dispatch_attention(query, key, value, attn_mask=attn_mask, scale=None if scale < 0 else scale)
    finally:
        active_layer.call = previous
    return out.clone() if out.data_ptr() in (query.data_ptr(), key.data_ptr(), value.data_ptr()) else out


@_masked_sparse_op.register_fake
def _(query, key, value, attn_mask, layer_key, scale):
    return torch.empty_like(query)


# key-padding masks


class _Group:
    """Samples of a batch that share one set of valid keys."""

    __slots__ = ("samples", "valid", "padded", "compact", "prefix")

    def __init__(self, samples: torch.Tensor, valid: torch.Tensor, padded: torch.Tensor, compact) -> None:
        self.samples = samples  # int64 [G] batch indices
        self.valid = valid  # int64 [V] valid key positions
        self.padded = padded  # int64 [S - V] padded positions (their query rows attend to the valid keys)
        self.compact = compact  # list of V host ints, for mapping ranges
        # trailing padding (text last, HunyuanVideo): the valid tokens are the first V, sliced without a copy
        self.prefix = compact[-1] == len(compact) - 1


class KeyPaddingPlan:
    """A key-padding mask read once: per group of samples, the valid key positions."""

    def __init__(self, groups: List[_Group], seq_len: int) -> None:
        self.groups = groups
        self.seq_len = seq_len
        self.all_valid = len(groups) == 1 and groups[0].padded.numel() == 0

    def compact_range(self, group: _Group, start: int, end: int) -> Tuple[int, int]:
        """A ``[start, end)`` range of the full sequence in the positions of the valid tokens."""
        import bisect

        return (bisect.bisect_left(group.compact, start), bisect.bisect_left(group.compact, end))


def key_padding_plan(mask: torch.Tensor, batch: int, seq_q: int, seq_k: int, context: SpargeContext,
                     pair_ok: bool = False) -> Optional[KeyPaddingPlan]:
    """Read a key-padding ``mask`` (small masks are cached per tensor: a model passes one mask to all its layers), or
    None when it is not one. Eager only (the compiled path reaches it through an opaque op)."""
    key = (mask.data_ptr(), tuple(mask.shape), mask.dtype, mask._version if not mask.is_inference() else 0)
    cache = context.mask_cache
    if key in cache:
        return cache[key][1]
    plan = _read_key_padding(mask, batch, seq_q, seq_k, pair_ok)
    if mask.numel() > MASK_CACHE_MAX_NUMEL:  # HunyuanVideo 1.5 builds an [B, 1, S, S] mask per layer: not kept
        if plan is None:
            log_once(logger, f"backend-mask-{tuple(mask.shape)}-{mask.dtype}", "sparge backend: an attention mask "
                     "of shape %s (%s) is not a key-padding mask; those calls use dense SDPA with the mask",
                     tuple(mask.shape), mask.dtype)
        return plan
    if plan is None:
        log_once(logger, f"backend-mask-{tuple(mask.shape)}-{mask.dtype}", "sparge backend: an attention mask of "
                 "shape %s (%s) is not a key-padding mask; those calls use dense SDPA with the mask",
                 tuple(mask.shape), mask.dtype)
    if len(cache) >= 16:
        cache.clear()
    cache[key] = (mask, plan)  # holding the mask keeps its memory from being reused under the same key
    return plan


def _read_key_padding(mask: torch.Tensor, batch: int, seq_q: int, seq_k: int, pair_ok: bool):
    m = mask
    if m.shape[-1] != seq_k or m.ndim not in (2, 3, 4):
        return None
    if m.ndim == 4:
        if m.shape[1] != 1:
            return None
        m = m[:, 0]
    if m.ndim == 3:
        if m.shape[1] == 1:
            m = m[:, 0]
        elif pair_ok and m.shape[1] == seq_q:
            m = m[:, 0]  # the family declares m[i, j] = valid[i] & valid[j]; row 0 is a visual (valid) query
        else:
            return None
    if m.shape[0] not in (1, batch):
        return None
    m = m.detach()
    if m.dtype == torch.bool:
        valid = m
    else:
        valid = m == 0
        if not bool(((m == 0) | (m <= MASKED_BELOW)).all()):
            return None  # a bias mask, not a padding mask
    valid = valid.expand(batch, seq_k).cpu()
    groups: List[_Group] = []
    seen: Dict[bytes, int] = {}
    members: List[List[int]] = []
    for b in range(batch):
        row = valid[b]
        signature = row.numpy().tobytes()
        if signature not in seen:
            seen[signature] = len(members)
            members.append([])
        members[seen[signature]].append(b)
    device = mask.device
    for samples in members:
        row = valid[samples[0]]
        if not bool(row.any()):
            return None  # a sample with no valid key: leave it to SDPA's own semantics
        valid_idx = torch.nonzero(row).flatten()
        padded_idx = torch.nonzero(~row).flatten()
        groups.append(_Group(torch.tensor(samples, device=device), valid_idx.to(device), padded_idx.to(device),
                             valid_idx.tolist()))
    return KeyPaddingPlan(groups, seq_k)


def _attend_key_padded(query, key, value, plan: KeyPaddingPlan, layer: LayerCall, text, scale):
    """Sparse attention over the valid keys of each group; padded query rows attend densely to the valid keys."""
    out = torch.empty_like(query)
    sparsities, backend = [], None
    whole_batch = len(plan.groups) == 1
    for group in plan.groups:
        q, k, v = (x if whole_batch else x.index_select(0, group.samples) for x in (query, key, value))
        if group.prefix:
            n = len(group.compact)
            q_valid, k_valid, v_valid = q[:, :n], k[:, :n], v[:, :n]
        else:
            q_valid, k_valid, v_valid = (x.index_select(1, group.valid) for x in (q, k, v))
        start, end = plan.compact_range(group, *text)
        visual_offset = end if start == 0 and end > 0 else 0
        part, sparsity, backend = attend(q_valid, k_valid, v_valid, layer=layer, layout="BSHD",
                                         keep_ranges=keep_ranges_for(layer, start, end), visual_offset=visual_offset,
                                         scale=scale)
        sparsities.append(sparsity)
        if group.prefix and not group.padded.numel():
            rows = part.to(q.dtype)
        elif group.prefix:
            pad = native_backend()(q[:, len(group.compact):], k_valid, v_valid, scale=scale)
            rows = torch.cat([part.to(q.dtype), pad.to(q.dtype)], dim=1)
        else:
            rows = torch.empty_like(q)
            rows.index_copy_(1, group.valid, part.to(q.dtype))
            if group.padded.numel():
                pad = native_backend()(q.index_select(1, group.padded), k_valid, v_valid, scale=scale)
                rows.index_copy_(1, group.padded, pad.to(q.dtype))
        if whole_batch:
            out = rows
        else:
            out.index_copy_(0, group.samples, rows)
    return out, sparsities, backend


__all__ = ["BACKEND_NAME", "SUPPORTED_DIFFUSERS", "register_sparge_backend", "sparge_dispatch_attention"]
