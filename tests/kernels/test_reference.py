"""The pure-PyTorch reference against direct, loop-based definitions and against dense attention."""

import math

import pytest
import torch

from sparge_diffusers.kernels import reference as ref

# Observed on random N(0, 1) inputs, S=512, D=64 and 128 (fixed seeds): int8-fp16 0.010-0.013, int8-fp8 0.025-0.035.
# The bounds leave ~1.5x headroom; they guard against a broken quantizer (errors of 0.1 and more), not noise.
FULL_MASK_RELL1 = {"int8-fp16": 0.02, "int8-fp8": 0.05}


def qkv(gen, b, h, s, d, dtype=torch.float32, sk=None):
    sk = s if sk is None else sk
    q = torch.randn(b, h, s, d, generator=gen).to(dtype)
    k = torch.randn(b, h, sk, d, generator=gen).to(dtype)
    v = torch.randn(b, h, sk, d, generator=gen).to(dtype)
    return q, k, v


@pytest.mark.parametrize("seq_len", [1, 63, 64, 65, 97, 300])
@pytest.mark.parametrize("block", [64, 128])
def test_block_mean_and_self_similarity_match_loops(gen, seq_len, block):
    x = torch.randn(2, 3, seq_len, 16, generator=gen)
    means = ref.naive_block_mean(x, block)
    sims = ref.naive_block_self_similarity(x, block)
    for i in range(ref.num_blocks(seq_len, block)):
        tokens = x[:, :, i * block: (i + 1) * block]
        torch.testing.assert_close(means[:, :, i], tokens.mean(dim=2))
        unit = tokens / tokens.norm(dim=-1, keepdim=True)
        cosine = torch.matmul(unit, unit.transpose(-1, -2))
        torch.testing.assert_close(sims[:, :, i], cosine.mean(dim=(-2, -1)), rtol=1e-4, atol=1e-5)


def test_self_similarity_separates_coherent_blocks(gen):
    direction = torch.randn(1, 1, 1, 64, generator=gen)
    coherent = direction + 0.05 * torch.randn(1, 1, 128, 64, generator=gen)
    noise = torch.randn(1, 1, 128, 64, generator=gen)
    assert ref.naive_block_self_similarity(coherent, 128).item() > 0.9
    assert ref.naive_block_self_similarity(noise, 128).item() < 0.05


