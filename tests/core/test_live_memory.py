"""LiveBytes: the peak of live tensor bytes made under the mode, views and deletions included."""

import torch

from sparge_diffusers.live_memory import LiveBytes


def test_peak_and_live_bytes_follow_storages():
    weights = torch.randn(100, 100)  # made before the mode: not counted
    mib = 1000 * 1000 * 4
    with LiveBytes() as tracker:
        a = torch.randn(1000, 1000)
        b = a * 2
        view = b.view(-1)  # shares b's storage: no new bytes
        del a
        c = view + weights[0, 0].item()
        del b, view
        assert tracker.live == mib  # only c is left
    assert tracker.peak == 2 * mib
    assert max(item[3] for item in tracker.at_peak) == mib
    del c
