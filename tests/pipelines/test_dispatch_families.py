"""The dispatch families (Wan, HunyuanVideo, HunyuanVideo 1.5, LTX, Qwen-Image, Flux.2) through the "sparge"
attention backend: exact at topk = 1 in every token order, sparse at topk = 0.5, cross-attention left stock, masks
honoured, the backend reachable through diffusers' own API, and a compiled transformer without graph breaks."""

import logging

import pytest
import torch
from sparge_diffusers.kernels.reference import cosine_similarity
from sparge_diffusers.pipelines.tiny import tiny_transformer, transformer_inputs

from sparge_diffusers import SpargeConfig, apply_sparge, get_sparge_stats, remove_sparge
from sparge_diffusers.integration import get_sparge_context

# fp32 on the CPU: a permutation of the tokens changes only the summation order (measured 1.7e-7 .. 3.0e-7 max
# relative error on these tiny models, like the copied-processor families)
REORDER_RTOL = 2e-6
# see test_sparse.py: topk = 0.5 with the text always kept; measured 0.40 .. 0.44 on these grids
MIN_SPARSITY = 0.3
MIN_COSINE = 0.99

CASES = [("wan", "1.3b"), ("wan", "14b"), ("wan", "i2v"), ("hunyuan_video", None), ("hunyuan_video15", None),
         ("ltx", None), ("qwenimage", None), ("flux2", None)]
IDS = [f"{f}-{v}" if v else f for f, v in CASES]
GRIDS = {"qwenimage": (16, 24), "flux2": (16, 24)}
VIDEO_GRID = (3, 8, 16)
SPARSE = SpargeConfig(topk=0.5, sim_threshold=None, precision="bf16", block_n=64)


def _setup(family, variant, **kwargs):
    transformer = tiny_transformer(family, variant=variant, num_layers=1)
    return transformer, transformer_inputs(transformer, GRIDS.get(family, VIDEO_GRID), **kwargs)


def _forward(transformer, inputs):
    with torch.no_grad():
        return transformer(**inputs)[0]


def _max_rel(out, ref):
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("family,variant", CASES, ids=IDS)
def test_exact_in_every_order_and_sparse_at_half(family, variant):
    transformer, inputs = _setup(family, variant)
    ref = _forward(transformer, inputs)
    for reorder in ("none", "rowmajor", "hilbert"):
        # θ = 1 keeps every block on the reference path: the whole sparse machinery runs and must give stock
        config = SpargeConfig(topk=0.5, sim_threshold=1.0, predictor="sparge", precision="bf16", reorder=reorder)
        apply_sparge(transformer, config, collect_stats=True)
        out = _forward(transformer, inputs)
        rows = get_sparge_stats(transformer).rows
        assert rows and {r["backend"] for r in rows} == {"reference"} and {r["policy"] for r in rows} == {"sparse"}
        perm = get_sparge_context(transformer).current.permutation
        assert (perm is not None) == (reorder == "hilbert")
        assert _max_rel(out, ref) < REORDER_RTOL, reorder
    apply_sparge(transformer, SPARSE, collect_stats=True)
    out = _forward(transformer, inputs)
    stats = get_sparge_stats(transformer)
    assert stats.mean_sparsity > MIN_SPARSITY
    assert cosine_similarity(out, ref) >= MIN_COSINE
    remove_sparge(transformer)
    assert torch.equal(_forward(transformer, inputs), ref)


def test_wan_cross_attention_stays_stock():
    transformer, inputs = _setup("wan", "i2v")
    apply_sparge(transformer, SPARSE, collect_stats=True)
    _forward(transformer, inputs)
    names = {r["name"] for r in get_sparge_stats(transformer).rows}
    assert names == {"blocks.0.attn1"}
    assert transformer.blocks[0].attn2.processor._attention_backend is None
    remove_sparge(transformer)


def test_wan22_per_token_timestep_moves_with_the_tokens():
    """Wan 2.2 TI2V passes one timestep per token: the time embeddings are permuted with the hidden states."""
    transformer, inputs = _setup("wan", "1.3b")
    n = VIDEO_GRID[0] * VIDEO_GRID[1] * VIDEO_GRID[2]
    inputs["timestep"] = torch.linspace(100, 900, n)[None, :]
    ref = _forward(transformer, inputs)
    apply_sparge(transformer, SpargeConfig(topk=1.0, precision="bf16", reorder="hilbert"))
    out = _forward(transformer, inputs)
    assert get_sparge_context(transformer).current.permutation is not None
    assert _max_rel(out, ref) < REORDER_RTOL
    remove_sparge(transformer)


