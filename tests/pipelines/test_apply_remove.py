"""apply_sparge / remove_sparge: processors and hooks in and out, standalone processors, unsupported models,
coexistence with accelerate / diffusers hooks, torch.compile."""

import pytest
import torch
from sparge_diffusers.pipelines.tiny import TINY_GRIDS, tiny_transformer, transformer_inputs

from sparge_diffusers import (
    SpargeConfig,
    SpargeProcessor,
    apply_sparge,
    get_sparge_stats,
    remove_sparge,
)

DENSE = SpargeConfig(topk=1.0, precision="bf16")
FAMILIES = ["cogvideox", "mochi", "flux"]


def _forward(transformer, inputs):
    with torch.no_grad():
        return transformer(**inputs)[0]


def _processors(transformer):
    return {name: m.processor for name, m in transformer.named_modules() if hasattr(m, "processor")}


def _uses_sparge(processor) -> bool:
    """A copied Sparge processor, or a stock dispatch processor with the "sparge" backend."""
    backend = getattr(processor, "_attention_backend", None)
    return isinstance(processor, SpargeProcessor) or getattr(backend, "value", None) == "sparge"


def _backends(transformer):
    return {name: getattr(p, "_attention_backend", None) for name, p in _processors(transformer).items()}


def _hook_counts(transformer):
    return {name: (len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in transformer.named_modules()}


SMALL_GRIDS = {"cogvideox": (2, 8, 10), "mochi": (2, 8, 10), "flux": (12, 14)}


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_restores_everything(family):
    transformer = tiny_transformer(family)
    inputs = transformer_inputs(transformer, SMALL_GRIDS[family])
    ref = _forward(transformer, inputs)
    before, hooks_before = _processors(transformer), _hook_counts(transformer)
    backends_before = _backends(transformer)

    apply_sparge(transformer, SpargeConfig(topk=0.5, sim_threshold=None, precision="bf16"))
    assert all(_uses_sparge(p) for p in _processors(transformer).values())
    assert _hook_counts(transformer) != hooks_before
    sparse = _forward(transformer, inputs)
    assert not torch.equal(sparse, ref)

    remove_sparge(transformer)
    after = _processors(transformer)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert _backends(transformer) == backends_before
    assert _hook_counts(transformer) == hooks_before
    assert not hasattr(transformer, "_sparge_state")
    assert torch.equal(_forward(transformer, inputs), ref)


def test_apply_on_a_pipeline_and_twice():
    from sparge_diffusers.pipelines.tiny import tiny_pipeline

    pipe, _ = tiny_pipeline("flux")
    stock = _processors(pipe.transformer)
    apply_sparge(pipe, DENSE)
    apply_sparge(pipe, DENSE.replace(topk=0.5))  # replaces the first application
    from sparge_diffusers.integration import get_sparge_context

    assert get_sparge_context(pipe).config.topk == 0.5
    assert all(_uses_sparge(p) for p in _processors(pipe.transformer).values())
    remove_sparge(pipe)
    assert all(_processors(pipe.transformer)[k] is stock[k] for k in stock)
    remove_sparge(pipe)  # idempotent


def test_each_pipeline_call_starts_with_fresh_layer_state():
    """apply_sparge on a pipeline wraps its scheduler's set_timesteps (signature kept: diffusers inspects it): each
    call forgets the drop masses and block maps of the last video, and remove_sparge puts the method back."""
    import inspect

    from sparge_diffusers.integration import get_sparge_context
    from sparge_diffusers.pipelines.tiny import tiny_call_size, tiny_pipeline

    pipe, call_kwargs = tiny_pipeline("cogvideox")
    own = inspect.signature(pipe.scheduler.set_timesteps)
    apply_sparge(pipe, SpargeConfig(target_error=0.05, sim_threshold=None, precision="bf16", block_n=64))
    assert inspect.signature(pipe.scheduler.set_timesteps) == own
    guards = [layer.guard for layer in get_sparge_context(pipe).layers()]
    assert guards
    pipe(**call_kwargs, num_inference_steps=2, output_type="latent", **tiny_call_size("cogvideox"),
         generator=torch.Generator().manual_seed(0))
    assert all(guard._slots for guard in guards) and sum(guard.measured for guard in guards) > 0
    measured = [guard.measured for guard in guards]
    pipe.scheduler.set_timesteps(2)  # what the next pipeline call does first
    assert not any(guard._slots for guard in guards)
    assert [guard.measured for guard in guards] == measured  # the statistics stay
    remove_sparge(pipe)
    assert "set_timesteps" not in pipe.scheduler.__dict__


@pytest.mark.parametrize("family", ["cogvideox", "flux"])
def test_standalone_set_attn_processor(family):
    """``transformer.set_attn_processor(SpargeProcessor(config))`` works without apply_sparge (no reorder, no
    geometry hook); remove_sparge puts the stock processor class back."""
    transformer = tiny_transformer(family)
    stock_class = type(next(iter(_processors(transformer).values())))
    inputs = transformer_inputs(transformer, SMALL_GRIDS[family])
    ref = _forward(transformer, inputs)
    transformer.set_attn_processor(SpargeProcessor(DENSE, collect_stats=True))
    assert torch.equal(_forward(transformer, inputs), ref)
    rows = get_sparge_stats(transformer).rows
    n_layers = len(_processors(transformer))
    assert sorted({r["layer"] for r in rows}) == list(range(n_layers))
    assert all(r["reorder"] == "none" for r in rows)

    transformer.set_attn_processor(SpargeProcessor(SpargeConfig(topk=0.5, sim_threshold=None), collect_stats=True))
    _forward(transformer, inputs)
    assert get_sparge_stats(transformer).mean_sparsity > 0.1  # 3 key blocks per row on this small grid: 1/6
    remove_sparge(transformer)
    assert all(type(p) is stock_class for p in _processors(transformer).values())
    assert torch.equal(_forward(transformer, inputs), ref)


def test_flux_single_blocks_get_the_text_range_without_hooks(monkeypatch):
    import sparge_diffusers.sparse_call as integration

    seen = []
    real = integration.sparge_attn
    monkeypatch.setattr(integration, "sparge_attn",
                        lambda q, k, v, **kw: seen.append(kw["keep_ranges"]) or real(q, k, v, **kw))
    transformer = tiny_transformer("flux")
    transformer.set_attn_processor(SpargeProcessor(SpargeConfig(topk=0.5, sim_threshold=None)))
    _forward(transformer, transformer_inputs(transformer, TINY_GRIDS["flux"]))
    assert len(seen) == 3 and all(tuple(r) == ((0, 16),) for r in seen)


def test_unsupported_transformer_raises():
    with pytest.raises(ValueError, match="does not support Linear"):
        apply_sparge(torch.nn.Linear(4, 4))
    from diffusers import SD3Transformer2DModel

    sd3 = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                pooled_projection_dim=16, out_channels=4)
    with pytest.raises(ValueError, match="does not support SD3Transformer2DModel"):
        apply_sparge(sd3)
    with pytest.raises(ValueError, match="no transformer"):
        apply_sparge(type("Pipe", (), {"transformer": None})())


