"""The prompt-following checker: ~100% on procedural ground truth, low on mismatched, shuffled and noise clips."""

import numpy as np
import pytest

from sparge_diffusers import procedural as P
from sparge_diffusers.checker import accuracy, check_video, check_videos, classify_motion, parse_prompt, track_object


@pytest.fixture(scope="module")
def clips():
    batch = P.procedural_batch(48, frames=9, height=64, width=64, seed=11)
    return list(batch.uint8().numpy()), batch.captions


def test_parse_prompt():
    s = parse_prompt("A Red ball rolling.")
    assert (s.colour, s.obj, s.motion) == ("red", "ball", "rolling")
    assert s.accepted_motions() == ("rolling left", "rolling right")
    s = parse_prompt("a blue cube rolling left")
    assert (s.colour, s.obj, s.motion) == ("blue", "square", "rolling left")
    assert parse_prompt("a cat").colour is None and parse_prompt("a cat").motion is None


def test_ground_truth_scores_full(clips):
    videos, captions = clips
    acc = accuracy(check_videos(videos, captions))
    assert acc["colour"] == 1.0 and acc["motion"] >= 0.97


def test_mismatched_shuffled_and_noise_score_low(clips):
    videos, captions = clips
    rolled = captions[1:] + captions[:1]
    assert accuracy(check_videos(videos, rolled))["both"] < 0.2
    rng = np.random.default_rng(0)
    # time reversed: left <-> right, falling <-> rising, growing -> shrinking (bouncing, orbiting and the
    # direction-free "rolling" captions are symmetric in time, so they are left out)
    directed = [i for i, c in enumerate(captions) if not c.endswith(("bouncing", "orbiting", "rolling"))]
    reversed_ = [videos[i][::-1] for i in directed]
    assert len(directed) >= 16
    assert accuracy(check_videos(reversed_, [captions[i] for i in directed]))["motion"] < 0.1
    noise = [rng.integers(0, 256, v.shape, dtype=np.uint8) for v in videos[:16]]
    assert accuracy(check_videos(noise, captions[:16]))["both"] < 0.2


def test_grey_video_has_no_object():
    grey = np.full((9, 32, 32, 3), 128, np.uint8)
    result = check_video(grey, "a red ball falling")
    assert result.colour is None and result.colour_ok is False and result.motion_ok is False
    assert classify_motion(track_object(grey)) is None


def test_bad_frames():
    with pytest.raises(ValueError, match="frames"):
        check_video(np.zeros((9, 32, 32)), "a red ball")
    with pytest.raises(ValueError, match="same length"):
        check_videos([np.zeros((2, 8, 8, 3))], [])
