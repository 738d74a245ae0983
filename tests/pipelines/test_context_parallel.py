"""Sparge attention under diffusers' context parallelism, on the CPU: two gloo processes run a tiny Wan transformer
with Ulysses (the real diffusers hooks and all-to-alls) and are compared to one process; ring and indivisible head
counts are refused with one line.

What the two-process test shows, per rank:
    - dense attention under the Sparge plan equals the single-process transformer (the plan splits and gathers
      correctly, with and without the Hilbert order);
    - the q each rank's sparse attention sees is the single-process q of its heads over ALL tokens, and those tokens
      are in curve order: equal to the row-major q permuted by the Hilbert `BoundaryOrder`;
    - the Sparge output (topk 0.5: sparse) equals the single-process Sparge output (same block maps per head);
    - Wan 2.2 TI2V's per-token timesteps move with the tokens before the split;
    - a model parallelised with its own plan (rotary split before Sparge's hook) keeps row-major order (no wrong
      order) and still matches;
    - Flux: after the all-to-all a rank holds ``[txt_0, img_0, txt_1, img_1]``; its image tokens are in curve order
      and both text chunks are kept.
"""

import contextlib
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from sparge_diffusers import SpargeConfig, apply_sparge, remove_sparge
from sparge_diffusers.integration import get_sparge_context
from sparge_diffusers.kernels.reference import cosine_similarity
from sparge_diffusers.pipelines.tiny import tiny_transformer, transformer_inputs