@pytest.mark.parametrize("family", ["hunyuan_video", "qwenimage"])
def test_text_padding_mask_is_honoured_in_the_sparse_path(family):
    """Prompts with 10 and 16 valid text tokens (text last for HunyuanVideo, first for Qwen-Image): the padded keys
    are removed in the sparse path, which with every block kept equals stock SDPA with the mask."""
    transformer, inputs = _setup(family, None, batch_size=2, text_lens=[10, 16])
    ref = _forward(transformer, inputs)
    config = SpargeConfig(topk=0.5, sim_threshold=1.0, predictor="sparge", precision="bf16")
    apply_sparge(transformer, config, collect_stats=True)
    out = _forward(transformer, inputs)
    rows = get_sparge_stats(transformer).rows
    assert rows and {r["policy"] for r in rows} == {"sparse"}
    assert _max_rel(out, ref) < REORDER_RTOL
    remove_sparge(transformer)


def _qkv(batch=2, seq=200, heads=2, dim=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, seq, heads, dim, generator=gen) for _ in range(3)]


def _sdpa(q, k, v, mask=None):
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           attn_mask=mask)
    return out.transpose(1, 2)


def test_backend_key_padding_mask_against_sdpa():
    """Key-padding masks (bool [B, 1, 1, S], additive [B, S]) give SDPA's result, padded query rows included."""
    from sparge_diffusers.backend import sparge_dispatch_attention
    from sparge_diffusers.context import LayerCall, SpargeContext, active_layer

    q, k, v = _qkv()
    valid = torch.arange(200)[None, :] < torch.tensor([150, 200])[:, None]
    context = SpargeContext(SpargeConfig(topk=0.5, sim_threshold=1.0, predictor="sparge", precision="bf16"),
                            collect_stats=True)
    active_layer.call = LayerCall(context, 0, "probe")
    try:
        for mask in (valid[:, None, None, :], (~valid).float() * -1e9):
            out = sparge_dispatch_attention(q, k, v, attn_mask=mask)
            bool_mask = valid[:, None, None, :]
            torch.testing.assert_close(out, _sdpa(q, k, v, bool_mask), rtol=1e-5, atol=1e-5)
        assert {r["policy"] for r in context.stats.rows} == {"sparse"}
        # at topk = 0.5 the padded keys are still never attended: changing them changes nothing
        context.config = SpargeConfig(topk=0.5, sim_threshold=None, precision="bf16", block_n=64)
        k2, v2 = k.clone(), v.clone()
        k2[0, 150:], v2[0, 150:] = 100.0, -100.0
        out_a = sparge_dispatch_attention(q, k, v, attn_mask=valid[:, None, None, :])
        out_b = sparge_dispatch_attention(q, k2, v2, attn_mask=valid[:, None, None, :])
        torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    finally:
        active_layer.call = None


def test_backend_other_masks_and_calls_go_dense(caplog):
    """A general mask, is_causal, and cross-attention are never ignored: dense SDPA, one log line."""
    from sparge_diffusers._logging import reset_log_once
    from sparge_diffusers.backend import sparge_dispatch_attention
    from sparge_diffusers.context import LayerCall, SpargeContext, active_layer

    reset_log_once()
    q, k, v = _qkv()
    bias = torch.randn(2, 1, 200, 200)
    context = SpargeContext(SPARSE, collect_stats=True)
    active_layer.call = LayerCall(context, 0, "probe")
    try:
        with caplog.at_level(logging.WARNING, logger="sparge_diffusers.backend"):
            torch.testing.assert_close(sparge_dispatch_attention(q, k, v, attn_mask=bias), _sdpa(q, k, v, bias))
            sparge_dispatch_attention(q, k, v, attn_mask=bias)
            causal = sparge_dispatch_attention(q, k, v, is_causal=True)
            sparge_dispatch_attention(q, k[:, :50], v[:, :50])
        expected = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)
        torch.testing.assert_close(causal, expected)
        assert [r["policy"] for r in context.stats.rows] == ["masked", "masked", "unsupported", "cross"]
        assert sum("not a key-padding mask" in r.message for r in caplog.records) == 1
    finally:
        active_layer.call = None


