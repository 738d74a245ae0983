"""The ``"lse"`` predictor, the error-budget selection and the mask evaluation helpers, against loop-based
definitions and against dense attention."""

import math

import pytest
import torch

from sparge_diffusers import SpargeConfig, sparge_attn
from sparge_diffusers.kernels import evaluation as E
from sparge_diffusers.kernels import selection as S
from sparge_diffusers.kernels.predict import naive as P
from sparge_diffusers.kernels import reference as ref
from sparge_diffusers.video_inputs import video_like_qkv


def loop_lse_logits(q, k, block_m, block_n, scale, variance_weight):
    """Direct definition: per (query block, key block), logsumexp over the key tokens of the corrected logits."""
    b, h, sq, d = q.shape
    sk = k.shape[-2]
    nq, nk = ref.num_blocks(sq, block_m), ref.num_blocks(sk, block_n)
    out = torch.empty(b, h, nq, nk, dtype=torch.float64)
    for i in range(nq):
        rows = q[:, :, i * block_m: (i + 1) * block_m].double()
        mean = rows.mean(dim=2)
        var = rows.var(dim=2, unbiased=False)
        for j in range(nk):
            keys = k[:, :, j * block_n: (j + 1) * block_n].double()
            logits = torch.einsum("bhd,bhnd->bhn", mean, keys) * scale
            logits = logits + 0.5 * variance_weight * scale ** 2 * torch.einsum("bhd,bhnd->bhn", var, keys ** 2)
            out[:, :, i, j] = torch.logsumexp(logits, dim=-1)
    return out


