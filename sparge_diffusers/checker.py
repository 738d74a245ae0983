"""Prompt-following check for the embedded model's videos, with no learned weights.

Reads a decoded video ``[T, H, W, 3]`` the way `sparge_diffusers.procedural` draws one: the object is the only
saturated colour of the frame. Steps:

1. colour: the saturated pixels (HSV saturation ``>= SAT_MIN`` and value ``>= VAL_MIN``) of all frames vote in a
   hue histogram weighted by saturation; the dominant hue is matched to the nearest colour word
   (`procedural.COLOURS`, hues 60 degrees apart);
2. track: per frame, the centroid and area of the pixels within ``HUE_TOL`` degrees of that hue;
3. motion: the track is classified as ``rolling left`` / ``rolling right`` / ``falling`` / ``rising`` /
   ``bouncing`` / ``growing`` / ``orbiting`` / ``still`` (`classify_motion`, thresholds in units of the frame's
   short side);
4. the prompt is parsed with the same vocabulary (`parse_prompt`); ``rolling`` with no direction accepts either
   horizontal direction. Words the vocabulary lacks leave that part unchecked (``None``).

Example::

    result = check_video(frames, "a red ball rolling")
    result.colour_ok, result.motion_ok   # booleans
    accuracy([result, ...])              # {"colour": 1.0, "motion": 0.9, "both": 0.9, "n": ...}
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .procedural import COLOURS, MOTIONS, OBJECTS

logger = logging.getLogger(__name__)

SAT_MIN = 0.35  # HSV saturation of "object" pixels (backgrounds stay below ~0.15)
VAL_MIN = 0.2
HUE_TOL = 30.0  # degrees around the dominant hue that count as the object
MIN_PIXELS_FRAC = 0.002  # a frame with fewer object pixels than this share has no centroid
MOVE_MIN = 0.12  # displacement (fraction of the short side) that counts as a move
GROW_RATIO = 1.6  # last / first area that counts as growing

OBJECT_SYNONYMS = {"cube": "square", "box": "square", "circle": "ball", "sphere": "ball", "disc": "ball"}


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for, in the checker's vocabulary (``None`` = the prompt does not say)."""

    colour: Optional[str]
    obj: Optional[str]
    motion: Optional[str]  # one of procedural.MOTIONS, or "rolling" (either direction)

    def accepted_motions(self) -> Tuple[str, ...]:
        if self.motion is None:
            return ()
        if self.motion == "rolling":
            return ("rolling left", "rolling right")
        return (self.motion,)