GRID = (3, 8, 16)  # 384 visual tokens: 192 per rank, six 64-token blocks in all
WORLD = 2
# fp32 on the CPU: the ranks' projections run on [B, S / 2, C] instead of [B, S, C] and the permutation changes the
# summation order; measured max relative error 0 .. 3e-7 on this model
CP_RTOL = 2e-6
# topk 0.5, bf16 P·V: the same blocks are kept per head on both sides, so only rounding differs (measured ~1e-7);
# the bound leaves room for a near-tie block flipping
SPARSE_MIN_COSINE = 0.999
SPARSE = SpargeConfig(topk=0.5, sim_threshold=None, precision="bf16", block_n=64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _gloo_group(rank: int, port: int):
    """This process as ``rank`` of a ``WORLD``-process gloo group on the CPU, torn down on exit."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _max_rel(out, ref):
    return float((out - ref).abs().max() / ref.abs().max())


class _Spy:
    """Records the q that `sparge_attn` gets (``[B, S, H, D]``, BSHD) in each call."""

    def __init__(self):
        import sparge_diffusers.sparse_call as sparse_call

        self.module, self.original, self.q, self.keep = sparse_call, sparse_call.sparge_attn, [], []
        spy = self

        def wrapped(q, k, v, **kwargs):
            spy.q.append(q.detach().clone())
            spy.keep.append(tuple(kwargs.get("keep_ranges") or ()))
            return spy.original(q, k, v, **kwargs)

        sparse_call.sparge_attn = wrapped

    def close(self):
        self.module.sparge_attn = self.original


def _forward(transformer, inputs):
    with torch.no_grad():
        return transformer(**inputs)[0]


def _worker(rank, port):
    from sparge_diffusers.parallel import _enable_on_cpu, enable_context_parallel
    from sparge_diffusers.token_order import BoundaryOrder

    with _gloo_group(rank, port):
        n = GRID[0] * GRID[1] * GRID[2]
        single = tiny_transformer("wan", num_layers=1)
        parallel = tiny_transformer("wan", num_layers=1)
        inputs = transformer_inputs(single, GRID)
        heads = single.config.num_attention_heads
        mine = slice(rank * heads // WORLD, (rank + 1) * heads // WORLD)

        # single process: stock, row-major q, Hilbert q and the Sparge output
        ref = _forward(single, inputs)
        spy = _Spy()
        apply_sparge(single, SpargeConfig(topk=1.0, sim_threshold=None, precision="bf16", reorder="none"))
        _forward(single, inputs)
        q_rowmajor = spy.q[-1]
        apply_sparge(single, SPARSE)
        ref_sparse = _forward(single, inputs)
        q_curve = spy.q[-1]
        remove_sparge(single)

        enable_context_parallel(parallel)
        assert _max_rel(_forward(parallel, inputs), ref) < CP_RTOL  # dense under the Sparge plan
        apply_sparge(parallel, SPARSE, collect_stats=True)
        spy.q.clear()
        out = _forward(parallel, inputs)
        assert get_sparge_context(parallel).current.permutation is not None
        (q_rank,) = spy.q
        assert q_rank.shape == (1, n, heads // WORLD, q_rowmajor.shape[-1])  # all tokens, this rank's heads
        order = BoundaryOrder(GRID, "hilbert", n, "cpu")
        assert _max_rel(q_rank, order.apply(q_rowmajor, dim=1)[:, :, mine]) < CP_RTOL  # curve order
        assert _max_rel(q_rank, q_curve[:, :, mine]) < CP_RTOL
        stats = get_sparge_context(parallel).stats.rows
        assert [r["policy"] for r in stats] == ["sparse"] and stats[0]["seq_len"] == n
        assert cosine_similarity(out, ref_sparse) >= SPARSE_MIN_COSINE, float(cosine_similarity(out, ref_sparse))
        # topk = 1 under CP equals the stock single-process output
        apply_sparge(parallel, SpargeConfig(topk=1.0, sim_threshold=None, precision="bf16"))
        assert _max_rel(_forward(parallel, inputs), ref) < 1e-2  # bf16 P·V

        # Wan 2.2 TI2V: one timestep per token, split after the geometry hook put it in curve order
        ti2v = dict(inputs, timestep=torch.linspace(100, 900, n)[None, :])
        remove_sparge(parallel)
        ref_ti2v = _forward(single, ti2v)
        apply_sparge(parallel, SpargeConfig(topk=1.0, precision="bf16", reorder="hilbert", sim_threshold=None))
        assert _max_rel(_forward(parallel, ti2v), ref_ti2v) < 1e-2
        remove_sparge(parallel)

        # the model's own plan splits the rotary embeddings before Sparge's hook: row-major order, still correct
        own = tiny_transformer("wan", num_layers=1)
        from diffusers import ContextParallelConfig

        _enable_on_cpu(own, ContextParallelConfig(ulysses_degree=WORLD), own._cp_plan)
        apply_sparge(own, SpargeConfig(topk=1.0, sim_threshold=None, precision="bf16", reorder="hilbert"))
        out_own = _forward(own, inputs)
        assert get_sparge_context(own).current.permutation is None
        assert _max_rel(out_own, ref) < 1e-2
        spy.close()


@pytest.mark.slow
def test_ulysses_two_gloo_ranks_match_one_process_in_curve_order():
    # fork: the children inherit the imported modules (a spawned child would import torch and diffusers again)
    mp.start_processes(_worker, args=(_free_port(),), nprocs=WORLD, join=True, start_method="fork")


FLUX_GRID = (32, 24)  # 768 image tokens + 16 text: [8 text, 384 image] per rank


def _flux_worker(rank, port):
    from sparge_diffusers.parallel import enable_context_parallel

    with _gloo_group(rank, port):
        single = tiny_transformer("flux", num_layers=1)
        parallel = tiny_transformer("flux", num_layers=1)
        inputs = transformer_inputs(single, FLUX_GRID)
        text, image = inputs["encoder_hidden_states"].shape[1], FLUX_GRID[0] * FLUX_GRID[1]
        heads = single.config.num_attention_heads
        mine = slice(rank * heads // WORLD, (rank + 1) * heads // WORLD)
        ref = _forward(single, inputs)
        spy = _Spy()
        apply_sparge(single, SpargeConfig(topk=1.0, sim_threshold=None, precision="bf16", reorder="hilbert"))
        _forward(single, inputs)
        q_curve = spy.q[0]  # the double-stream block: [txt, img in curve order]
        remove_sparge(single)

        enable_context_parallel(parallel)
        assert _max_rel(_forward(parallel, inputs), ref) < CP_RTOL
        apply_sparge(parallel, SPARSE, collect_stats=True)
        spy.q.clear(), spy.keep.clear()
        out = _forward(parallel, inputs)
        t, n = text // WORLD, image // WORLD
        layout = torch.cat([torch.cat([torch.arange(r * t, (r + 1) * t), text + torch.arange(r * n, (r + 1) * n)])
                            for r in range(WORLD)])  # single-process position of each position after all-to-all
        assert _max_rel(spy.q[0], q_curve[:, layout][:, :, mine]) < CP_RTOL
        assert spy.keep[0] == ((0, t), (t + n, 2 * t + n))  # every rank chunk's text is kept
        rows = get_sparge_context(parallel).stats.rows
        assert len(rows) == 3 and {r["policy"] for r in rows} == {"sparse"}  # 1 double- + 2 single-stream blocks
        assert get_sparge_context(parallel).stats.mean_sparsity > 0.3
        assert cosine_similarity(out, ref) >= 0.99
        apply_sparge(parallel, SpargeConfig(topk=1.0, sim_threshold=None, precision="bf16"))
        assert _max_rel(_forward(parallel, inputs), ref) < 1e-2
        spy.close()


@pytest.mark.slow
def test_flux_ranks_hold_interleaved_text_and_curve_ordered_images():
    mp.start_processes(_flux_worker, args=(_free_port(),), nprocs=WORLD, join=True, start_method="fork")


def _layer_call(transformer):
    from sparge_diffusers.context import LayerCall, SpargeContext, active_layer

    layer = LayerCall(SpargeContext(SpargeConfig()), 0, "blocks.0.attn1")
    active_layer.call = layer
    return active_layer


def test_ring_is_refused_naming_ulysses():
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    from sparge_diffusers.backend import register_sparge_backend, sparge_dispatch_attention
    from sparge_diffusers.parallel import check_context_parallel

    register_sparge_backend()
    q = torch.randn(1, 64, 2, 64)
    slot = _layer_call(None)
    try:
        with pytest.raises(ValueError, match="use Ulysses"):
            sparge_dispatch_attention(q, q, q, _parallel_config=ParallelConfig(ContextParallelConfig(ring_degree=2)))
    finally:
        slot.call = None
    with pytest.raises(ValueError, match="--context-parallel ulysses"):
        check_context_parallel(None, "ring", 2)  # the mode is checked before the model
    with pytest.raises(ValueError, match="context_parallel must be one of"):
        check_context_parallel(None, "tensor", 2)


def test_world_size_must_divide_the_heads_unless_ulysses_anything():
    from sparge_diffusers.parallel import check_context_parallel

    transformer = tiny_transformer("wan", variant="14b", num_layers=1)  # 3 heads
    with pytest.raises(ValueError, match="does not divide the 3 attention heads.*ulysses_anything"):
        check_context_parallel(transformer, "ulysses", 2)
    check_context_parallel(transformer, "ulysses", 2, ulysses_anything=True)
    check_context_parallel(transformer, "ulysses", 3)


def test_families_without_a_sparge_plan_are_refused():
    from sparge_diffusers.parallel import check_context_parallel, cp_families, sparge_cp_plan

    assert "wan" in cp_families()
    transformer = tiny_transformer("ltx", num_layers=1)
    with pytest.raises(ValueError, match="not supported for ltx"):
        check_context_parallel(transformer, "ulysses", 2)
    plan = sparge_cp_plan(tiny_transformer("wan", num_layers=1))
    assert "rope" not in plan and "rotary_emb" in plan["blocks.*"]  # the rotary split moved after Sparge's hook


def test_backend_declares_context_parallel_support():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    from sparge_diffusers.backend import register_sparge_backend

    member = register_sparge_backend()
    assert _AttentionBackendRegistry._is_context_parallel_available(member)
