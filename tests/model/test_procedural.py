"""Procedural clips: deterministic, shaped, and their tracks match the drawn object."""

import time

import pytest
import torch

from sparge_diffusers import procedural as P


def test_deterministic_and_shapes():
    a = P.procedural_batch(4, frames=9, height=64, width=48, seed=3)
    b = P.procedural_batch(4, frames=9, height=64, width=48, seed=3)
    c = P.procedural_batch(4, frames=9, height=64, width=48, seed=4)
    assert a.frames.shape == (4, 9, 64, 48, 3) and a.frames.dtype == torch.float32
    assert a.centroids.shape == (4, 9, 2) and a.radius.shape == (4, 9)
    assert torch.equal(a.frames, b.frames) and a.captions == b.captions
    assert not torch.equal(a.frames, c.frames)
    assert float(a.frames.min()) >= 0.0 and float(a.frames.max()) <= 1.0
    assert a.uint8().dtype == torch.uint8


@pytest.mark.parametrize("motion", P.MOTIONS)
def test_track_follows_motion(motion):
    spec = P.ClipSpec("ball", "red", motion)
    batch = P.render([spec], frames=9, height=64, width=64, seed=0, backgrounds=("plain",))
    c = batch.centroids[0] / 64.0
    dx, dy = float(c[-1, 0] - c[0, 0]), float(c[-1, 1] - c[0, 1])
    r = batch.radius[0]
    expected = {"rolling left": dx < -0.3, "rolling right": dx > 0.3, "falling": dy > 0.3, "rising": dy < -0.3,
                "bouncing": abs(dy) < 0.2 and float(c[:, 1].max() - c[0, 1]) > 0.3,
                "growing": float(r[-1] / r[0]) > 2.0, "orbiting": float(c[:, 0].max() - c[:, 0].min()) > 0.2}
    assert expected[motion]
    # the drawn red pixels sit at the recorded centroid
    frame = batch.frames[0, -1]
    red = (frame[..., 0] > 0.6) & (frame[..., 1] < 0.3)
    ys, xs = torch.nonzero(red, as_tuple=True)
    assert abs(float(xs.float().mean()) + 0.5 - float(batch.centroids[0, -1, 0])) < 1.5
    assert abs(float(ys.float().mean()) + 0.5 - float(batch.centroids[0, -1, 1])) < 2.5


def test_captions_use_vocabulary_and_short_rolling():
    vocab = set(P.vocabulary())
    g = torch.Generator().manual_seed(0)
    specs = P.sample_specs(400, g)
    captions = [s.caption for s in specs]
    assert all(set(c.split()) <= vocab for c in captions)
    assert any(c.endswith(" rolling") for c in captions)  # "a red ball rolling" is a trained caption
    assert any(c.endswith("rolling left") for c in captions)
    assert P.ClipSpec("ball", "red", "rolling left", short=True).caption == "a red ball rolling"
    assert len(P.all_specs()) == len(P.OBJECTS) * len(P.COLOURS) * len(P.MOTIONS)


def test_bad_input():
    with pytest.raises(ValueError, match="colour"):
        P.ClipSpec("ball", "pink", "falling")
    with pytest.raises(ValueError, match="frames"):
        P.render([P.ClipSpec("ball", "red", "falling")], frames=0, height=32, width=32)


def test_fast_batch():
    P.procedural_batch(2, frames=9, height=128, width=128, seed=0)  # texture bank cached
    t0 = time.perf_counter()
    P.procedural_batch(32, frames=9, height=128, width=128, seed=1)
    assert time.perf_counter() - t0 < 4.0  # ~0.8 s on a shared 2-core machine
