"""Block-map reuse (``SpargeConfig.map_reuse``): while a layer's error-budget drop masses are reused, its guard hands
the last predicted map to up to ``map_reuse`` calls, which attend with it instead of predicting. Checked on the guard
alone, through `sparge_attn` on the reference path, and on the Triton launch (interpreter on the CPU)."""

import pytest
import torch

from sparge_diffusers import SpargeConfig, sparge_attn
from sparge_diffusers import attention_families as F
from sparge_diffusers.budget_guard import BudgetGuard
from sparge_diffusers.kernels import reference as ref
from sparge_diffusers.kernels.dispatch import sparge_attention_launch
from sparge_diffusers.kernels.selection import Selection


def _agreeing_guard(key, drop, interval=8):
    """A guard whose drop masses for ``key`` agree long enough to be reused for ``interval - 1`` calls."""
    guard = BudgetGuard(max_interval=interval)
    while guard._slots.get(tuple(key)) is None or guard._slots[tuple(key)].interval < interval:
        guard.update(key, drop)
    return guard


def _masks(seed=0, shape=(1, 2, 3, 139)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=gen) < 0.4 for _ in range(2)]


def test_guard_serves_a_map_up_to_its_limit():
    key = (1, 2, 300, 300)
    guard = BudgetGuard()
    a, b = _masks()
    assert guard.reuse_map(key, 3, "reference") is None  # nothing stored yet
    guard.store_map(key, "reference", a)
    assert guard.reuse_map(key, 1, "reference") is None  # 1: never reused
    assert guard.reuse_map(key, 3, "triton") is None  # a map of another backend is not handed out
    assert torch.equal(guard.reuse_map(key, 3, "reference"), a)  # the 2nd call of this map
    assert torch.equal(guard.reuse_map(key, 3, "reference"), a)  # the 3rd
    assert guard.reuse_map(key, 3, "reference") is None  # served 3 calls: predict again
    guard.store_map(key, "reference", b)
    assert torch.equal(guard.reuse_map(key, 3, "reference"), b)
    assert guard.reuse_map((1, 2, 290, 290), 3, "reference") is None  # another call shape has its own
    assert guard.maps_reused == 3
    guard.reset()
    assert guard.reuse_map(key, 3, "reference") is None and guard.maps_reused == 0


def test_guard_keeps_a_kernel_map_as_bits_and_gives_it_back():
    from sparge_diffusers.kernels.lut import lut_from_mask

    mask, _ = _masks(shape=(2, 3, 5, 139))
    lut, counts = lut_from_mask(mask)
    lut[torch.arange(139) >= counts.unsqueeze(-1)] = 10 ** 6  # entries past counts may hold anything
    guard = BudgetGuard()
    guard.store_map((2, 3, 600, 600), "triton", (lut, counts))
    bits = guard._slots[(2, 3, 600, 600)].block_map[1]
    assert bits.dtype == torch.uint8 and bits.shape == (2, 3, 5, 18)  # 1/32 of the int32 list
    got_lut, got_counts = guard.reuse_map((2, 3, 600, 600), 2, "triton")
    assert torch.equal(got_counts, counts)
    listed = torch.arange(139) < counts.unsqueeze(-1)
    assert torch.equal(torch.where(listed, got_lut, 0), torch.where(listed, lut, 0))  # kept blocks, ascending


def test_the_default_reuses_maps_with_the_budget_only():
    assert SpargeConfig().map_reuse_calls == 2
    assert SpargeConfig(topk=0.5).map_reuse_calls == 1
    assert SpargeConfig(cdf_threshold=0.9).map_reuse_calls == 1
    assert SpargeConfig(topk=0.5, map_reuse=3).map_reuse_calls == 3
    assert SpargeConfig(map_reuse=1).map_reuse_calls == 1


def _inputs(seed=4, heads=(0, 5)):
    geo = F.scaled_geometry("cogvideox", 0.3)
    q, k, v = F.family_qkv("clip", geo, heads=list(heads), seed=seed)
    return q, k, v, geo


