"""GPU checks of the Hopper (Gluon) schedule of the FP8 block-sparse kernel (`kernel_sm90`), on Hopper only; the
Triton FP8 kernel's row maxima on any GPU."""

import pytest
import torch

from sparge_diffusers.block_map import BlockMap
from sparge_diffusers.kernels import quantize, reference as ref

pytestmark = pytest.mark.gpu

# the default (3 stages, 232 / 40 registers) and two others, each checked correct on an H200 by scripts/bench_sm90.py
SCHEDULES = [None, (2, 232, 40), (3, 240, 24)]


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


hopper_only = pytest.mark.skipif(not _hopper(), reason="the Gluon schedules are for Hopper (sm90)")


def _operands(b, h, s, d, seed):
    from sparge_diffusers.kernels import block_sparse_attn

    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(b, h, s, d, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    prepared = quantize.prepare_fwd(q, k, v, block_m=128, block_n=128,
                                    q_scale_mult=d ** -0.5 * block_sparse_attn.LOG2E)
    return (q, k, v), prepared


def _mask(b, h, s, seed):
    n = -(-s // 128)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    mask = torch.rand(b, h, n, n, generator=gen, device="cuda") < 0.4
    mask[..., -1] = True  # the partial last key block
    if n > 1:
        mask[:, :, n // 2] = False  # a query block with no kept block: its rows are 0
    return mask


def _launch(prepared, lut, counts, out, s, **kwargs):
    from sparge_diffusers.kernels import block_sparse_attn

    p = prepared
    return block_sparse_attn.block_sparse_attn_fwd(
        p.q_int8, p.k_int8, p.v_fp8, lut, counts, out, seq_len_q=s, seq_len_k=s, block_m=128, block_n=128,
        pv_mode=block_sparse_attn.PV_FP8, q_scale=p.q_scale, k_scale=p.k_scale, v_scale=p.v_scale,
        softmax_scale=out.shape[-1] ** -0.5, v_transposed=True, **kwargs)


@hopper_only
@pytest.mark.parametrize("seq_len", [1, 97, 777, 4608, 17776])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=["default", "2-stages", "240-24-registers"])
def test_schedules_match_naive_and_the_triton_kernel(seq_len, head_dim, schedule):
    from sparge_diffusers.kernels.block_sparse_attn import kernel_sm90

    b, h = (2, 3) if seq_len <= 4608 else (1, 2)
    (q, k, v), prepared = _operands(b, h, seq_len, head_dim, seed=seq_len + head_dim)
    mask = _mask(b, h, seq_len, seed=seq_len)
    lut, counts = BlockMap(mask, 128, 128, seq_len, seq_len).to_lut()
    # a strided output: [B, S, H, D] storage seen as [B, H, S, D]
    out = torch.full((b, seq_len, h, head_dim), float("nan"), device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    p = prepared
    kernel_sm90.sm90_fwd(p.q_int8, p.k_int8, p.v_fp8, lut, counts, out, seq_len_q=seq_len, seq_len_k=seq_len,
                         q_scale=p.q_scale, k_scale=p.k_scale, v_scale=p.v_scale, schedule=schedule)
    expected = ref.naive_block_sparse_attention(q, k, v, mask, block_m=128, block_n=128, scale=head_dim ** -0.5,
                                                precision="int8-fp8")
    triton_out = _launch(prepared, lut, counts, torch.empty_like(q), seq_len, hopper=False)
    assert torch.isfinite(out).all()
    assert ref.relative_l1(out, expected) < 1e-2
    assert ref.relative_l1(out, triton_out) < 1e-3
    n = -(-seq_len // 128)
    if n > 1:
        empty_rows = slice((n // 2) * 128, min((n // 2 + 1) * 128, seq_len))
        assert (out[:, :, empty_rows] == 0).all()


@hopper_only
def test_default_route_takes_head_dim_128_only(monkeypatch):
    from sparge_diffusers.kernels.block_sparse_attn import kernel_sm90

    calls = []
    real = kernel_sm90.sm90_fwd
    monkeypatch.setattr(kernel_sm90, "sm90_fwd", lambda *a, **kw: calls.append(a[0].shape[-1]) or real(*a, **kw))
    for head_dim in (64, 128):
        (q, _, _), prepared = _operands(1, 2, 1000, head_dim, seed=3)
        lut, counts = BlockMap(_mask(1, 2, 1000, seed=3), 128, 128, 1000, 1000).to_lut()
        _launch(prepared, lut, counts, torch.empty_like(q), 1000)
        _launch(prepared, lut, counts, torch.empty_like(q), 1000, pv_threshold=-4.0)  # λ: the Triton kernel
    assert calls == [128]
    monkeypatch.setenv("SPARGE_SM90", "0")
    _launch(prepared, lut, counts, torch.empty_like(q), 1000)
    assert calls == [128]
    with pytest.raises(ValueError, match="hopper=True"):
        _launch(prepared, lut, counts, torch.empty_like(q), 1000, hopper=True)


@hopper_only
def test_hopper_launch_replays_from_a_cuda_graph():
    from sparge_diffusers.run_stats import capture_cuda_graph

    (q, _, _), prepared = _operands(1, 2, 4608, 128, seed=7)
    lut, counts = BlockMap(_mask(1, 2, 4608, seed=7), 128, 128, 4608, 4608).to_lut()
    out = torch.empty_like(q)
    graph = capture_cuda_graph(lambda: _launch(prepared, lut, counts, out, 4608), warmup=1)
    (_, _, _), fresh = _operands(1, 2, 4608, 128, seed=8)
    for name in ("q_int8", "k_int8", "v_fp8", "q_scale", "k_scale", "v_scale"):
        getattr(prepared, name).copy_(getattr(fresh, name))
    graph.replay()
    torch.cuda.synchronize()
    expected = _launch(fresh, lut, counts, torch.empty_like(q), 4608)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("int_rowmax", [True, False], ids=["int-rowmax", "float-rowmax"])
def test_triton_fp8_kernel_row_maxima_at_length(head_dim, int_rowmax):
    """The Triton kernel's FP8 mode (any GPU) with its row maxima on the int32 dots or on the fp32 scores."""
    seq_len = 17776
    (q, k, v), prepared = _operands(1, 2, seq_len, head_dim, seed=11)
    mask = _mask(1, 2, seq_len, seed=11)
    lut, counts = BlockMap(mask, 128, 128, seq_len, seq_len).to_lut()
    out = _launch(prepared, lut, counts, torch.empty_like(q), seq_len, hopper=False, int_rowmax=int_rowmax)
    expected = ref.naive_block_sparse_attention(q, k, v, mask, block_m=128, block_n=128, scale=head_dim ** -0.5,
                                                precision="int8-fp8")
    assert torch.isfinite(out).all()
    assert ref.relative_l1(out, expected) < 1e-2