def test_diffusers_api_accepts_the_backend():
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _AttentionBackendRegistry,
        attention_backend,
        dispatch_attention_fn,
    )

    active = _AttentionBackendRegistry._active_backend  # set_attention_backend also sets the global one

    q, k, v = _qkv(batch=1, seq=300)
    with attention_backend("sparge"):
        out = dispatch_attention_fn(q, k, v)
    assert cosine_similarity(out, _sdpa(q, k, v)) > 0.9
    transformer, inputs = _setup("ltx", None)
    ref = _forward(transformer, inputs)
    transformer.set_attention_backend("sparge")
    assert all(m.processor._attention_backend == AttentionBackendName("sparge")
               for m in transformer.modules() if hasattr(m, "processor"))
    try:
        out = _forward(transformer, inputs)
        assert cosine_similarity(out, ref) > 0.99
    finally:
        transformer.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(active)


def test_registration_skips_an_unsupported_version(monkeypatch, caplog):
    import importlib.metadata

    from sparge_diffusers import backend
    from sparge_diffusers._logging import reset_log_once

    reset_log_once()
    monkeypatch.setattr(backend, "_state", {"member": None, "tried": False})
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.99.0")
    with caplog.at_level(logging.WARNING, logger="sparge_diffusers.backend"):
        assert backend.register_sparge_backend() is None
    assert any("outside the versions" in r.message for r in caplog.records)


def test_family_for_pipeline_class():
    from sparge_diffusers import pipelines

    family, cls = pipelines.family_for_pipeline_class("WanPipeline")
    assert family == "wan" and cls.__name__ == "SpargeWanPipeline"
    from diffusers import WanPipeline

    assert issubclass(cls, WanPipeline)
    assert pipelines.family_for_pipeline_class("StableDiffusionPipeline") is None
    assert {"HunyuanVideoPipeline", "LTXPipeline", "QwenImagePipeline", "Flux2Pipeline", "FluxPipeline",
            "CogVideoXPipeline", "MochiPipeline", "HunyuanVideo15Pipeline"} <= set(pipelines.pipeline_class_names())


@pytest.mark.parametrize("family", ["wan", "hunyuan_video", "ltx", "qwenimage", "flux2"])
def test_compiles_without_graph_breaks(family):
    """torch.compile(fullgraph=True) of the transformer with Sparge and Hilbert order at the boundary: any graph
    break raises, and the compiled output equals the eager one. Padded prompts (10 of 16 text tokens valid) make
    HunyuanVideo and Qwen-Image pass masks, which a compiled graph hands to one opaque op. (HunyuanVideo 1.5's stock
    forward has a data-dependent branch, so it is not in this list.)"""
    transformer, inputs = _setup(family, None if family != "wan" else "1.3b", text_lens=[10])
    apply_sparge(transformer, SPARSE)  # the default check_finite: its end-of-forward read must not break the graph
    eager = _forward(transformer, inputs)
    compiled = torch.compile(transformer, fullgraph=True, backend="eager")
    out = _forward(compiled, inputs)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    remove_sparge(transformer)


def test_remove_restores_a_user_backend():
    """A backend the user chose before apply_sparge comes back exactly; stock layers (cross-attention) keep it."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    transformer, inputs = _setup("ltx", None)
    try:
        transformer.set_attention_backend("_native_math")
        apply_sparge(transformer, SPARSE)
        block = transformer.transformer_blocks[0]
        assert block.attn1.processor._attention_backend == AttentionBackendName("sparge")
        assert block.attn2.processor._attention_backend == AttentionBackendName("_native_math")
        remove_sparge(transformer)
        assert {m.processor._attention_backend for m in transformer.modules() if hasattr(m, "processor")} == {
            AttentionBackendName("_native_math")}
    finally:
        _AttentionBackendRegistry.set_active_backend(active)


def test_backend_outside_apply_sparge_keeps_no_state_across_calls():
    """Outside apply_sparge one LayerCall serves the calls of every layer: its guard must not hand one layer's drop
    masses or block map to the next (the error budget measures, and the map is predicted, in every call)."""
    from sparge_diffusers import attention_families as F
    from sparge_diffusers import sparge_attn
    from sparge_diffusers.backend import _standalone_layer, sparge_dispatch_attention

    layer = _standalone_layer()
    assert layer.shared
    geo = F.scaled_geometry("cogvideox", 0.3)
    calls = [F.family_qkv("clip", geo, heads=[0, 5], seed=seed) for seed in (4, 9)]
    # diffusers hands the backend [B, S, H, D]
    outs = [sparge_dispatch_attention(*(x.transpose(1, 2) for x in qkv)) for qkv in calls * 2]
    assert layer.guard.measured == 0 and layer.guard.maps_reused == 0
    config = SpargeConfig()  # what the standalone layer runs
    for out, qkv in zip(outs, calls * 2):
        expected = sparge_attn(*qkv, config=config)
        torch.testing.assert_close(out.transpose(1, 2), expected, rtol=0, atol=0)
