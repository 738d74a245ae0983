"""Tests of TokenPermutation (apply / revert with text tokens around the grid) and block_locality."""

import math

import pytest
import torch

from sparge_diffusers.hilbert import BlockLocality, TokenPermutation, block_locality, hilbert_order

CASES = [
    # grid, offset, total_len: text before (CogVideoX), text after (Mochi), both, none, image grid (Flux)
    ((2, 3, 5), 0, None),
    ((2, 3, 5), 7, None),
    ((2, 3, 5), 0, 41),
    ((13, 30, 45), 226, 226 + 17550 + 5),
    ((1, 1, 1), 4, 9),
    ((48, 80), 512, None),
]


def _id(case):
    grid, offset, total_len = case
    return f"{'x'.join(map(str, grid))}-off{offset}-len{total_len}"


@pytest.fixture(params=CASES, ids=[_id(c) for c in CASES])
def case(request):
    return request.param


@pytest.mark.parametrize("kind", ["hilbert", "rowmajor"])
def test_apply_revert_roundtrip(case, kind):
    grid, offset, total_len = case
    perm = TokenPermutation.for_grid(grid, kind=kind, offset=offset, total_len=total_len)
    length = perm.total_len
    x = torch.randn(2, length, 3)
    y = perm.apply(x)
    assert y.shape == x.shape
    assert torch.equal(perm.revert(y), x)
    assert torch.equal(perm.apply(perm.revert(x)), x)


def test_apply_matches_order_and_keeps_text(case):
    grid, offset, total_len = case
    perm = TokenPermutation.for_grid(grid, offset=offset, total_len=total_len)
    n = math.prod(grid)
    x = torch.randn(2, perm.total_len, 4)
    y = perm.apply(x)
    assert torch.equal(y[:, :offset], x[:, :offset])
    assert torch.equal(y[:, offset + n :], x[:, offset + n :])
    assert torch.equal(y[:, offset : offset + n], x[:, offset : offset + n][:, hilbert_order(grid)])


def test_default_total_len_is_offset_plus_grid():
    assert TokenPermutation.for_grid((2, 3, 5), offset=7).total_len == 37


@pytest.mark.parametrize("dim", [0, 1, 2, -2, -3], ids=lambda d: f"dim{d}")
def test_any_dim(dim):
    perm = TokenPermutation.for_grid((3, 4, 5), offset=2, total_len=64)
    shape = [3, 5, 7, 2]
    shape[dim] = 64
    x = torch.randn(shape)
    y = perm.apply(x, dim=dim)
    expected = x.movedim(dim, 0)[perm.forward_index].movedim(0, dim)
    assert torch.equal(y, expected)
    assert torch.equal(perm.revert(y, dim=dim), x)