@pytest.mark.parametrize("seq_len", [1, 63, 64, 65, 300, 1000])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_full_mask_equals_dense_attention(gen, seq_len, head_dim):
    q, k, v = qkv(gen, 2, 2, seq_len, head_dim)
    for topk, cdf in ((1.0, None), (None, 1.0)):
        out, mask = ref.naive_sparge_attention(q, k, v, topk=topk, cdf_threshold=cdf, precision="bf16")
        assert mask.all()
        torch.testing.assert_close(out, ref.naive_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_block_sparse_with_all_ones_mask_equals_dense(gen):
    q, k, v = qkv(gen, 1, 3, 333, 64, sk=517)
    mask = torch.ones(1, 3, ref.num_blocks(333, 128), ref.num_blocks(517, 64), dtype=torch.bool)
    out = ref.naive_block_sparse_attention(q, k, v, mask, block_m=128, block_n=64, scale=0.125)
    torch.testing.assert_close(out, ref.naive_attention(q, k, v, scale=0.125), rtol=1e-5, atol=1e-5)


def test_block_sparse_equals_masked_dense_attention(gen):
    q, k, v = qkv(gen, 2, 2, 300, 64, sk=450)
    mask = torch.rand(2, 2, 3, 8, generator=gen) < 0.5
    mask[..., 0] = True
    out = ref.naive_block_sparse_attention(q, k, v, mask, block_m=128, block_n=64, scale=0.125)
    token_mask = mask.repeat_interleave(128, -2).repeat_interleave(64, -1)[..., :300, :450]
    scores = torch.matmul(q, k.transpose(-1, -2)) * 0.125
    expected = torch.matmul(torch.softmax(scores.masked_fill(~token_mask, -math.inf), -1), v)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seq_len", [300, 1000, 4001])
def test_topk_half_gives_half_sparsity(gen, seq_len):
    q, k, v = qkv(gen, 1, 4, seq_len, 64)
    _, mask = ref.naive_sparge_attention(q, k, v, topk=0.5, precision="bf16")
    nk = mask.shape[-1]
    per_row = 1 - mask.float().mean(-1)
    assert torch.all((per_row - 0.5).abs() <= 1.0 / nk + 1e-6), (per_row.min(), per_row.max(), nk)


def test_topk_keeps_the_most_probable_blocks(gen):
    q, k, v = qkv(gen, 1, 2, 512, 64)
    q = q + torch.linspace(-2, 2, 512)[:, None]
    mask = ref.naive_predict_block_mask(q, k, block_m=128, block_n=64, scale=0.125, topk=0.25)
    probs = torch.softmax(ref.naive_pooled_scores(q, k, 128, 64, 0.125), -1)
    for h in range(2):
        for i in range(mask.shape[2]):
            expected = torch.topk(probs[0, h, i], 2).indices
            assert set(torch.nonzero(mask[0, h, i]).flatten().tolist()) == set(expected.tolist())


def test_cdf_selection_reaches_tau_with_fewest_blocks(gen):
    probs = torch.softmax(torch.randn(3, 5, 17, generator=gen) * 2, -1)
    for tau in (0.3, 0.7, 0.95):
        keep = ref.naive_select_cdf(probs, tau)
        kept_mass = (probs * keep).sum(-1)
        assert torch.all(kept_mass >= tau - 1e-6)
        smallest_kept = probs.masked_fill(~keep, 2.0).amin(-1)
        assert torch.all(kept_mass - smallest_kept < tau + 1e-6), "dropping the smallest kept block must fall below τ"


def test_every_row_keeps_a_block(gen):
    q, k, v = qkv(gen, 1, 2, 1000, 64)
    mask = ref.naive_predict_block_mask(q, k, block_m=128, block_n=64, scale=0.125, topk=0.01)
    assert mask.any(-1).all()
    mask = ref.naive_predict_block_mask(q, k, block_m=128, block_n=64, scale=0.125, cdf_threshold=0.01)
    assert mask.any(-1).all()


def test_keep_ranges_are_always_computed(gen):
    q, k, v = qkv(gen, 1, 2, 1000, 64)
    mask = ref.naive_predict_block_mask(q, k, block_m=128, block_n=64, scale=0.125, topk=0.2,
                                        keep_ranges=[(0, 100), (900, 1000)])
    assert mask[..., :2].all() and mask[..., 14:].all()
    assert mask[..., 0, :].all() and mask[..., 7, :].all()
    assert not mask[..., 1:7, 2:14].all()


def test_sim_threshold_forces_incoherent_blocks(gen):
    q, k, v = qkv(gen, 1, 1, 512, 64)
    coherent = torch.randn(1, 1, 1, 64, generator=gen) + 0.05 * torch.randn(1, 1, 512, 64, generator=gen)
    mask = ref.naive_predict_block_mask(coherent, k, block_m=128, block_n=64, scale=0.125, topk=0.25,
                                        sim_threshold=0.5)
    assert mask.all(), "random K blocks are not self-similar, so every column is forced"
    mask = ref.naive_predict_block_mask(q, coherent, block_m=128, block_n=64, scale=0.125, topk=0.25,
                                        sim_threshold=0.5)
    assert mask.all(), "random Q blocks are not self-similar, so every row is forced"
    mask = ref.naive_predict_block_mask(coherent, coherent, block_m=128, block_n=64, scale=0.125, topk=0.25,
                                        sim_threshold=0.5)
    assert mask.float().mean() == pytest.approx(0.25)


def test_pv_threshold_off_changes_nothing(gen):
    q, k, v = qkv(gen, 1, 2, 700, 64)
    mask = ref.naive_predict_block_mask(q, k, block_m=128, block_n=64, scale=0.125, topk=0.5)
    kwargs = dict(block_m=128, block_n=64, scale=0.125, precision="int8-fp8")
    off = ref.naive_block_sparse_attention(q, k, v, mask, **kwargs)
    very_low = ref.naive_block_sparse_attention(q, k, v, mask, pv_threshold=-1e9, **kwargs)
    assert torch.equal(off, very_low)


def test_pv_threshold_skips_negligible_blocks(gen):
    q, k, v = qkv(gen, 1, 1, 256, 64)
    k[..., 64:, :] *= 0.0
    q = q * 0 + k[..., :1, :] * 10
    mask = torch.ones(1, 1, 2, 4, dtype=torch.bool)
    kwargs = dict(block_m=128, block_n=64, scale=1.0, precision="bf16")
    dense = ref.naive_block_sparse_attention(q, k, v, mask, **kwargs)
    filtered = ref.naive_block_sparse_attention(q, k, v, mask, pv_threshold=-20.0, **kwargs)
    only_first = ref.naive_block_sparse_attention(q, k, v, mask & (torch.arange(4) == 0), **kwargs)
    assert torch.isfinite(filtered).all()
    torch.testing.assert_close(filtered, only_first)
    torch.testing.assert_close(filtered, dense, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seq_len", [1, 63, 64, 65, 4001])
@pytest.mark.parametrize("precision", ["int8-fp8", "int8-fp16", "bf16"])
def test_no_nan_at_any_length(gen, seq_len, precision):
    q, k, v = qkv(gen, 1, 1, seq_len, 64, dtype=torch.float16)
    out, _ = ref.naive_sparge_attention(q, k, v, topk=0.3, pv_threshold=-8.0, precision=precision)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("precision", ["int8-fp16", "int8-fp8"])
def test_quantized_full_mask_error_is_bounded(gen, head_dim, precision):
    q, k, v = qkv(gen, 1, 2, 512, head_dim)
    out, _ = ref.naive_sparge_attention(q, k, v, topk=1.0, precision=precision)
    error = ref.relative_l1(out, ref.naive_attention(q, k, v))
    assert error < FULL_MASK_RELL1[precision], error


def test_bf16_precision_error_within_twice_pytorch_bf16(gen):
    q, k, v = qkv(gen, 1, 2, 512, 64)
    oracle = ref.naive_attention(q, k, v)
    qb, kb, vb = (x.bfloat16() for x in (q, k, v))
    torch_error = ref.relative_l1(torch.nn.functional.scaled_dot_product_attention(qb, kb, vb), oracle)
    out, _ = ref.naive_sparge_attention(qb, kb, vb, topk=1.0, precision="bf16")
    assert ref.relative_l1(out.bfloat16(), oracle) <= 2 * torch_error


def test_int8_quantization_roundtrip(gen):
    x = torch.randn(2, 2, 200, 64, generator=gen) * 3
    values, scales = ref.naive_quantize_int8(x, 64)
    assert values.dtype == torch.int8 and scales.shape == (2, 2, 4)
    restored = values.float()
    per_token_scale = scales.repeat_interleave(64, -1)[..., :200, None]
    assert torch.all((restored * per_token_scale - x).abs() <= per_token_scale / 2 + 1e-6)
    smoothed, _ = ref.naive_quantize_int8(x + 5.0, 64, smooth=True)
    assert smoothed.float().mean().abs() < 2.0


def test_fp8_v_quantization_relative_error(gen):
    v = torch.randn(1, 2, 300, 64, generator=gen)
    values, scales = ref.naive_quantize_v_fp8(v)
    assert values.dtype == torch.float8_e4m3fn and scales.shape == (1, 2, 64)
    restored = values.float() * scales[..., None, :]
    assert ref.relative_l1(restored, v) < 0.04


def test_ideal_mask_keeps_true_mass(gen):
    q, k, v = qkv(gen, 1, 2, 512, 64)
    mass = ref.naive_block_mass(q, k, 128, 64, 0.125)
    torch.testing.assert_close(mass.sum(-1), torch.ones(1, 2, 4))
    mask = ref.naive_ideal_block_mask(q, k, block_m=128, block_n=64, scale=0.125, cdf_threshold=0.6)
    assert torch.all((mass * mask).sum(-1) >= 0.6 - 1e-5)
