"""Procedural training videos: coloured objects moving over backgrounds, with captions and ground-truth tracks.

The embedded CogVideoX model (`sparge_diffusers.embedded`) is trained on these clips only, and
`sparge_diffusers.checker` reads its renders with the same vocabulary. A clip is one object (``ball``,
``square``, ``ring``, ``triangle``) of one colour (``red``, ``yellow``, ``green``, ``cyan``, ``blue``,
``magenta``: hues 60 degrees apart, so the checker can tell them apart after a VAE) doing one motion over a
background of low saturation (plain, a linear gradient, or a grey texture from scikit-image's sample images), so
the object is the only saturated colour of the frame.

Motions, in normalised frame coordinates (x right, y down), over progress ``s = t / (T - 1)``:

==============  ==================================================  ======================================
motion          track                                               captions
==============  ==================================================  ======================================
rolling left    x falls by 0.35-0.55, y fixed                       "a red ball rolling left", "... rolling"
rolling right   x rises by 0.35-0.55, y fixed                       "a red ball rolling right", "... rolling"
falling         y rises by 0.4-0.6, accelerating (``s**2``)        "a red ball falling"
rising          y falls by 0.4-0.6                                  "a red ball rising"
bouncing        y = ground - A |cos(pi s)|: down, then back up      "a red ball bouncing"
growing         centre fixed, radius x 2.5-3.5                      "a red ball growing"
orbiting        quarter to full turn (0.6-0.9 of 2 pi) on a circle  "a red ball orbiting"
==============  ==================================================  ======================================

"rolling" with no direction means horizontal rolling, either way: the short caption is trained on both, so
"a red ball rolling" is a prompt the model knows, and the checker accepts either direction for it.

Everything is deterministic from the seed: clip parameters are drawn on the CPU from ``torch.Generator(seed)``,
then the frames are rendered in one vectorised pass on the requested device (32 clips of 9 x 128 x 128 take
~0.8 s on two shared CPU cores).

Example::

    batch = procedural_batch(8, frames=9, height=128, width=128, seed=0)
    batch.frames.shape   # [8, 9, 128, 128, 3] float32 in [0, 1]
    batch.captions[0]    # e.g. "a blue ring falling"
    batch.centroids[0]   # [9, 2] (x, y) in pixels
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

logger = logging.getLogger(__name__)

OBJECTS: Tuple[str, ...] = ("ball", "square", "ring", "triangle")
# hue in degrees (HSV) and the rendered RGB of each colour word
COLOURS = {
    "red": (0.0, (0.90, 0.12, 0.10)),
    "yellow": (58.0, (0.92, 0.86, 0.10)),
    "green": (120.0, (0.12, 0.78, 0.18)),
    "cyan": (185.0, (0.10, 0.80, 0.88)),
    "blue": (228.0, (0.15, 0.25, 0.92)),
    "magenta": (300.0, (0.85, 0.15, 0.85)),
}
COLOUR_NAMES: Tuple[str, ...] = tuple(COLOURS)
MOTIONS: Tuple[str, ...] = ("rolling left", "rolling right", "falling", "rising", "bouncing", "growing", "orbiting")
BACKGROUNDS: Tuple[str, ...] = ("plain", "gradient", "texture")
# grey scikit-image sample images used as textures (all ship inside the scikit-image wheel)
TEXTURE_NAMES: Tuple[str, ...] = ("camera", "moon", "brick", "grass", "gravel", "coins", "clock")
SHORT_CAPTION_RATE = 0.35  # share of rolling clips captioned "... rolling" without a direction

_TYPES = {name: i for i, name in enumerate(OBJECTS)}
_MOTION_IDS = {name: i for i, name in enumerate(MOTIONS)}


@dataclass(frozen=True)
class ClipSpec:
    """What one clip shows: the object, its colour, its motion, and whether its caption names the direction."""

    obj: str
    colour: str
    motion: str
    short: bool = False  # "rolling" without "left"/"right" (rolling motions only)

    def __post_init__(self) -> None:
        if self.obj not in OBJECTS:
            raise ValueError(f"obj must be one of {OBJECTS}, got {self.obj!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour must be one of {COLOUR_NAMES}, got {self.colour!r}")
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {self.motion!r}")

    @property
    def caption(self) -> str:
        motion = "rolling" if self.short and self.motion.startswith("rolling") else self.motion
        return f"a {self.colour} {self.obj} {motion}"


@dataclass
class ProceduralBatch:
    """Rendered clips and their ground truth.

    ``frames``: float32 ``[B, T, H, W, 3]`` in [0, 1]; ``centroids``: ``[B, T, 2]`` (x, y) in pixels;
    ``radius``: ``[B, T]`` in pixels; ``specs``: one `ClipSpec` per clip; ``captions``: their captions.
    """

    frames: torch.Tensor
    centroids: torch.Tensor
    radius: torch.Tensor
    specs: List[ClipSpec]

    @property
    def captions(self) -> List[str]:
        return [spec.caption for spec in self.specs]

    def uint8(self) -> torch.Tensor:
        """Frames as uint8 ``[B, T, H, W, 3]``."""
        return (self.frames * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)


def vocabulary() -> List[str]:
    """Every word a caption can hold (the tokenizer of the embedded model is built from this list)."""
    words = ["a", "an", "the", "rolling", "left", "right", "cube"]
    words += list(OBJECTS) + list(COLOUR_NAMES)
    for motion in MOTIONS:
        words += motion.split()
    seen, out = set(), []
    for word in words:
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


def all_specs() -> List[ClipSpec]:
    """Every (object, colour, motion) combination, with the direction named (168 specs)."""
    return [ClipSpec(o, c, m) for o in OBJECTS for c in COLOUR_NAMES for m in MOTIONS]


def sample_specs(n: int, generator: torch.Generator) -> List[ClipSpec]:
    """``n`` uniformly drawn clip specs; rolling clips get the short caption with `SHORT_CAPTION_RATE`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    o = torch.randint(len(OBJECTS), (n,), generator=generator).tolist()
    c = torch.randint(len(COLOUR_NAMES), (n,), generator=generator).tolist()
    m = torch.randint(len(MOTIONS), (n,), generator=generator).tolist()
    s = (torch.rand(n, generator=generator) < SHORT_CAPTION_RATE).tolist()
    return [ClipSpec(OBJECTS[oi], COLOUR_NAMES[ci], MOTIONS[mi], short=bool(si and MOTIONS[mi].startswith("rolling")))
            for oi, ci, mi, si in zip(o, c, m, s)]