def test_strided_view_and_dtype():
    perm = TokenPermutation.for_grid((4, 6, 7), offset=3)
    base = torch.randn(2, 4, perm.total_len, 16, dtype=torch.bfloat16)
    x = base[..., ::2]
    assert not x.is_contiguous()
    y = perm.apply(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(perm.revert(y), x)


def test_gradient_flows_through_apply():
    perm = TokenPermutation.for_grid((3, 5), offset=1, total_len=17)
    x = torch.randn(17, 2, requires_grad=True)
    weight = torch.randn(17, 2)
    (perm.apply(x, dim=0) * weight).sum().backward()
    assert torch.equal(x.grad, perm.revert(weight, dim=0))


def test_rowmajor_is_identity():
    perm = TokenPermutation.for_grid((2, 3, 5), kind="rowmajor", offset=2)
    x = torch.randn(1, 32, 8)
    assert perm.apply(x) is x
    assert perm.revert(x) is x
    assert torch.equal(perm.forward_index, torch.arange(32))


def test_for_grid_is_cached():
    first = TokenPermutation.for_grid((13, 30, 45), offset=226, device="cpu")
    again = TokenPermutation.for_grid([13, 30, 45], kind="hilbert", offset=226, device=torch.device("cpu"))
    assert again is first
    assert TokenPermutation.for_grid((13, 30, 45), offset=0) is not first
    assert first.forward_index.device.type == "cpu"
    assert "13, 30, 45" in repr(first)


def test_inverse_index_inverts_forward_index():
    perm = TokenPermutation.for_grid((5, 6, 7), offset=11, total_len=230)
    assert torch.equal(perm.forward_index[perm.inverse_index], torch.arange(230))
    assert torch.equal(perm.inverse_index[perm.forward_index], torch.arange(230))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(grid=(0, 4, 4)), r"grid\[0\]"),
        (dict(grid=(4, 4, 4, 4)), r"grid must have 2 \(h, w\) or 3 \(t, h, w\)"),
        (dict(grid=(4, 4), kind="zorder"), r"kind must be one of \('hilbert', 'rowmajor'\)"),
        (dict(grid=(4, 4), offset=-1), r"offset must be a non-negative integer"),
        (dict(grid=(4, 4), offset=1.5), r"offset must be a non-negative integer"),
        (dict(grid=(4, 4), offset=3, total_len=18), r"total_len must be at least offset \+ prod\(grid\) = 3 \+ 16"),
        (dict(grid=(4, 4), total_len=-1), r"total_len must be a non-negative integer"),
    ],
    ids=["grid-zero", "grid-4d", "kind", "offset-negative", "offset-float", "total-len-short", "total-len-negative"],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenPermutation.for_grid(**kwargs)


def test_wrong_length_raises():
    perm = TokenPermutation.for_grid((2, 3, 5), offset=4)
    with pytest.raises(ValueError, match=r"x.shape\[-2\] must be total_len = 34"):
        perm.apply(torch.randn(1, 30, 8))
    with pytest.raises(ValueError, match=r"x.shape\[1\] must be total_len = 34"):
        perm.revert(torch.randn(1, 35, 8), dim=1)
    with pytest.raises(ValueError, match=r"dim must be in \[-3, 3\)"):
        perm.apply(torch.randn(1, 34, 8), dim=3)


@pytest.mark.parametrize("shape", [(13, 30, 45), (28, 30, 53), (64, 64), (48, 80)], ids=lambda s: "x".join(map(str, s)))
def test_hilbert_blocks_are_more_compact(shape):
    n = math.prod(shape)
    rowmajor = block_locality(torch.arange(n), shape, block_size=128)
    hilbert = block_locality(hilbert_order(shape), shape, block_size=128)
    print(
        f"\n{'x'.join(map(str, shape))} 128-token blocks: "
        f"row-major radius {rowmajor.radius:.2f} extents {tuple(round(e, 2) for e in rowmajor.extents)}; "
        f"hilbert radius {hilbert.radius:.2f} extents {tuple(round(e, 2) for e in hilbert.extents)}"
    )
    assert rowmajor.num_blocks == hilbert.num_blocks == math.ceil(n / 128)
    assert hilbert.radius < 0.5 * rowmajor.radius
    assert hilbert.mean_extent < rowmajor.mean_extent
    assert max(hilbert.extents) < max(rowmajor.extents)


def test_block_locality_of_a_line():
    result = block_locality(torch.arange(256), (1, 256), block_size=128)
    assert isinstance(result, BlockLocality)
    assert result.num_blocks == 2
    assert result.extents == (1.0, 128.0)
    assert result.radius == pytest.approx(math.sqrt((128**2 - 1) / 12))


def test_block_locality_partial_last_block():
    result = block_locality(torch.arange(10), (2, 5), block_size=4)
    assert result.num_blocks == 3
    assert result.extents == pytest.approx((4 / 3, (4 + 5 + 2) / 3))


def test_block_locality_bad_arguments():
    with pytest.raises(ValueError, match=r"order must be 1-D of length prod\(shape\) = 20"):
        block_locality(torch.arange(19), (4, 5))
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        block_locality(torch.arange(20), (4, 5), block_size=0)
    with pytest.raises(ValueError, match=r"shape\[1\]"):
        block_locality(torch.arange(20), (4, 0))
