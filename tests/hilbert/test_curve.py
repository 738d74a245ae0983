"""Tests of the generalized Hilbert curve: bijection, neighbour steps, degenerate grids, input checks."""

import itertools
import math
import time

import pytest
import torch

from sparge_diffusers.hilbert import hilbert_order
from sparge_diffusers.hilbert import curve

# Measured on this implementation (see the printed fractions): 13x30x45 0.99903, 28x30x53 0.99998, 64x64 and
# 48x80 1.0. The brief's bar is 0.99.
MIN_NEIGHBOUR_FRACTION = 0.99

SHAPES = [
    (1, 1, 1),
    (1, 1),
    (1, 17),
    (17, 1),
    (1, 1, 17),
    (7, 1, 9),
    (5, 7, 1),
    (2, 2, 2),
    (2, 3, 5),
    (3, 3, 3),
    (9, 11, 13),
    (4, 8, 16),
    (8, 8, 8),
    (13, 30, 45),
    (28, 30, 53),
    (1, 64, 64),
    (3, 100),
    (64, 64),
    (48, 80),
    (97, 31),
]
SMALL_3D = list(itertools.product(range(1, 7), repeat=3))


def _id(shape):
    return "x".join(map(str, shape))


def _steps(shape):
    """L1 lengths ``[n - 1]`` of the steps between consecutive cells of the curve."""
    order = hilbert_order(shape)
    coords = []
    rest = order
    for size in reversed(shape):
        coords.append(rest % size)
        rest = rest // size
    coords = torch.stack(coords, dim=-1)
    return (coords[1:] - coords[:-1]).abs().sum(dim=-1)


@pytest.mark.parametrize("shape", SHAPES + SMALL_3D, ids=_id)
def test_order_is_permutation(shape):
    order = hilbert_order(shape)
    n = math.prod(shape)
    assert order.dtype == torch.long and order.device.type == "cpu"
    assert order.shape == (n,)
    assert torch.equal(order.sort().values, torch.arange(n))
    assert order[0] == 0


@pytest.mark.parametrize("shape", SHAPES + SMALL_3D, ids=_id)
def test_steps_are_at_most_diagonal(shape):
    steps = _steps(shape)
    assert steps.numel() == 0 or int(steps.max()) <= 2


@pytest.mark.parametrize("shape", [(13, 30, 45), (28, 30, 53), (64, 64), (48, 80)], ids=_id)
def test_neighbour_fraction(shape):
    steps = _steps(shape)
    fraction = float((steps == 1).double().mean())
    diagonal = int((steps != 1).sum())
    print(f"\nneighbour fraction {_id(shape)}: {fraction:.5f} ({diagonal} diagonal steps)")
    assert fraction >= MIN_NEIGHBOUR_FRACTION


@pytest.mark.parametrize("shape", [(64, 64), (32, 128), (8, 8, 8), (16, 16, 16), (4, 60, 90)], ids=_id)
def test_even_grids_have_no_diagonal_steps(shape):
    assert bool((_steps(shape) == 1).all())


@pytest.mark.parametrize("hw", [(64, 64), (30, 45), (1, 9), (7, 3)], ids=_id)
def test_single_frame_is_the_2d_curve(hw):
    h, w = hw
    assert torch.equal(hilbert_order((1, h, w)), hilbert_order((h, w)))
    assert torch.equal(hilbert_order((h, 1, w)), hilbert_order((h, w)))
    assert torch.equal(hilbert_order((h, w, 1)), hilbert_order((h, w)))


def test_line_is_identity():
    assert torch.equal(hilbert_order((1, 1, 17)), torch.arange(17))
    assert torch.equal(hilbert_order((1, 17)), torch.arange(17))
    assert torch.equal(hilbert_order((17, 1, 1)), torch.arange(17))


def test_shape_forms_and_cache():
    reference = hilbert_order((13, 30, 45))
    assert torch.equal(hilbert_order([13, 30, 45]), reference)
    assert torch.equal(hilbert_order(torch.Size([13, 30, 45])), reference)
    reference[0] = -1
    assert hilbert_order((13, 30, 45))[0] == 0


def test_large_grid_is_fast():
    curve._cached_order.cache_clear()
    start = time.perf_counter()
    hilbert_order((28, 30, 53))
    elapsed = time.perf_counter() - start
    print(f"\nhilbert_order(28x30x53) uncached: {elapsed * 1e3:.0f} ms")
    assert elapsed < 1.0


@pytest.mark.parametrize(
    "shape, message",
    [
        ((0, 4, 4), r"shape\[0\]"),
        ((4, -2), r"shape\[1\]"),
        ((4, 4.0), r"shape\[1\]"),
        ((True, 4), r"shape\[0\]"),
        ((4, "5"), r"shape\[1\]"),
        ((4,), r"shape must have 2 \(h, w\) or 3 \(t, h, w\)"),
        ((1, 2, 3, 4), r"shape must have 2 \(h, w\) or 3 \(t, h, w\)"),
        ((), r"shape must have"),
        (5, r"shape must be a sequence"),
        ("abc", r"shape must be a sequence"),
    ],
    ids=["zero", "negative", "float", "bool", "str-size", "1d", "4d", "empty", "int", "str"],
)
def test_bad_shape_raises(shape, message):
    with pytest.raises(ValueError, match=message):
        hilbert_order(shape)