@pytest.mark.parametrize("seq_len", [1, 63, 65, 97, 300], ids=lambda s: f"S{s}")
@pytest.mark.parametrize("head_dim", [64, 128], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("variance_weight", [0.0, 1.0], ids=["novar", "var"])
def test_lse_logits_match_loop(gen, seq_len, head_dim, variance_weight):
    q = torch.randn(1, 2, seq_len, head_dim, generator=gen)
    k = torch.randn(1, 2, seq_len + 7, head_dim, generator=gen)
    scale = head_dim ** -0.5
    got = P.naive_lse_block_logits(q, k, block_m=128, block_n=64, scale=scale, variance_weight=variance_weight)
    expected = loop_lse_logits(q, k, 128, 64, scale, variance_weight)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_lse_probs_equal_exact_mass_for_identical_queries(gen):
    """With all queries of a block equal, the estimate is exact (Jensen's gap and the variance are zero)."""
    q = torch.randn(1, 1, 1, 64, generator=gen).expand(1, 1, 128, 64).contiguous()
    k = torch.randn(1, 1, 300, 64, generator=gen)
    probs = P.naive_lse_block_probs(q, k, block_m=128, block_n=64, scale=0.125)
    torch.testing.assert_close(probs, ref.naive_block_mass(q, k, 128, 64, 0.125), rtol=1e-5, atol=1e-6)


def loop_drop_mass(probs, drop_mass, forced):
    keep = torch.ones_like(probs, dtype=torch.bool)
    for index in range(probs.shape[0]):
        row, row_forced = probs[index].tolist(), forced[index].tolist()
        order = sorted((p, j) for j, p in enumerate(row) if not row_forced[j])
        top = max(range(len(row)), key=lambda j: (math.inf if row_forced[j] else row[j], j))
        total = 0.0
        for p, j in order:
            total += p
            if total > drop_mass or j == top:
                break
            keep[index, j] = False
    return keep


@pytest.mark.parametrize("drop_mass", [0.0, 0.01, 0.1, 0.5])
def test_select_by_drop_mass_matches_loop(gen, drop_mass):
    probs = torch.softmax(3 * torch.randn(20, 13, generator=gen), dim=-1)
    forced = torch.rand(20, 13, generator=gen) < 0.1
    got = S.select_by_drop_mass(probs, drop_mass, forced)
    assert torch.equal(got, loop_drop_mass(probs, drop_mass, forced))
    assert got.any(dim=-1).all() and got[forced].all()
    dropped_mass = (probs * ~got).sum(-1)
    assert (dropped_mass <= drop_mass + 1e-6).all()


@pytest.mark.parametrize("seq_len", [300, 1000], ids=lambda s: f"S{s}")
@pytest.mark.parametrize("topk", [0.2, 0.5])
def test_lse_topk_keeps_the_budget(gen, seq_len, topk):
    q, k = (torch.randn(1, 3, seq_len, 64, generator=gen) for _ in range(2))
    mask = P.naive_predict_block_mask_lse(q, k, block_m=128, block_n=64, scale=0.125, topk=topk)
    nk = mask.shape[-1]
    assert torch.all(mask.sum(-1) == ref.topk_block_count(topk, nk))
    # forced text columns count against the budget, forced rows keep everything
    mask = P.naive_predict_block_mask_lse(q, k, block_m=128, block_n=64, scale=0.125, topk=topk,
                                          keep_ranges=[(0, 70)])
    assert mask[..., :2].all() and mask[:, :, 0].all()
    assert torch.all(mask[:, :, 1:].sum(-1) == max(ref.topk_block_count(topk, nk), 2))


def test_mask_sweep_matches_block_sparse_reference(gen):
    q, k, v = (torch.randn(1, 2, n, 64, generator=gen) for n in (333, 517, 517))
    masks = torch.rand(3, 1, 2, 3, 9, generator=gen) < 0.5
    masks[..., 0] = True
    for m in masks:
        out = ref.naive_block_sparse_attention(q, k, v, m, block_m=128, block_n=64, scale=0.125)
        expected = ref.relative_l1(out, ref.naive_attention(q, k, v, scale=0.125))
        got = E.masked_attention_rel_l1(q, k, v, m, block_m=128, block_n=64, scale=0.125)
        assert got == pytest.approx(expected, rel=1e-4)
    sweep = E.MaskSweep(0, ideal_thresholds=[0.9])
    mass = torch.zeros(3, 9)
    sweep.add_head(q[0, 0], k[0, 0], v[0, 0], torch.zeros(0, 3, 9, dtype=torch.bool), block_m=128, block_n=64,
                   scale=0.125, chunk_blocks=2, mass_out=mass)
    torch.testing.assert_close(mass, ref.naive_block_mass(q, k, 128, 64, 0.125)[0, 0], rtol=1e-5, atol=1e-6)
    ideal = ref.naive_ideal_block_mask(q[:, :1], k[:, :1], block_m=128, block_n=64, scale=0.125, cdf_threshold=0.9)
    assert float(sweep.sparsity()[0]) == pytest.approx(1 - ideal.float().mean().item())


@pytest.fixture(scope="module")
def video_qkv():
    # 6 x 16 x 24 latent grid (2,304 visual tokens) + 64 text tokens first, 4 heads, from the bikes clip
    return video_like_qkv((6, 16, 24), 8, 64, text_tokens=64, text_first=True, clip="bikes", seed=3,
                          head_indices=[0, 2, 5, 7])


@pytest.mark.parametrize("target_error", [0.05, 0.03])
@pytest.mark.parametrize("predictor", ["lse", "sparge"])
def test_error_budget_is_honoured_on_video_like_inputs(video_qkv, target_error, predictor):
    q, k, v = video_qkv
    out, mask = ref.naive_sparge_attention(q, k, v, predictor=predictor, target_error=target_error,
                                           sim_threshold=0.6, precision="bf16", keep_ranges=[(0, 64)])
    err = ref.relative_l1(out, ref.naive_attention(q, k, v))
    assert err <= target_error, (err, target_error)
    if predictor == "lse":
        assert 1 - mask.float().mean() > 0.1  # and it does find sparsity


def test_sparge_attn_with_error_budget_config(video_qkv):
    q, k, v = video_qkv
    config = SpargeConfig(predictor="lse", target_error=0.05, precision="bf16", keep_token_ranges=[(0, 64)])
    out, stats = sparge_attn(q, k, v, config=config, return_stats=True)
    assert ref.relative_l1(out, ref.naive_attention(q, k, v)) <= 0.05
    assert stats.mean_sparsity > 0.1
    tight = sparge_attn(q, k, v, config=config.replace(target_error=0.01), return_stats=True)[1]
    assert tight.mean_sparsity < stats.mean_sparsity


@pytest.mark.parametrize("seq_len", [1, 63, 65], ids=lambda s: f"S{s}")
@pytest.mark.parametrize("head_dim", [64, 128], ids=lambda d: f"D{d}")
@pytest.mark.parametrize("selection", [{"target_error": 0.05}, {"topk": 0.5}, {"cdf_threshold": 0.9, "topk": None}],
                         ids=["budget", "topk", "cdf"])
def test_lse_is_finite_on_short_sequences(gen, seq_len, head_dim, selection):
    q, k, v = (torch.randn(1, 2, seq_len, head_dim, generator=gen) for _ in range(3))
    config = SpargeConfig(predictor="lse", precision="int8-fp16", **selection)
    out = sparge_attn(q, k, v, config=config)
    assert torch.isfinite(out).all()
    if seq_len <= 64:  # one key block: nothing can be dropped
        torch.testing.assert_close(out, ref.naive_attention(q, k, v), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, "0.05"])