def parse_prompt(prompt: str) -> PromptSpec:
    """Colour, object and motion words of ``prompt`` (case and punctuation ignored)."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    words = re.findall(r"[a-z]+", prompt.lower())
    colour = next((w for w in words if w in COLOURS), None)
    obj = next((OBJECT_SYNONYMS.get(w, w) for w in words if w in OBJECTS or w in OBJECT_SYNONYMS), None)
    motion = None
    if "rolling" in words or "rolls" in words:
        i = words.index("rolling") if "rolling" in words else words.index("rolls")
        nxt = words[i + 1] if i + 1 < len(words) else ""
        motion = f"rolling {nxt}" if nxt in ("left", "right") else "rolling"
    else:
        for m in MOTIONS:
            if m in words:
                motion = m
                break
    return PromptSpec(colour, obj, motion)


def _to_float(frames) -> np.ndarray:
    arr = np.asarray(frames.detach().cpu() if hasattr(frames, "detach") else frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _hsv(rgb: np.ndarray):
    """Hue in degrees, saturation, value of ``[..., 3]`` floats in [0, 1]."""
    mx = rgb.max(-1)
    mn = rgb.min(-1)
    delta = mx - mn
    sat = np.where(mx > 1e-6, delta / np.maximum(mx, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return hue * 60.0, sat, mx


def _hue_distance(a, b):
    d = np.abs(np.asarray(a) - b) % 360.0
    return np.minimum(d, 360.0 - d)


@dataclass
class Track:
    """The object as the checker sees it: colour word, per-frame centroid ``[T, 2]`` (x, y in pixels; NaN where
    not found), per-frame area ``[T]`` (pixels) and the frame size."""

    colour: Optional[str]
    centroids: np.ndarray
    areas: np.ndarray
    height: int
    width: int


def track_object(frames) -> Track:
    """Dominant saturated colour and its centroid / area per frame (see the module docstring)."""
    video = _to_float(frames)
    t, h, w, _ = video.shape
    hue, sat, val = _hsv(video)
    sel = (sat >= SAT_MIN) & (val >= VAL_MIN)
    if sel.sum() < MIN_PIXELS_FRAC * h * w:
        return Track(None, np.full((t, 2), np.nan), np.zeros(t), h, w)
    hist, edges = np.histogram(hue[sel], bins=72, range=(0.0, 360.0), weights=sat[sel])
    hist = hist + 0.5 * (np.roll(hist, 1) + np.roll(hist, -1))  # smooth over neighbouring 5-degree bins
    peak = (edges[int(hist.argmax())] + 2.5) % 360.0
    names = list(COLOURS)
    colour = names[int(np.argmin([_hue_distance(peak, COLOURS[n][0]) for n in names]))]
    target = COLOURS[colour][0]
    obj = sel & (_hue_distance(hue, target) <= HUE_TOL)  # [T, H, W]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    areas = obj.reshape(t, -1).sum(-1).astype(np.float64)
    cent = np.full((t, 2), np.nan)
    for i in range(t):
        if areas[i] >= MIN_PIXELS_FRAC * h * w:
            cent[i] = (xs[obj[i]].mean(), ys[obj[i]].mean())
    return Track(colour, cent, areas, h, w)


def classify_motion(track: Track) -> Optional[str]:
    """Motion label of a track (one of procedural.MOTIONS, or ``"still"``); ``None`` if the object is lost in more
    than half of the frames."""
    ok = ~np.isnan(track.centroids[:, 0])
    if ok.sum() < max(2, (len(ok) + 1) // 2):
        return None
    c = track.centroids[ok] / float(min(track.height, track.width))  # normalised
    area = track.areas[ok]
    x, y = c[:, 0], c[:, 1]
    dx, dy = x[-1] - x[0], y[-1] - y[0]
    span_x, span_y = np.ptp(x), np.ptp(y)
    # orbiting: the centroid sweeps a large angle around the track's centre, moving in both axes
    centre = c.mean(0)
    ang = np.unwrap(np.arctan2(y - centre[1], x - centre[0]))
    radius = np.linalg.norm(c - centre, axis=1)
    if span_x > MOVE_MIN and span_y > MOVE_MIN and radius.min() > 0.05 and abs(ang[-1] - ang[0]) > 0.5 * math.pi:
        return "orbiting"
    # bouncing: down, then back up, with little horizontal motion
    lowest = int(np.argmax(y))
    if (0 < lowest < len(y) - 1 and y[lowest] - y[0] > MOVE_MIN and y[lowest] - y[-1] > MOVE_MIN
            and span_x < span_y):
        return "bouncing"
    if max(abs(dx), abs(dy)) >= MOVE_MIN:
        if abs(dx) >= abs(dy):
            return "rolling right" if dx > 0 else "rolling left"
        return "falling" if dy > 0 else "rising"
    first, last = area[: max(1, len(area) // 4)].mean(), area[-max(1, len(area) // 4):].mean()
    if last >= GROW_RATIO * max(first, 1.0):
        return "growing"
    return "still"


@dataclass
class CheckResult:
    """One video against its prompt: ``colour_ok`` / ``motion_ok`` are ``None`` where the prompt does not say."""

    prompt: str
    spec: PromptSpec
    colour: Optional[str]
    motion: Optional[str]
    colour_ok: Optional[bool]
    motion_ok: Optional[bool]
    track: Track = field(repr=False)

    @property
    def ok(self) -> bool:
        return bool(self.colour_ok is not False and self.motion_ok is not False)


def check_video(frames, prompt: str) -> CheckResult:
    """Check one decoded video ``[T, H, W, 3]`` (uint8 or float in [0, 1]) against ``prompt``."""
    spec = parse_prompt(prompt)
    track = track_object(frames)
    motion = classify_motion(track)
    colour_ok = None if spec.colour is None else track.colour == spec.colour
    motion_ok = None if spec.motion is None else motion in spec.accepted_motions()
    return CheckResult(prompt, spec, track.colour, motion, colour_ok, motion_ok, track)


def check_videos(videos: Sequence, prompts: Sequence[str]) -> List[CheckResult]:
    """`check_video` of each (video, prompt) pair."""
    if len(videos) != len(prompts):
        raise ValueError(f"videos and prompts must have the same length, got {len(videos)} and {len(prompts)}")
    return [check_video(v, p) for v, p in zip(videos, prompts)]


def accuracy(results: Sequence[CheckResult]) -> Dict[str, float]:
    """Share of checked videos whose colour / motion / both match (prompts that do not say are left out)."""
    def share(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else float("nan")

    return {"colour": share([r.colour_ok for r in results]), "motion": share([r.motion_ok for r in results]),
            "both": share([r.ok for r in results]), "n": len(results)}


__all__ = ["CheckResult", "PromptSpec", "Track", "accuracy", "check_video", "check_videos", "classify_motion",
           "parse_prompt", "track_object"]