def test_foreign_processor_raises():
    from diffusers.models.attention_processor import AttnProcessor2_0

    transformer = tiny_transformer("cogvideox")
    transformer.transformer_blocks[1].attn1.set_processor(AttnProcessor2_0())
    with pytest.raises(ValueError, match="transformer_blocks.1.attn1 .*AttnProcessor2_0"):
        apply_sparge(transformer)
    assert not any(isinstance(p, SpargeProcessor) for p in _processors(transformer).values())


def test_other_hooks_are_left_alone():
    """accelerate's model offload hook, diffusers' first-block cache and a user's torch hook survive
    apply_sparge / remove_sparge, and the pipeline output with them equals stock-with-them at topk = 1."""
    from diffusers import FirstBlockCacheConfig
    from sparge_diffusers.pipelines.tiny import tiny_call_size, tiny_pipeline

    pipe, call_kwargs = tiny_pipeline("flux")
    pipe.enable_model_cpu_offload(device="cpu")
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    user_calls = []
    pipe.transformer.register_forward_pre_hook(lambda m, a: user_calls.append(1))
    first_block_registry = pipe.transformer.transformer_blocks[0]._diffusers_hook

    def run():
        out = pipe(**call_kwargs, num_inference_steps=3, output_type="latent", **tiny_call_size("flux"),
                   generator=torch.Generator().manual_seed(0))
        return out.images

    ref = run()
    apply_sparge(pipe, DENSE, collect_stats=True)
    out = run()
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    assert len(get_sparge_stats(pipe).rows) > 0
    remove_sparge(pipe)
    assert type(pipe.transformer._hf_hook).__name__ == "CpuOffload"  # diffusers re-arms it after every call
    assert pipe.transformer.transformer_blocks[0]._diffusers_hook is first_block_registry
    assert len(user_calls) == 6
    assert torch.equal(run(), ref)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile(backend):
    """A compiled transformer with Sparge (and Hilbert order at the boundary) runs and matches stock at topk = 1;
    the geometry hook runs eagerly (graph break), the attention layers are traced."""
    transformer = tiny_transformer("flux")
    inputs = transformer_inputs(transformer, TINY_GRIDS["flux"])
    ref = _forward(transformer, inputs)
    apply_sparge(transformer, DENSE, collect_stats=True)
    compiled = torch.compile(transformer, backend=backend)
    out = _forward(compiled, inputs)
    assert float((out - ref).abs().max() / ref.abs().max()) < 2e-6
    inputs["timestep"] = inputs["timestep"] * 0.5
    _forward(compiled, inputs)
    assert len(get_sparge_stats(transformer).rows) == 0  # stats are not recorded while compiled
    remove_sparge(compiled)  # accepts the compiled wrapper
    assert not hasattr(transformer, "_sparge_state")


