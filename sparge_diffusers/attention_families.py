"""Evaluation families of attention inputs, built in unlike ways, so that no one generator can be overfit.

An error budget or a predictor tuned on one way of making attention says little about another. Each family here
makes Q, K, V for a `video_inputs.Geometry` (latent grid, text tokens and side, head dim) by a different
construction:

- ``"clip"``: `video_inputs.video_like_qkv` (content features of a real clip, 3-D rotary, hub direction) at several
  style settings (`CLIP_STYLES`: the default style, sharper heads, broader heads, more local heads).
- ``"structured"``: no clip at all; each head is one archetype seen in video diffusion transformers
  (`STRUCTURED_KINDS`): *local* (similarity of random Fourier features of the (t, h, w) position: a 3-D window),
  *temporal* (features of (h, w) only: the same place in every frame, the temporal diagonal), *hub* (a few
  keys share a direction every query prefers: global keys), *text* (every visual query prefers the text keys),
  *mixed* (a blend). Values are random features of position with noise.
- ``"values"``: the clip and structured families with values moved: zero-mean values (``"values-zero"``) and
  values with a large shared mean (``"values-offset"``, mean = 3× the per-channel spread), which changes how far
  dropped blocks lie from the output.
- ``"random"``: i.i.d. normal Q, K, V (near-uniform attention: the budget must find almost no sparsity).
- ``"trained"``: Q, K, V captured from the trained embedded model (`sparge_diffusers.capture`), loaded from a file.

`FAMILIES` lists the synthetic ones; `family_qkv` builds one. The error budget's constants were chosen on
``"clip"`` with the default style only (`TUNING_FAMILIES`); everything else is held out.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Dict, Optional, Sequence, Tuple

import torch

from .video_inputs import STYLE, Geometry, rotary_3d, scaled_geometry, video_like_qkv

CLIP_STYLES: Dict[str, object] = {
    "default": STYLE,
    "sharp": replace(STYLE, temperature=(0.8, 2.0)),
    "broad": replace(STYLE, temperature=(0.12, 0.4), position_weight=(0.5, 1.0)),
    "local": replace(STYLE, rope_base=(2.0, 20.0), content_weight=(0.1, 0.4)),
}
STRUCTURED_KINDS = ("local", "temporal", "hub", "text", "mixed")
FAMILIES = ("clip", "structured", "values-zero", "values-offset", "random")
TUNING_FAMILIES = ("clip/default",)


def clip_for_seed(seed: int) -> Tuple[str, int]:
    """``(clip, first frame)`` the clip-based families use for a seed: bikes for even seeds, bigbuckbunny for odd."""
    return ("bikes" if seed % 2 == 0 else "bigbuckbunny"), seed % 7


def _coords(grid: Tuple[int, int, int], device=None) -> torch.Tensor:
    t, h, w = grid
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt, hh, ww], -1).reshape(-1, 3).float().to(device)  # [N, 3]


def _fourier(x: torch.Tensor, dim: int, width: Sequence[float], gen: torch.Generator) -> torch.Tensor:
    """Random Fourier features with ``φ(x)·φ(y) / dim ≈ exp(−Σ_a (x_a − y_a)² / 2 width_a²)``: ``[N, dim]``."""
    freqs = torch.randn(x.shape[-1], dim, generator=gen) / torch.tensor(width).view(-1, 1)
    phase = torch.rand(dim, generator=gen) * 2 * math.pi
    return torch.cos(x @ freqs + phase) * math.sqrt(2.0)


def structured_head(kind: str, grid: Tuple[int, int, int], head_dim: int, text_tokens: int, gen: torch.Generator):
    """One head of an archetype (see the module docstring): visual ``q, k, v [N, D]`` and text ``[T, D]`` each."""
    if kind not in STRUCTURED_KINDS:
        raise ValueError(f"kind must be one of {STRUCTURED_KINDS}, got {kind!r}")
    coords = _coords(grid)
    n = coords.shape[0]
    temp = math.exp(math.log(0.5) + float(torch.rand((), generator=gen)) * math.log(4.0))  # 0.5 .. 2
    width_s = 1.0 + 3.0 * float(torch.rand((), generator=gen))
    width_t = 0.5 + 2.0 * float(torch.rand((), generator=gen))
    noise = 0.3
    if kind == "temporal":
        feats = _fourier(coords[:, 1:], head_dim, (width_s * 0.7, width_s * 0.7), gen)
    else:
        feats = _fourier(coords, head_dim, (width_t, width_s, width_s), gen)
    mix = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=gen))[0]
    q = feats @ mix + noise * torch.randn(n, head_dim, generator=gen)
    k = feats @ (mix + 0.2 * torch.randn(head_dim, head_dim, generator=gen) / math.sqrt(head_dim))
    k = k + noise * torch.randn(n, head_dim, generator=gen)
    direction = torch.randn(head_dim, generator=gen)
    direction = direction / direction.norm() * math.sqrt(head_dim)
    text_k = torch.randn(text_tokens, head_dim, generator=gen)
    if kind in ("hub", "mixed"):
        hubs = torch.randperm(n, generator=gen)[: max(1, n // 64)]
        k[hubs] += (1.5 if kind == "hub" else 0.8) * direction
        q += 0.5 * direction
    if kind in ("text", "mixed") and text_tokens:
        text_dir = torch.randn(head_dim, generator=gen)
        text_dir = text_dir / text_dir.norm() * math.sqrt(head_dim)
        text_k += 1.2 * text_dir
        q += 0.6 * text_dir
    q = q * temp
    v = _fourier(coords, head_dim, (2.0, 4.0, 4.0), gen) @ torch.randn(head_dim, head_dim, generator=gen)
    v = v / math.sqrt(head_dim) + 0.5 * torch.randn(n, head_dim, generator=gen)
    text_q = torch.randn(text_tokens, head_dim, generator=gen) * q.std()
    text_v = torch.randn(text_tokens, head_dim, generator=gen) * v.std()
    return (q, k, v), (text_q, text_k, text_v)


def _join(visual, text, text_first: bool):
    if not text[0].shape[0]:
        return visual
    return tuple(torch.cat([t, x] if text_first else [x, t], dim=0) for x, t in zip(visual, text))


def family_qkv(family: str, geometry: Geometry, *, heads: Sequence[int], seed: int = 0, style: str = "default",
               dtype: torch.dtype = torch.float32, device="cpu") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K, V ``[1, len(heads), text + visual, D]`` of a family for a geometry (visual tokens row-major; apply a
    `TokenPermutation` for another order).

    Args:
        family: one of `FAMILIES`.
        heads: head indices (their parameters are drawn from the seed and the index).
        style: a key of `CLIP_STYLES` (``"clip"`` and ``"values-*"``), or a kind of `STRUCTURED_KINDS` to make every
            head of ``"structured"`` that kind (default: heads cycle through the kinds).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    grid = geometry.grid3
    n_text = geometry.text_tokens
    if family == "random":
        gen = torch.Generator().manual_seed(seed)
        shape = (1, len(heads), geometry.seq_len, geometry.head_dim)
        q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    elif family == "structured" or (family.startswith("values") and seed % 2 == 1):
        qs, ks, vs = [], [], []
        for head in heads:
            gen = torch.Generator().manual_seed(7_777 * seed + 131 * head + 3)
            kind = style if style in STRUCTURED_KINDS else STRUCTURED_KINDS[head % len(STRUCTURED_KINDS)]
            visual, text = structured_head(kind, grid, geometry.head_dim, n_text, gen)
            visual = tuple(rotary_3d(x, grid, 50.0, geometry.rope_split) if i < 2 else x
                           for i, x in enumerate(visual))
            q, k, v = _join(visual, text, geometry.text_first)
            qs.append(q), ks.append(k), vs.append(v)
        q, k, v = (torch.stack(z)[None] for z in (qs, ks, vs))
    else:
        clip_style = CLIP_STYLES.get(style, STYLE)
        clip, start = clip_for_seed(seed)
        q, k, v = video_like_qkv(grid, geometry.heads, geometry.head_dim, text_tokens=n_text,
                                 text_first=geometry.text_first, clip=clip, clip_start=start, seed=seed,
                                 head_indices=heads, rope_split=geometry.rope_split, style=clip_style)
    if family == "values-zero":
        v = v - v.mean(dim=-2, keepdim=True)
    elif family == "values-offset":
        v = v - v.mean(dim=-2, keepdim=True)
        v = v + 3.0 * v.std(dim=-2, keepdim=True) * torch.sign(torch.randn(v.shape[-1], generator=torch.Generator()
                                                                            .manual_seed(seed)))
    return tuple(z.to(device=device, dtype=dtype).contiguous() for z in (q, k, v))


def load_captured(path: str, *, limit: Optional[int] = None):
    """Records captured from a real model (`sparge_diffusers.capture`): a list of dicts with ``q, k, v`` ``[1, H, S,
    D]`` and ``text_range``, ``grid``, ``layer``, ``step``, read from a ``torch.save`` file."""
    records = torch.load(path, map_location="cpu", weights_only=False)
    return records[:limit] if limit else records


__all__ = ["CLIP_STYLES", "FAMILIES", "STRUCTURED_KINDS", "TUNING_FAMILIES", "clip_for_seed", "family_qkv",
           "load_captured",
           "scaled_geometry", "structured_head"]
