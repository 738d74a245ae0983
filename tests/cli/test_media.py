"""Media files: mp4 / gif / png round trips, atomic writes, early writability checks."""

from __future__ import annotations

import numpy as np
import pytest

from sparge_diffusers import media
from sparge_diffusers.errors import UsageError
from sparge_diffusers.media import (check_writable, check_writable_dir, read_media, sidecar_path, to_uint8_frames,
                                    write_json, write_media)


@pytest.mark.parametrize("fmt", ["mp4", "gif", "png"])
def test_round_trip(fmt, frames, tmp_path, list_files):
    path = tmp_path / f"clip.{fmt}"
    info = write_media(path, frames, fps=8)
    write_json(sidecar_path(path), {"media": info})
    back = read_media(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    tolerance = {"png": 0, "gif": 12, "mp4": 25}[fmt]  # png is lossless; gif palette / H.264 are not
    assert np.abs(back.astype(int) - frames.astype(int)).mean() <= tolerance
    assert list_files(tmp_path) == sorted([path.name, sidecar_path(path).name])


def test_odd_sizes_and_single_frames(tmp_path):
    odd = np.full((3, 33, 47, 3), 128, dtype=np.uint8)
    write_media(tmp_path / "odd.mp4", odd)  # padded to even for yuv420p
    assert read_media(tmp_path / "odd.mp4").shape[1:3] == (34, 48)  # no sidecar: the padded size
    write_media(tmp_path / "one.png", odd[:1])
    assert read_media(tmp_path / "one.png").shape == (1, 33, 47, 3)


def test_to_uint8_frames_conversions():
    floats = np.linspace(0, 1, 2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    assert to_uint8_frames(floats).dtype == np.uint8 and to_uint8_frames(floats).max() == 255
    assert to_uint8_frames(floats[0]).shape == (1, 4, 4, 3)
    assert to_uint8_frames(np.zeros((2, 4, 4, 1))).shape == (2, 4, 4, 3)
    assert to_uint8_frames([floats[0], floats[1]]).shape == (2, 4, 4, 3)
    with pytest.raises(ValueError):
        to_uint8_frames(np.zeros((0, 4, 4, 3)))


def test_failed_write_leaves_nothing(frames, tmp_path, monkeypatch, list_files):
    def broken(path, frames, fps):
        path.write_bytes(b"half a video")
        raise RuntimeError("encoder died")

    monkeypatch.setattr(media, "_write_mp4", broken)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_media(tmp_path / "clip.mp4", frames)
    assert list_files(tmp_path) == []


def test_unwritable_targets(tmp_path, list_files):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        check_writable(blocker / "out.mp4")
    with pytest.raises(UsageError, match="is a directory"):
        check_writable(tmp_path)
    with pytest.raises(UsageError, match="not a directory"):
        check_writable_dir(blocker / "sub")
    with pytest.raises(UsageError, match="must end in"):
        write_media(tmp_path / "clip.avi", np.zeros((1, 4, 4, 3), np.uint8))
    check_writable(tmp_path / "new" / "deeper" / "out.mp4")  # missing folders are fine, and not created
    assert list_files(tmp_path) == ["a-file"] and not (tmp_path / "new").exists()