def test_target_error_is_validated(bad):
    with pytest.raises(ValueError, match="target_error"):
        SpargeConfig(target_error=bad)


def test_selection_precedence():
    """ε = 0.05 by default; ε wins over top-k and τ; τ applies when top-k is None."""
    assert SpargeConfig().selection == S.Selection("budget", 0.05)
    assert SpargeConfig(target_error=0.02).selection == S.Selection("budget", 0.02)
    assert SpargeConfig(topk=0.3, target_error=0.05).selection == S.Selection("budget", 0.05)
    assert SpargeConfig(topk=None, cdf_threshold=0.9).selection == S.Selection("cdf", 0.9)
    assert SpargeConfig(topk=1.0).is_dense and SpargeConfig(predictor="full").is_dense
    assert not SpargeConfig().is_dense


@pytest.mark.parametrize("seq_len", [200, 257])
def test_mixed_block_probs_is_the_stated_mixture(gen, seq_len):
    q, k = (torch.randn(1, 2, seq_len, 64, generator=gen) for _ in range(2))
    scale = 64 ** -0.5
    mixed = P.naive_mixed_block_probs(q, k, block_m=64, block_n=64, scale=scale, rows=4, weight=0.25)
    lse = P.naive_lse_block_probs(q, k, block_m=64, block_n=64, scale=scale)
    # the sampled part by its definition: exact softmax rows at the centres of 4 equal parts of each query block
    logits = (q.double() @ k.double().transpose(-1, -2)) * scale
    p = torch.softmax(logits, dim=-1)
    nq, nk = ref.num_blocks(seq_len, 64), ref.num_blocks(seq_len, 64)
    sampled = torch.zeros(1, 2, nq, nk, dtype=torch.float64)
    for i in range(nq):
        n = min(64, seq_len - i * 64)
        for r in range(4):
            row = p[:, :, i * 64 + (2 * r + 1) * n // 8]
            sampled[:, :, i] += torch.stack([row[..., j * 64:(j + 1) * 64].sum(-1) for j in range(nk)], -1) / 4
    torch.testing.assert_close(mixed.double(), 0.25 * lse.double() + 0.75 * sampled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed.sum(-1), torch.ones(1, 2, nq), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="weight"):
        P.naive_mixed_block_probs(q, k, block_m=64, block_n=64, scale=scale, weight=1.5)