@pytest.mark.parametrize("limit", [1, 3])
def test_sparge_attn_attends_the_reused_map(limit):
    q, k, v, geo = _inputs()
    config = SpargeConfig(target_error=0.05, precision="bf16", keep_token_ranges=[geo.text_range], map_reuse=limit)
    key = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    first_drop = sparge_attn(q, k, v, config=config, return_stats=True)[1].drop_mass
    guard = _agreeing_guard(key, first_drop)
    _, first = sparge_attn(q, k, v, config=config, guard=guard, return_stats=True)  # reused drops: predicts, stores
    # later calls see other inputs (the next denoising step): a reused map is the first call's, not their own
    q2, k2, v2, _ = _inputs(seed=9)
    fresh = ref.naive_sparge_attention(q2, k2, v2, block_m=128, block_n=128, topk=None, keep_ranges=[geo.text_range],
                                       predictor="mixed", target_error=0.05, drop_mass=first_drop)[1]
    assert not torch.equal(fresh, first.block_map.mask)  # so the check below can tell them apart
    maps = [sparge_attn(q2, k2, v2, config=config, guard=guard, return_stats=True)[1].block_map.mask
            for _ in range(limit)]
    reused = [torch.equal(m, first.block_map.mask) for m in maps]
    assert reused == [True] * (limit - 1) + [False]  # served `limit` calls, then predicted again
    assert torch.equal(maps[-1], fresh)
    assert guard.maps_reused == limit - 1
    if limit > 1:  # the reused call's output is attention over the first map
        out = sparge_attn(q, k, v, config=config, guard=guard)  # the new map (from q2) serves this call
        expected = ref.naive_block_sparse_attention(q, k, v, fresh, block_m=128, block_n=128,
                                                    scale=q.shape[-1] ** -0.5, precision="bf16")
        torch.testing.assert_close(out, expected.to(out.dtype), rtol=0, atol=0)


def test_a_measuring_call_predicts_its_own_map():
    q, k, v, geo = _inputs()
    config = SpargeConfig(target_error=0.05, precision="bf16", keep_token_ranges=[geo.text_range], map_reuse=8)
    guard = BudgetGuard()
    for _ in range(2):  # interval 1: both calls measure their drop masses, so neither may reuse a map
        sparge_attn(q, k, v, config=config, guard=guard)
    assert guard.measured == 2 and guard.maps_reused == 0


def test_map_reuse_is_validated():
    for bad in (0, -1, 1.5, True, "2"):  # None is the default (2 with the budget, 1 otherwise)
        with pytest.raises(ValueError, match="map_reuse"):
            SpargeConfig(map_reuse=bad)


def test_triton_launch_attends_a_given_map(gen):
    s = 333
    q, k, v = [torch.randn(1, 2, s, 64, generator=gen).half() for _ in range(3)]
    q2, k2, v2 = [torch.randn(1, 2, s, 64, generator=gen).half() for _ in range(3)]
    args = (0.125, 128, 64, Selection("budget", 0.05), None, None, "int8-fp16", [0, 40], "lse")
    _, lut, counts, drop = sparge_attention_launch(q, k, v, *args)
    out, lut2, counts2, used = sparge_attention_launch(q2, k2, v2, *args, drop, (lut, counts))
    assert lut2 is lut and counts2 is counts and torch.equal(used, drop)
    mask = torch.zeros(1, 2, 3, 6, dtype=torch.bool)
    for h in range(2):
        for i in range(3):
            mask[0, h, i, lut[0, h, i, :counts[0, h, i]].long()] = True
    expected = ref.naive_block_sparse_attention(q2, k2, v2, mask, block_m=128, block_n=64, scale=0.125,
                                                precision="int8-fp16")
    torch.testing.assert_close(out.float(), expected.float(), rtol=0, atol=2e-2)
    # a map of another shape is not used: the call predicts its own
    _, lut3, _, _ = sparge_attention_launch(q2[:, :, :200], k2[:, :, :200], v2[:, :, :200], *args, None,
                                            (lut, counts))
    assert lut3.shape == (1, 2, 2, 4)


