"""The public call: layouts, dtypes, strides, batching, fallbacks, stats and input checks."""

import logging

import pytest
import torch

from sparge_diffusers import SpargeConfig, sparge_attn
from sparge_diffusers._logging import reset_log_once
from sparge_diffusers.kernels import reference as ref

SPARSE = SpargeConfig(topk=0.5, sim_threshold=None, precision="int8-fp16", block_n=64)  # the reference's blocks


def qkv(gen, b=1, h=2, s=300, d=64, dtype=torch.float32):
    return [torch.randn(b, h, s, d, generator=gen).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_output_dtype_shape_and_stats(gen, dtype):
    q, k, v = qkv(gen, dtype=dtype)
    out, stats = sparge_attn(q, k, v, config=SPARSE, return_stats=True)
    assert out.dtype == dtype and out.shape == q.shape and torch.isfinite(out).all()
    assert stats.backend == "reference" and stats.sparsity.shape == (1, 2)
    assert abs(stats.mean_sparsity - 0.4) < 1e-6
    assert stats.block_map.shape == (1, 2, 3, 5)


@pytest.mark.parametrize("predictor", ["lse", "sparge"])
def test_matches_reference_algorithm(gen, predictor):
    q, k, v = qkv(gen)
    out = sparge_attn(q, k, v, config=SPARSE.replace(predictor=predictor))
    expected, _ = ref.naive_sparge_attention(q, k, v, topk=0.5, precision="int8-fp16", predictor=predictor)
    torch.testing.assert_close(out, expected)


def test_bshd_layout_and_strided_views(gen):
    q, k, v = qkv(gen, b=2, h=3, s=200)
    expected = sparge_attn(q, k, v, config=SPARSE)
    bshd = [x.transpose(1, 2).contiguous() for x in (q, k, v)]
    out = sparge_attn(*bshd, config=SPARSE, layout="BSHD")
    torch.testing.assert_close(out.transpose(1, 2), expected)
    packed = torch.stack([q, k, v], dim=-2)
    views = [packed[..., i, :] for i in range(3)]
    assert not views[0].is_contiguous()
    torch.testing.assert_close(sparge_attn(*views, config=SPARSE), expected)


def test_batch_entries_are_independent(gen):
    q, k, v = qkv(gen, b=3)
    batched = sparge_attn(q, k, v, config=SPARSE)
    for b in range(3):
        single = sparge_attn(q[b:b + 1], k[b:b + 1], v[b:b + 1], config=SPARSE)
        torch.testing.assert_close(batched[b:b + 1], single)


def test_dense_settings_equal_sdpa(gen):
    q, k, v = qkv(gen)
    out, stats = sparge_attn(q, k, v, config=SpargeConfig(topk=1.0, precision="bf16"), return_stats=True)
    torch.testing.assert_close(out, ref.naive_attention(q, k, v), rtol=1e-5, atol=1e-5)
    assert stats.backend == "dense" and stats.mean_sparsity == 0.0


@pytest.mark.parametrize("head_dim", [32, 80, 96])
def test_odd_head_dims_run_sparse(gen, head_dim):
    q, k, v = qkv(gen, d=head_dim)
    out, stats = sparge_attn(q, k, v, config=SPARSE, return_stats=True)
    assert stats.backend == "reference" and torch.isfinite(out).all()


def test_large_head_dim_falls_back_to_dense_and_logs_once(gen, caplog):
    reset_log_once()
    q, k, v = qkv(gen, d=256)
    with caplog.at_level(logging.WARNING, logger="sparge_diffusers"):
        out, stats = sparge_attn(q, k, v, config=SPARSE, return_stats=True)
        sparge_attn(q, k, v, config=SPARSE)
    assert stats.backend == "dense"
    assert sum("head dim 256" in r.message for r in caplog.records) == 1
    torch.testing.assert_close(out, ref.naive_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_short_sequences_can_go_dense(gen):
    q, k, v = qkv(gen, s=100)
    _, stats = sparge_attn(q, k, v, config=SPARSE.replace(dense_below_seq_len=256), return_stats=True)
    assert stats.backend == "dense"


def test_keep_ranges_argument_overrides_config(gen):
    q, k, v = qkv(gen, s=1000)
    _, stats = sparge_attn(q, k, v, config=SpargeConfig(topk=0.2, sim_threshold=None), keep_ranges=[(0, 64)],
                           return_stats=True)
    assert stats.block_map.mask[..., 0].all() and stats.block_map.mask[..., 0, :].all()


@pytest.mark.parametrize("seq_len", [1, 63, 64, 65, 4001])
def test_no_nan_at_any_length(gen, seq_len):
    q, k, v = qkv(gen, h=1, s=seq_len, dtype=torch.float16)
    assert torch.isfinite(sparge_attn(q, k, v, config=SpargeConfig(topk=0.3, pv_threshold=-6.0))).all()


def test_cross_attention_lengths(gen):
    q = torch.randn(1, 2, 130, 64, generator=gen)
    k = torch.randn(1, 2, 333, 64, generator=gen)
    v = torch.randn(1, 2, 333, 64, generator=gen)
    out = sparge_attn(q, k, v, config=SpargeConfig(topk=1.0, precision="int8-fp16"))
    assert ref.relative_l1(out, ref.naive_attention(q, k, v)) < 0.02


@pytest.mark.parametrize(
    "case, argument",
    [
        ("k_dtype", "k has dtype"),
        ("v_shape", "k and v"),
        ("heads", "batch and heads"),
        ("head_dim_zero", "head dim"),
        ("nan", "q contains NaN"),
        ("inf", "v contains NaN or inf"),
        ("layout", "layout"),
        ("three_d", "q must be 4-D"),
        ("int_dtype", "q must be float16"),
        ("scale", "scale"),
        ("config", "config"),
        ("topk", "topk"),
        ("keep_ranges", "keep_ranges"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(gen, case, argument):
    q, k, v = qkv(gen)
    kwargs = {"config": SPARSE}
    if case == "k_dtype":
        k = k.half()
    elif case == "v_shape":
        v = v[:, :, :10]
    elif case == "heads":
        k, v = k[:, :1], v[:, :1]
    elif case == "head_dim_zero":
        q, k, v = q[..., :0], k[..., :0], v[..., :0]
    elif case == "nan":
        q[0, 0, 5, 3] = float("nan")
    elif case == "inf":
        v[0, 1, 7, 0] = float("inf")
    elif case == "layout":
        kwargs["layout"] = "SBHD"
    elif case == "three_d":
        q = q[0]
    elif case == "int_dtype":
        q, k, v = (x.to(torch.int32) for x in (q, k, v))
    elif case == "scale":
        kwargs["scale"] = -1.0
    elif case == "config":
        kwargs["config"] = {"topk": 0.5}
    elif case == "topk":
        with pytest.raises(ValueError, match="topk"):
            SpargeConfig(topk=1.2)
        return
    elif case == "keep_ranges":
        kwargs["keep_ranges"] = [(10, 2)]
    with pytest.raises(ValueError, match=argument):
        sparge_attn(q, k, v, **kwargs)
