"""GPU-only checks of the Triton path: bf16, long sequences, the public call and torch.compile."""

import pytest
import torch

from sparge_diffusers import SpargeConfig, sparge_attn
from sparge_diffusers.block_map import BlockMap, block_mask_from_lut
from sparge_diffusers.kernels import dispatch, reference as ref
from sparge_diffusers.kernels.selection import Selection, resolve_selection

pytestmark = pytest.mark.gpu

# Kernel vs the reference emulation of the same arithmetic. INT8/FP16 and bf16 paths differ only in summation order
# (and exp2 vs exp); FP8 adds rare e4m3 rounding-tie differences.
EMULATION_RELL1 = {"int8-fp16": 3e-3, "bf16": 3e-3, "int8-fp8": 1e-2}
# Full-mask accuracy against the fp32 oracle on random inputs. INT8/FP16: the target 0.015 (measured 0.013 on
# an H200). INT8/FP8: measured 0.040 on an H200 (the official CUDA INT8/FP8 kernel: 0.039, ANCHORS.md); e4m3 keeps 3
# mantissa bits for both P and V, which bounds this on near-uniform random attention, so the 0.03 is not met.
ORACLE_RELL1 = {"int8-fp8": 0.045, "int8-fp16": 0.015}


def qkv(b, h, s, d, dtype=torch.bfloat16, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(b, h, s, d, generator=gen, device="cuda", dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("seq_len", [1, 63, 97, 1000, 4001, 17776])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("precision", ["int8-fp8", "int8-fp16", "bf16"])
@pytest.mark.parametrize("block_n", [64, 128])
def test_fused_call_matches_reference(seq_len, head_dim, precision, block_n):
    q, k, v = qkv(2 if seq_len <= 4001 else 1, 2, seq_len, head_dim)
    for pv_threshold in (None, -4.0):
        out, lut, counts, _ = dispatch.sparge_attention_triton(
            q, k, v, scale=head_dim ** -0.5, block_m=128, block_n=block_n, selection=Selection("topk", 0.5),
            sim_threshold=None, pv_threshold=pv_threshold, precision=precision, keep_ranges=[(0, 50)],
            predictor="sparge")
        expected, mask = ref.naive_sparge_attention(
            q, k, v, scale=head_dim ** -0.5, block_n=block_n, topk=0.5, pv_threshold=pv_threshold,
            precision=precision, keep_ranges=[(0, 50)])
        assert torch.isfinite(out).all()
        assert (block_mask_from_lut(lut, counts) != mask).float().mean() < 0.01
        assert ref.relative_l1(out, expected) < EMULATION_RELL1[precision], precision


@pytest.mark.parametrize("seq_len", [4001, 17776])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("precision", ["int8-fp8", "int8-fp16", "bf16"])
def test_full_mask_accuracy_against_oracle(seq_len, head_dim, precision):
    q, k, v = qkv(1, 2, seq_len, head_dim)
    oracle = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    out = sparge_attn(q, k, v, config=SpargeConfig(predictor="full", precision=precision, speed_rule="sparse"))
    error = ref.relative_l1(out, oracle)
    if precision == "bf16":
        torch_error = ref.relative_l1(torch.nn.functional.scaled_dot_product_attention(q, k, v), oracle)
        assert error <= 2 * torch_error, (error, torch_error)
    else:
        assert error <= ORACLE_RELL1[precision], error


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_given_mask_kernel_matches_masked_sdpa(sparsity):
    q, k, v = qkv(1, 2, 4001, 128, dtype=torch.float16)
    gen = torch.Generator(device="cuda").manual_seed(1)
    mask = torch.rand(1, 2, 32, 63, generator=gen, device="cuda") >= sparsity
    mask[..., 0] = True
    block_map = BlockMap(mask, 128, 64, 4001, 4001)
    lut, counts = block_map.to_lut()
    out = torch.empty_like(q)
    from sparge_diffusers.kernels import block_sparse_attn

    block_sparse_attn.block_sparse_attn_fwd(q, k, v, lut, counts, out, seq_len_q=4001, seq_len_k=4001, block_m=128,
                                            block_n=64, pv_mode=block_sparse_attn.PV_NATIVE,
                                            softmax_scale=128 ** -0.5)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                attn_mask=block_map.to_dense())
    assert ref.relative_l1(out, expected) < 3e-3


def test_public_call_uses_triton_and_reports_sparsity():
    q, k, v = qkv(2, 4, 4608, 128)
    out, stats = sparge_attn(q, k, v, config=SpargeConfig(topk=0.5, sim_threshold=None, speed_rule="sparse"), return_stats=True)
    assert stats.backend == "triton" and abs(stats.mean_sparsity - 0.5) < 1 / 72 + 1e-6
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    bshd = sparge_attn(*(x.transpose(1, 2) for x in (q, k, v)), config=SpargeConfig(topk=0.5, sim_threshold=None, speed_rule="sparse"),
                       layout="BSHD")
    torch.testing.assert_close(bshd.transpose(1, 2), out)


@pytest.mark.parametrize("head_dim", [40, 80, 96])
def test_odd_head_dims_are_padded(head_dim):
    q, k, v = qkv(1, 2, 1000, head_dim)
    out = sparge_attn(q, k, v, config=SpargeConfig(predictor="full", precision="int8-fp16", speed_rule="sparse"))
    oracle = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert out.shape == q.shape and ref.relative_l1(out, oracle) < ORACLE_RELL1["int8-fp16"]


def test_torch_compile_traces_the_custom_op():
    q, k, v = qkv(1, 2, 2000, 64)
    config = SpargeConfig(topk=0.5, sim_threshold=None, check_finite=False, speed_rule="sparse")

    def attend(q, k, v):
        return sparge_attn(q * 1.0, k, v, config=config) + 1.0

    compiled = torch.compile(attend, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attend(q, k, v))


@pytest.mark.parametrize("seq_len", [97, 4001, 17776])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("predictor", ["lse", "mixed"])
def test_lse_predictor_matches_reference(seq_len, head_dim, predictor):
    """On random inputs the lse block masses are nearly equal, so the GPU and the reference (bf16 matmul, other
    summation order) may rank near-ties differently: compare kept predicted mass, not masks, and check the
    attention against the reference run on the kernel's own mask. ``"mixed"`` adds sampled exact rows to lse."""
    from sparge_diffusers.kernels.predict.naive import naive_predicted_block_probs

    q, k, v = qkv(1, 2, seq_len, head_dim)
    scale = head_dim ** -0.5
    probs = naive_predicted_block_probs(predictor, q, k, block_m=128, block_n=64, scale=scale)
    for topk, target_error in ((0.3, None), (None, 0.05)):
        rule = resolve_selection(predictor=predictor, topk=topk, cdf_threshold=None, target_error=target_error)
        out, lut, counts, _ = dispatch.sparge_attention_triton(
            q, k, v, scale=scale, block_m=128, block_n=64, selection=rule, sim_threshold=None,
            pv_threshold=None, precision="int8-fp16", keep_ranges=[(0, 50)], predictor=predictor)
        _, expected_mask = ref.naive_sparge_attention(
            q, k, v, scale=scale, topk=topk, precision="int8-fp16", keep_ranges=[(0, 50)], predictor=predictor,
            target_error=target_error)
        mask = block_mask_from_lut(lut, counts)
        kept, expected_kept = (probs * mask).sum(-1), (probs * expected_mask).sum(-1)
        assert torch.all(kept >= expected_kept - 2e-3), float((expected_kept - kept).max())
        if topk is not None:
            assert torch.equal(mask.sum(-1), expected_mask.sum(-1))
        expected = ref.naive_block_sparse_attention(q, k, v, mask, block_m=128, block_n=64, scale=scale,
                                                    precision="int8-fp16")
        assert torch.isfinite(out).all() and ref.relative_l1(out, expected) < EMULATION_RELL1["int8-fp16"]


@pytest.mark.parametrize("seq_len", [4001, 44776])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("split_roles", [False, True], ids=["one-program-per-block", "program-per-tensor"])
def test_prepare_matches_reference_at_length(seq_len, head_dim, split_roles):
    from sparge_diffusers.kernels import quantize
    from sparge_diffusers.kernels.predict.naive import naive_lse_block_logits

    q, k, v = qkv(1, 2, seq_len, head_dim, seed=3)
    k = k + torch.linspace(-4, 4, head_dim, device="cuda", dtype=k.dtype)  # a channel bias that smoothing removes
    prepared = quantize.prepare_fwd(q, k, v, block_m=128, block_n=64, stats="lse", softmax_scale=head_dim ** -0.5,
                                    split_roles=split_roles)
    for values, (ref_values, ref_scales), scales in (
            (prepared.q_int8, ref.naive_quantize_int8(q, 128), prepared.q_scale),
            (prepared.k_int8, ref.naive_quantize_int8(k, 64, smooth=True), prepared.k_scale)):
        assert (values[..., :seq_len, :].int() - ref_values.int()).abs().max() <= 1
        torch.testing.assert_close(scales, ref_scales, rtol=1e-5, atol=1e-8)
    ref_v, ref_v_scale = ref.naive_quantize_v_fp8(v)
    torch.testing.assert_close(prepared.v_scale, ref_v_scale)
    restored = prepared.v_fp8.transpose(-1, -2)[..., :seq_len, :].float()
    assert (restored != ref_v.float()).float().mean() < 1e-3
    expected = naive_lse_block_logits(q, k, block_m=128, block_n=64, scale=head_dim ** -0.5)
    torch.testing.assert_close(prepared.block_logits, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("int_magic", [True, False], ids=["magic-add", "i2f"])
def test_int8_score_conversions_at_length(head_dim, int_magic):
    from sparge_diffusers.kernels import block_sparse_attn, quantize

    seq_len, scale = 17776, head_dim ** -0.5
    q, k, v = qkv(1, 2, seq_len, head_dim, seed=5)
    q, k = q * 4.0, k * 4.0
    gen = torch.Generator(device="cuda").manual_seed(2)
    mask = torch.rand(1, 2, 139, 139, generator=gen, device="cuda") < 0.5
    mask[..., -1] = True
    lut, counts = BlockMap(mask, 128, 128, seq_len, seq_len).to_lut()
    prepared = quantize.prepare_fwd(q, k, None, block_m=128, block_n=128, v_fp8=False,
                                    q_scale_mult=scale * block_sparse_attn.LOG2E)
    out = torch.empty_like(q)
    block_sparse_attn.block_sparse_attn_fwd(
        prepared.q_int8, prepared.k_int8, dispatch.padded_fp16(v, 128), lut, counts, out, seq_len_q=seq_len,
        seq_len_k=seq_len, block_m=128, block_n=128, pv_mode=block_sparse_attn.PV_FP16, q_scale=prepared.q_scale,
        k_scale=prepared.k_scale, softmax_scale=scale, int_magic=int_magic)
    expected = ref.naive_block_sparse_attention(q, k, v, mask, block_m=128, block_n=128, scale=scale,
                                                precision="int8-fp16")
    assert ref.relative_l1(out, expected) < EMULATION_RELL1["int8-fp16"]


@pytest.mark.parametrize("geometry", ["cogvideox", "flux"])
@pytest.mark.parametrize("predictor", ["lse", "mixed", "sparge"])
def test_budget_holds_through_the_fused_call(geometry, predictor):
    """Full-geometry video-like inputs: the kernel's own selection meets ε (exact fp32 error of its block mask),
    and the whole call (with quantization) stays within ε plus the precision's floor."""
    from sparge_diffusers import attention_families as F
    from sparge_diffusers.kernels import evaluation as E

    geo = F.scaled_geometry(geometry)
    q, k, v = F.family_qkv("clip", geo, heads=[0, 9, 17], seed=1, style="broad", device="cuda",
                           dtype=torch.bfloat16)
    for eps in (0.02, 0.05, 0.1):
        config = SpargeConfig(target_error=eps, predictor=predictor, precision="int8-fp16",
                              keep_token_ranges=[geo.text_range], check_finite=False, speed_rule="sparse")
        out, stats = sparge_attn(q, k, v, config=config, return_stats=True)
        assert stats.backend == "triton" and torch.isfinite(stats.drop_mass).all()
        mask = stats.block_map.mask  # [B, H, NQ, NK] block mask
        selection_error = E.masked_attention_rel_l1(q.float(), k.float(), v.float(), mask, block_m=128, block_n=128)
        assert selection_error <= 1.2 * eps, (eps, selection_error)
        total = ref.relative_l1(out, ref.naive_attention(q, k, v))
        assert total <= 1.2 * eps + ORACLE_RELL1["int8-fp16"], (eps, total)


def test_eager_call_has_no_host_sync_with_a_deferred_finite_check():
    """The eager hot path (lse top-k, default check_finite queued on a FiniteCheck) never synchronizes the host;
    the check is read once afterwards and finds a NaN."""
    from sparge_diffusers.finite import FiniteCheck

    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in qkv(1, 4, 4608, 128))  # BSHD memory
    config = SpargeConfig(topk=0.5, sim_threshold=None, speed_rule="sparse")
    check = FiniteCheck()
    sparge_attn(q, k, v, config=config, keep_ranges=[(0, 512)], finite_check=check)  # warm the per-shape caches
    check.reset()
    bad = q.clone()
    bad[0, 1, 7, 3] = float("nan")  # set up before sync checking: a host scalar written into a device tensor
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sparge_attn(q, k, v, config=config, keep_ranges=[(0, 512)], finite_check=check)
        sparge_attn(bad, k, v, config=config, keep_ranges=[(0, 512)], finite_check=check, layer=5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.transpose(1, 2).is_contiguous()  # the output follows q's [B, S, H, D] memory: no copy to flatten
    with pytest.raises(ValueError, match="q of attention layer 5"):
        check.raise_if_set("test")


def test_eager_launch_equals_the_custom_op():
    """Eager calls skip the op's dispatch; the op (as torch.compile and autograd see it) computes the same."""
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in qkv(2, 3, 3000, 64))
    args = (q, k, v, 0.125, 128, 64, "topk", 0.5, None, None, "int8-fp8", [0, 100], "lse", None)
    eager = dispatch.sparge_attention_triton(
        q, k, v, scale=0.125, block_m=128, block_n=64, selection=Selection("topk", 0.5), sim_threshold=None,
        pv_threshold=None, precision="int8-fp8", keep_ranges=[(0, 100)], predictor="lse")
    op = torch.ops.sparge_diffusers.sparge_attention(*args)
    for a, b in zip(eager[:3], op[:3]):
        assert a.stride() == b.stride()
    out, lut, counts = eager[:3]
    torch.testing.assert_close(out, op[0], rtol=0, atol=0)
    torch.testing.assert_close(counts, op[2], rtol=0, atol=0)
    # the LUT is defined on its first counts entries per row; the rest is never read (and never written)
    valid = torch.arange(lut.shape[-1], device=lut.device) < counts.unsqueeze(-1).long()
    assert valid.any() and (~valid).any()
    torch.testing.assert_close(lut[valid], op[1][valid], rtol=0, atol=0)


# Triton error-budget measurement (`kernels.budget.kernel`) against the naive reference at full length. The kernel
# rounds exp(s - m) to bf16 before P·V (relative 2^-9) and sums in another order; its measured errors follow the fp32
# naive ones to this relative tolerance (a bound, not yet a GPU measurement), and a chosen drop mass may differ only
# where a naive error between the two choices lies within it of the target.
GUARD_ERROR_RTOL = 2e-2


def _guard_case(family, seq_geometry, heads, seed=4):
    from sparge_diffusers import attention_families as F
    from sparge_diffusers.kernels.predict.naive import naive_forced_blocks, naive_lse_block_probs

    geo = F.scaled_geometry(seq_geometry)
    q, k, v = F.family_qkv(family, geo, heads=list(heads), seed=seed, device="cuda", dtype=torch.bfloat16)
    q, k, v = (torch.cat([x, x.flip(1)], 0) for x in (q, k, v))  # batch 2
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # a strided [B, S, H, D] view, as diffusers hands it over
    scale = q.shape[-1] ** -0.5
    probs = torch.cat([naive_lse_block_probs(q[i:i + 1], k[i:i + 1], block_m=128, block_n=128, scale=scale)
                       for i in range(2)])
    fr, fc = naive_forced_blocks(q, k, block_m=128, block_n=128, keep_ranges=[geo.text_range])
    return q, k, v, probs, dict(block_m=128, block_n=128, scale=scale, forced_rows=fr, forced_cols=fc)


@pytest.mark.parametrize("geometry", ["flux", "cogvideox", "mochi"])
@pytest.mark.parametrize("family", ["clip", "random"])
def test_budget_guard_triton_matches_naive_at_length(geometry, family):
    from sparge_diffusers.kernels import budget as B
    from sparge_diffusers.kernels.budget import kernel as K

    q, k, v, probs, args = _guard_case(family, geometry, heads=range(4))
    rows, row_block = K.sampled_rows(q.shape[2], 128, 96, q.device)
    flat = [x.reshape(-1, *x.shape[2:]) for x in (q, k, v)]
    m, z, u = K.budget_partials_fwd(q, k, v, rows, scale=args["scale"], block_n=128)
    z0, u0 = B.naive_row_partials(flat[0][:, rows.long()].float(), flat[1].float(), flat[2].float(),
                                  scale=args["scale"], block_n=128)
    w = torch.exp(m - m.amax(-1, keepdim=True))
    assert (z * w - z0).abs().max() <= 1e-2 * z0.abs().max()
    assert (u * w[..., None] - u0).abs().max() <= 1e-2 * u0.abs().max()
    g, nq, nk = q.shape[0] * q.shape[1], probs.shape[2], probs.shape[3]
    fc = args["forced_cols"].reshape(-1, nk).expand(g, nk)
    fr = args["forced_rows"].reshape(-1, nq).expand(g, nq)[:, row_block.long()]
    naive_errors = B.drop_errors(probs.reshape(g, nq, nk)[:, row_block.long()], fc, fr, z0, u0, B.DROP_MASS_LADDER)
    for target_error in (0.02, 0.05, 0.1):
        for options in (dict(), dict(partials_dtype=torch.bfloat16), dict(block_r=32), dict(num_stages=3)):
            got, errors = K.budget_drop_mass_fwd(q, k, v, probs, target_error=target_error, return_errors=True,
                                                 **args, **options)
            errors = errors.reshape(g, -1)
            assert ((errors - naive_errors).abs() <= GUARD_ERROR_RTOL * naive_errors + 1e-5).all(), options
            target = B.GUARD_MARGIN * target_error
            expected = B.choose_drop_mass(naive_errors, target, B.DROP_MASS_LADDER)
            ladder = list(B.DROP_MASS_LADDER) + [B.KEEP_ALL]
            for head, (a, e) in enumerate(zip(got.flatten().tolist(), expected.tolist())):
                if a != e:
                    lo, hi = sorted((ladder.index(a), ladder.index(e)))
                    near = (naive_errors[head, lo:min(hi + 1, len(B.DROP_MASS_LADDER))] - target).abs()
                    assert (near <= GUARD_ERROR_RTOL * target).any(), (head, a, e, options)
    # the public entry takes the Triton path on CUDA
    auto = B.budget_drop_mass(q, k, v, probs, target_error=0.05, **args)
    assert torch.equal(auto, K.budget_drop_mass_fwd(q, k, v, probs, target_error=0.05, **args))


def test_compiled_budget_call_keeps_its_guard():
    """Under torch.compile (inductor) a target_error call with a BudgetGuard runs the guard in one opaque op: drop
    masses are measured on calls 1, 2 and 4 and reused on call 3, and the output is the eager call's."""
    from sparge_diffusers.budget_guard import BudgetGuard

    q, k, v = qkv(2, 4, 17776, 64)
    config = SpargeConfig(target_error=0.05, predictor="mixed", precision="int8-fp16", keep_token_ranges=[(0, 226)],
                          check_finite=False, speed_rule="sparse")
    eager_guard, guard = BudgetGuard(), BudgetGuard()
    eager = [sparge_attn(q, k, v, config=config, guard=eager_guard) for _ in range(4)]
    step = torch.compile(lambda q, k, v: sparge_attn(q, k, v, config=config, guard=guard), fullgraph=True)
    try:
        compiled = [step(q, k, v) for _ in range(4)]
    finally:
        torch._dynamo.reset()
    assert (guard.measured, guard.reused) == (eager_guard.measured, eager_guard.reused) == (3, 1)
    for a, b in zip(compiled, eager):
        assert ref.relative_l1(a, b) < 1e-3


@pytest.mark.parametrize("compiled", [False, True])
def test_reused_block_map_is_attended_eager_and_compiled(compiled):
    """``map_reuse=2`` on CUDA: the third call (drop masses reused) attends the second call's map, not one predicted
    from its own inputs, eager and under torch.compile (inside the guarded op), and its output is the launch's with
    that map."""
    from sparge_diffusers.budget_guard import BudgetGuard, call_key
    from sparge_diffusers.kernels.lut import lut_from_bits

    q, k, v, _, _ = _guard_case("clip", "cogvideox", heads=range(4), seed=4)
    q2, k2, v2, _, _ = _guard_case("clip", "cogvideox", heads=range(4), seed=9)
    config = SpargeConfig(target_error=0.05, predictor="mixed", keep_token_ranges=[(0, 226)], check_finite=False,
                          speed_rule="sparse", map_reuse=2)
    guard = BudgetGuard()
    call = lambda q, k, v: sparge_attn(q, k, v, config=config, guard=guard)  # noqa: E731
    step = torch.compile(call, fullgraph=True) if compiled else call
    try:
        step(q, k, v)
        step(q, k, v)  # measured twice: they agree, the interval doubles
        slot = guard._slots[call_key(q, k)]
        lut, counts = lut_from_bits(*slot.block_map[1:])
        out = step(q2, k2, v2)
    finally:
        torch._dynamo.reset()
    assert (guard.measured, guard.reused, guard.maps_reused) == (2, 1, 1)
    own = dispatch.sparge_attention_launch(q2, k2, v2, q.shape[-1] ** -0.5, 128, 128, config.selection,
                                           config.sim_threshold, None, config.precision, [0, 226], "mixed",
                                           slot.drop)[1:3]
    # its own prediction differs, so the check below can fail
    assert not torch.equal(block_mask_from_lut(*own), block_mask_from_lut(lut, counts))
    expected = dispatch.sparge_attention_launch(q2, k2, v2, q.shape[-1] ** -0.5, 128, 128, config.selection,
                                                config.sim_threshold, None, config.precision, [0, 226], "mixed",
                                                slot.drop, (lut, counts))[0]
    assert ref.relative_l1(out, expected) < 1e-3


def test_sparse_call_replays_from_a_cuda_graph():
    """`run_stats.capture_cuda_graph` (the benchmarks' device-time measure): the captured sparse call, replayed on new
    inputs written into the same buffers, gives what an eager call on those inputs gives."""
    from sparge_diffusers.run_stats import capture_cuda_graph

    q, k, v = qkv(1, 4, 2000, 128)
    config = SpargeConfig(topk=0.5, predictor="lse", check_finite=False, speed_rule="sparse")
    holder = {}

    def call():
        holder["out"] = sparge_attn(q, k, v, config=config)

    graph = capture_cuda_graph(call)
    fresh = qkv(1, 4, 2000, 128, seed=7)
    for buffer, value in zip((q, k, v), fresh):
        buffer.copy_(value)
    graph.replay()
    torch.cuda.synchronize()
    expected = sparge_attn(*fresh, config=config)
    torch.testing.assert_close(holder["out"], expected)  # bf16 tolerances: the same kernels, launched again
