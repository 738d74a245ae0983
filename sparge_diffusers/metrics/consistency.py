"""CLIP-T: temporal consistency of a video as the mean CLIP image-embedding cosine of consecutive frames.

``CLIP-T = 100 · mean_t cos(E_{I_t}, E_{I_{t+1}})`` (the frame-consistency score of Tune-A-Video and later video
editing / generation papers), on the CLIPScore scale (100 = every frame embeds identically). Undefined (None) for a
single frame.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .clip_score import LocalClip


def clip_t_consistency(frames: np.ndarray, clip: LocalClip) -> Optional[float]:
    """CLIP-T of uint8 frames ``[T, H, W, 3]``; None when ``T < 2``."""
    if len(frames) < 2:
        return None
    embeddings = clip.image_embeddings(frames)
    return float(100.0 * (embeddings[1:] * embeddings[:-1]).sum(dim=-1).mean())