@functools.lru_cache(maxsize=4)
def _texture_bank(size: int) -> torch.Tensor:
    """Grey textures ``[N, size, size]`` in [0, 1] from scikit-image's bundled sample images (centre crop)."""
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - scikit-image is a test / metrics dependency
        raise ImportError("texture backgrounds need scikit-image (pip install scikit-image)") from exc
    out = []
    for name in TEXTURE_NAMES:
        image = torch.as_tensor(getattr(skimage.data, name)(), dtype=torch.float32) / 255.0
        h, w = image.shape[:2]
        side = min(h, w)
        image = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        image = torch.nn.functional.interpolate(image[None, None], size=(size, size), mode="area")[0, 0]
        out.append(image)
    return torch.stack(out)


def _motion_tracks(specs: Sequence[ClipSpec], frames: int, g: torch.Generator):
    """Per-clip centre ``[B, T, 2]`` (normalised x, y) and radius ``[B, T]`` (fraction of the short side)."""
    n = len(specs)
    s = torch.linspace(0.0, 1.0, frames).expand(n, frames) if frames > 1 else torch.zeros(n, 1)
    u = torch.rand(n, 8, generator=g)
    radius0 = 0.09 + 0.05 * u[:, 0]  # [B]
    cx = torch.full((n, frames), 0.5)
    cy = torch.full((n, frames), 0.5)
    radius = radius0[:, None].expand(n, frames).clone()
    for i, spec in enumerate(specs):
        r = float(radius0[i])
        dist = 0.35 + 0.2 * float(u[i, 1])
        lane = 0.3 + 0.4 * float(u[i, 2])  # fixed coordinate of straight motions
        if spec.motion in ("rolling left", "rolling right"):
            start = 0.5 + dist / 2 if spec.motion == "rolling left" else 0.5 - dist / 2
            sign = -1.0 if spec.motion == "rolling left" else 1.0
            cx[i] = start + sign * dist * s[i]
            cy[i] = lane
        elif spec.motion in ("falling", "rising"):
            top = 0.5 - dist / 2
            cx[i] = lane
            cy[i] = top + dist * s[i] ** 2 if spec.motion == "falling" else (top + dist) - dist * s[i]
        elif spec.motion == "bouncing":
            ground = 0.72 + 0.08 * float(u[i, 3])
            height = 0.4 + 0.15 * float(u[i, 1])
            cx[i] = lane
            cy[i] = ground - height * torch.abs(torch.cos(math.pi * s[i]))
        elif spec.motion == "growing":
            r = 0.05 + 0.02 * float(u[i, 0])
            radius[i] = r * (1.0 + (1.5 + float(u[i, 1])) * s[i])
            cx[i] = 0.35 + 0.3 * float(u[i, 2])
            cy[i] = 0.35 + 0.3 * float(u[i, 3])
        else:  # orbiting
            orbit = 0.2 + 0.06 * float(u[i, 3])
            phase = 2 * math.pi * float(u[i, 4])
            sweep = 2 * math.pi * (0.6 + 0.3 * float(u[i, 5])) * (1.0 if float(u[i, 6]) < 0.5 else -1.0)
            angle = phase + sweep * s[i]
            cx[i] = 0.5 + orbit * torch.cos(angle)
            cy[i] = 0.5 + orbit * torch.sin(angle)
            radius[i] = min(r, 0.11)
    return torch.stack([cx, cy], dim=-1), radius