@pytest.mark.parametrize("family", ["cogvideox", "flux"])
def test_fused_qkv_projections(family):
    """After ``fuse_qkv_projections()`` the Sparge processor uses the fused projection like the stock fused one."""
    transformer = tiny_transformer(family)
    inputs = transformer_inputs(transformer, SMALL_GRIDS[family])
    ref = _forward(transformer, inputs)
    transformer.fuse_qkv_projections()
    fused = _processors(transformer)
    apply_sparge(transformer, DENSE)
    out = _forward(transformer, inputs)
    assert float((out - ref).abs().max() / ref.abs().max()) < 2e-6
    remove_sparge(transformer)
    assert all(_processors(transformer)[k] is fused[k] for k in fused)


@pytest.mark.parametrize("family", ["cogvideox", "mochi"])
def test_copied_processor_families_compile_whole_and_keep_their_layer(family, monkeypatch):
    """The families with a copied processor (CogVideoX, Mochi) keep one LayerCall per layer: its BudgetGuard carries
    the drop masses from call to call, and no LayerCall is made while torch.compile traces (that was a graph break
    in every layer, and 8 recompiles later dynamo's recompile limit, on CogVideoX-2b on an H200)."""
    transformer = tiny_transformer(family)
    inputs = transformer_inputs(transformer, SMALL_GRIDS[family])
    apply_sparge(transformer, SpargeConfig(target_error=0.05, precision="bf16", block_n=64, check_finite=False))
    try:
        processor = next(p for p in _processors(transformer).values() if isinstance(p, SpargeProcessor))
        layer = processor.layer(None)
        for _ in range(3):
            _forward(transformer, inputs)
        assert processor.layer(None) is layer
        assert layer.guard.measured >= 1 and layer.guard.measured + layer.guard.reused >= 3
        remove_sparge(transformer)
        if family == "mochi":
            return  # Mochi's text length comes from its attention mask: data-dependent under torch.compile
        # (the CPU reference budget has data-dependent shapes; on CUDA it is inside the opaque custom op)
        apply_sparge(transformer, SpargeConfig(topk=0.5, precision="bf16", block_n=64, check_finite=False))
        eager = _forward(transformer, inputs)
        # no curve is built inside the trace (dynamo would trace the pure-Python Hilbert construction, which made
        # CogVideoX-2b's compile take minutes): the order comes from the token_order op
        from sparge_diffusers.hilbert import TokenPermutation

        traced = []
        original = TokenPermutation.for_grid.__func__
        monkeypatch.setattr(TokenPermutation, "for_grid", classmethod(
            lambda cls, *a, **kw: (traced.append(torch.compiler.is_compiling()), original(cls, *a, **kw))[1]))
        compiled = torch.compile(transformer, fullgraph=True, backend="eager")
        torch.testing.assert_close(_forward(compiled, inputs), eager, rtol=1e-5, atol=1e-5)
        assert not any(traced)
    finally:
        torch._dynamo.reset()
        remove_sparge(transformer)