def test_topk_maps_are_reused_for_a_fixed_number_of_calls():
    q, k, v, geo = _inputs()
    q2, k2, v2, _ = _inputs(seed=9)
    config = SpargeConfig(topk=0.5, predictor="lse", precision="bf16", keep_token_ranges=[geo.text_range],
                          map_reuse=2)
    guard = BudgetGuard()
    own = {name: sparge_attn(*x, config=config, return_stats=True)[1].block_map.mask
           for name, x in (("a", (q, k, v)), ("b", (q2, k2, v2)))}
    assert not torch.equal(own["a"], own["b"])
    got = [sparge_attn(*x, config=config, guard=guard, return_stats=True)[1].block_map.mask
           for x in ((q, k, v), (q2, k2, v2), (q2, k2, v2), (q, k, v))]
    # predict (a), reuse a's map, predict (b), reuse b's map
    assert [torch.equal(m, own[n]) for m, n in zip(got, "aabb")] == [True] * 4
    assert guard.maps_reused == 2


def test_a_new_pipeline_call_forgets_the_maps():
    from sparge_diffusers.context import LayerCall, SpargeContext

    context = SpargeContext(SpargeConfig(topk=0.5, map_reuse=4))
    layer = LayerCall(context, 0, "attn")
    key = (1, 2, 300, 300)
    layer.guard.store_map(key, "reference", _masks()[0])
    assert layer.guard.reuse_map(key, 4, "reference") is not None
    context.begin_call()
    assert layer.guard.reuse_map(key, 4, "reference") is None


@pytest.mark.parametrize("num_k", [1, 7, 8, 9, 64, 350])
def test_bit_packed_lists_round_trip(num_k):
    from sparge_diffusers.kernels.lut import lut_from_bits, lut_from_mask, mask_from_bits, pack_lut

    gen = torch.Generator().manual_seed(num_k)
    mask = torch.rand(2, 3, 4, num_k, generator=gen) < 0.3
    mask[0, 0, 0] = False  # a row with nothing kept
    mask[0, 0, 1] = True  # and one with everything
    lut, counts = lut_from_mask(mask)
    bits = pack_lut(lut, counts)
    assert bits.shape == (2, 3, 4, (num_k + 7) // 8)
    assert torch.equal(mask_from_bits(bits, num_k), mask)
    got, got_counts = lut_from_bits(bits, num_k)
    assert got.dtype == torch.int32 and got.is_contiguous() and torch.equal(got_counts, counts)
    listed = torch.arange(num_k) < counts.unsqueeze(-1)
    assert torch.equal(torch.where(listed, got, 0), lut)


def test_triton_path_reuses_through_sparge_attn(gen, monkeypatch):
    # the CUDA choice on the CPU (the Triton interpreter runs the launch): the guard's bits come back as a kernel list
    import sparge_diffusers.attention as attention

    monkeypatch.setattr(attention, "_choose_backend", lambda q, k, config, forced=0: "triton")
    s = 333
    q, k, v = [torch.randn(1, 2, s, 64, generator=gen).half() for _ in range(3)]
    q2, k2, v2 = [torch.randn(1, 2, s, 64, generator=gen).half() for _ in range(3)]
    config = SpargeConfig(topk=0.5, predictor="lse", precision="int8-fp16", block_n=64, keep_token_ranges=[(0, 40)],
                          check_finite=False, map_reuse=2)
    guard = BudgetGuard()
    first = sparge_attn(q, k, v, config=config, guard=guard, return_stats=True)[1]
    out, second = sparge_attn(q2, k2, v2, config=config, guard=guard, return_stats=True)
    own = sparge_attn(q2, k2, v2, config=config, return_stats=True)[1]
    assert guard.maps_reused == 1 and second.backend == "triton"
    assert torch.equal(second.block_map.mask, first.block_map.mask)
    assert not torch.equal(own.block_map.mask, first.block_map.mask)
    expected = ref.naive_block_sparse_attention(q2, k2, v2, first.block_map.mask, block_m=128, block_n=64,
                                                scale=0.125, precision="int8-fp16")
    torch.testing.assert_close(out.float(), expected.float(), rtol=0, atol=2e-2)