def _backgrounds(n: int, height: int, width: int, g: torch.Generator, kinds: Sequence[str]) -> torch.Tensor:
    """Low-saturation backgrounds ``[B, H, W, 3]`` in [0, 1]."""
    for kind in kinds:
        if kind not in BACKGROUNDS:
            raise ValueError(f"backgrounds must be drawn from {BACKGROUNDS}, got {kind!r}")
    pick = torch.randint(len(kinds), (n,), generator=g)
    base = 0.25 + 0.45 * torch.rand(n, 1, 1, 1, generator=g)  # brightness
    tint = 1.0 + 0.12 * (torch.rand(n, 1, 1, 3, generator=g) - 0.5)  # saturation <= ~0.1
    yy = torch.linspace(0, 1, height).view(1, height, 1, 1)
    xx = torch.linspace(0, 1, width).view(1, 1, width, 1)
    angle = 2 * math.pi * torch.rand(n, 1, 1, 1, generator=g)
    ramp = (torch.cos(angle) * (xx - 0.5) + torch.sin(angle) * (yy - 0.5))  # [B, H, W, 1] in ~[-0.7, 0.7]
    gradient = base + 0.35 * ramp
    out = base.expand(n, height, width, 1).clone()
    kind_of = [kinds[int(p)] for p in pick]
    grad_rows = [i for i, k in enumerate(kind_of) if k == "gradient"]
    if grad_rows:
        out[grad_rows] = gradient[grad_rows]
    tex_rows = [i for i, k in enumerate(kind_of) if k == "texture"]
    if tex_rows:
        side = max(height, width)
        bank = _texture_bank(side)
        which = torch.randint(bank.shape[0], (len(tex_rows),), generator=g)
        flip = torch.rand(len(tex_rows), generator=g) < 0.5
        tex = bank[which][:, :height, :width]
        tex = torch.where(flip.view(-1, 1, 1), tex.flip(-1), tex)
        contrast = 0.35 + 0.25 * torch.rand(len(tex_rows), 1, 1, generator=g)
        out[tex_rows] = (base[tex_rows, 0] * 0.6 + contrast * (tex - 0.5) + 0.15)[..., None]
    return (out * tint).clamp(0.02, 0.98)


def render(specs: Sequence[ClipSpec], *, frames: int, height: int, width: int, seed: int = 0, device="cpu",
           backgrounds: Sequence[str] = BACKGROUNDS) -> ProceduralBatch:
    """Render one clip per spec: ``frames`` frames of ``height x width``, deterministic from ``seed``.

    Object masks are anti-aliased signed-distance shapes; the ball is lightly shaded. ``backgrounds`` picks the
    background kinds drawn from (``"texture"`` needs scikit-image).
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if height < 8 or width < 8:
        raise ValueError(f"height and width must be >= 8, got {height} x {width}")
    if not specs:
        raise ValueError("specs must hold at least one ClipSpec")
    g = torch.Generator().manual_seed(int(seed))
    n = len(specs)
    centre, radius = _motion_tracks(specs, frames, g)  # [B, T, 2], [B, T] normalised
    background = _backgrounds(n, height, width, g, tuple(backgrounds))  # [B, H, W, 3]
    short = float(min(height, width))
    cx = (centre[..., 0] * width).to(device)  # [B, T] pixels
    cy = (centre[..., 1] * height).to(device)
    rad = (radius * short).to(device)
    kind = [_TYPES[s.obj] for s in specs]
    rgb = torch.tensor([COLOURS[s.colour][1] for s in specs], device=device).view(n, 1, 1, 1, 3)
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, 1, height, 1) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, 1, width) + 0.5
    video = background.to(device)[:, None].expand(n, frames, height, width, 3).clone()  # [B, T, H, W, 3]
    for k in sorted(set(kind)):  # one signed-distance shape per object kind, over the clips of that kind
        rows = torch.tensor([i for i in range(n) if kind[i] == k], device=device)
        dx = xs - cx[rows][..., None, None]  # [b, T, 1, W] - > [b, T, H, W] below
        dy = ys - cy[rows][..., None, None]
        r = rad[rows][..., None, None]
        if k in (0, 2):
            dist = torch.sqrt(dx * dx + dy * dy)
            sdf = dist - r if k == 0 else torch.maximum(dist - r, 0.5 * r - dist)
        elif k == 1:
            sdf = torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
        else:  # upward triangle (y down): base at y = r/2, apex at y = -r
            sdf = torch.maximum(dy - 0.5 * r, (math.sqrt(3.0) * dx.abs() - dy - r) / 2.0)
        alpha = (0.5 - sdf).clamp_(0.0, 1.0)[..., None]  # [b, T, H, W, 1]
        colour = rgb[rows]
        if k == 0:  # light shading of the ball
            colour = colour * (1.0 - 0.25 * (dist / r.clamp_min(1e-3)).clamp(0, 1) ** 2)[..., None]
        video[rows] = video[rows] * (1.0 - alpha) + colour * alpha
    centroids = torch.stack([cx, cy], dim=-1).cpu()
    return ProceduralBatch(frames=video, centroids=centroids, radius=rad.cpu(), specs=list(specs))


def procedural_batch(batch_size: int, *, frames: int, height: int, width: int, seed: int = 0, device="cpu",
                     backgrounds: Sequence[str] = BACKGROUNDS) -> ProceduralBatch:
    """``batch_size`` random clips (specs and rendering both from ``seed``)."""
    g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    specs = sample_specs(batch_size, g)
    return render(specs, frames=frames, height=height, width=width, seed=seed, device=device,
                  backgrounds=backgrounds)


__all__ = [
    "BACKGROUNDS", "COLOURS", "COLOUR_NAMES", "ClipSpec", "MOTIONS", "OBJECTS", "ProceduralBatch",
    "all_specs", "procedural_batch", "render", "sample_specs", "vocabulary",
]
