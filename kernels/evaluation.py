"""Evaluation only: exact block mass, the ideal selector, and the relative L1 of block masks against fp32 dense
attention (`MaskSweep` streams over query blocks so that 45K-token sequences fit in a few hundred MB and yields the
exact block mass of each chunk, so that the ideal selector is evaluated in the same pass)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .geometry import block_token_counts, num_blocks
from .selection import naive_select_cdf, select_by_drop_mass

_EPS = 1e-12


def naive_block_mass(q: torch.Tensor, k: torch.Tensor, block_m: int, block_n: int, scale: float) -> torch.Tensor:
    """True attention mass of each block, averaged over the query block's rows: ``[B, H, NQ, NK]``, rows sum to 1.

    Needs the dense ``[Sq, Sk]`` map per head: for evaluation only.
    """
    probs = torch.softmax(torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale, dim=-1)
    nq, nk = num_blocks(q.shape[-2], block_m), num_blocks(k.shape[-2], block_n)
    probs = torch.nn.functional.pad(probs, (0, nk * block_n - k.shape[-2], 0, nq * block_m - q.shape[-2]))
    mass = probs.unflatten(-1, (nk, block_n)).sum(-1).unflatten(-2, (nq, block_m)).sum(-2)
    return mass / block_token_counts(q.shape[-2], block_m, q.device)[:, None]


def naive_ideal_block_mask(q: torch.Tensor, k: torch.Tensor, *, block_m: int, block_n: int, scale: float,
                           cdf_threshold: float) -> torch.Tensor:
    """The ideal selector (evaluation only): TopCdf (τ) over the exact block mass of `naive_block_mass`."""
    return naive_select_cdf(naive_block_mass(q, k, block_m, block_n, scale), cdf_threshold)


class MaskSweep:
    """Accumulates ``Σ|out_mask − out_dense|`` for many block masks, and ``Σ|out_dense|``, over heads.

    Usage: ``sweep.add_head(q, k, v, masks, ideal_thresholds)`` per head (``q: [Sq, D]``, masks ``[M, NQ, NK]``),
    then ``sweep.rel_l1()`` / ``sweep.sparsity()``. Masked outputs are exact block-sparse softmax attention in fp32
    (the ``precision="bf16"`` stage 2 of the reference on fp32 inputs), computed from per-(row, key block) partial
    sums so that the dense score matrix is formed once per chunk of query blocks. The ideal selector (TopCdf τ over
    the exact block mass) is evaluated in the same pass for each τ of ``ideal_thresholds``.
    """

    def __init__(self, num_masks: int, ideal_thresholds: Sequence[float] = (), ideal_drop_mass: Sequence[float] = ()):
        self.num_masks = num_masks
        self.ideal_thresholds = tuple(ideal_thresholds)
        self.ideal_drop_mass = tuple(ideal_drop_mass)
        total = num_masks + len(self.ideal_thresholds) + len(self.ideal_drop_mass)
        self.abs_diff = torch.zeros(total, dtype=torch.float64)
        self.kept = torch.zeros(total, dtype=torch.float64)
        self.blocks = 0.0
        self.ref_abs = 0.0

    @torch.no_grad()
    def add_head(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masks: torch.Tensor, *, block_m: int,
                 block_n: int, scale: float, chunk_blocks: Optional[int] = None,
                 mass_out: Optional[torch.Tensor] = None,
                 ideal_forced: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        """One head: ``q: [Sq, D]``, ``k, v: [Sk, D]``, masks bool ``[M, NQ, NK]``.

        ``mass_out``, if given (fp32 ``[NQ, NK]``), receives the exact block mass (`naive_block_mass`).
        ``ideal_forced``: bool ``(rows [NQ], cols [NK])`` blocks the ideal masks always keep (e.g. text), so that
        the ideal is compared with predictors under the same forced blocks.
        """
        sq, sk, d = q.shape[0], k.shape[0], v.shape[-1]
        nq, nk = num_blocks(sq, block_m), num_blocks(sk, block_n)
        if chunk_blocks is None:  # ~64 M score entries per chunk
            chunk_blocks = max(1, min(nq, (1 << 26) // (block_m * nk * block_n)))
        qp = torch.nn.functional.pad(q.float(), (0, 0, 0, nq * block_m - sq))
        kp = torch.nn.functional.pad(k.float(), (0, 0, 0, nk * block_n - sk))
        vp = torch.nn.functional.pad(v.float(), (0, 0, 0, nk * block_n - sk)).view(nk, block_n, d)
        masks_f = masks.to(torch.float32)
        ideal = len(self.ideal_thresholds) + len(self.ideal_drop_mass)
        for i0 in range(0, nq, chunk_blocks):
            i1 = min(nq, i0 + chunk_blocks)
            nb = i1 - i0
            rows = nb * block_m
            scores = torch.matmul(qp[i0 * block_m: i1 * block_m], kp.T)  # [rows, NK*bn]
            scores.mul_(scale)
            if nk * block_n > sk:
                scores[:, sk:] = float("-inf")
            scores.sub_(scores.amax(dim=-1, keepdim=True))
            scores.exp_()
            z = scores.view(rows, nk, block_n).sum(-1)  # [rows, NK]
            num = torch.bmm(scores.view(rows, nk, block_n).transpose(0, 1), vp)  # [NK, rows, D]
            num = num.view(nk, nb, block_m, d).permute(1, 0, 2, 3).reshape(nb, nk, block_m * d)
            del scores
            z_total = z.sum(-1)  # [rows]
            ref = num.sum(1).view(nb, block_m, d) / z_total.view(nb, block_m, 1)
            valid = (torch.arange(i0 * block_m, i1 * block_m, device=q.device) < sq).view(nb, block_m, 1)
            self.ref_abs += float((ref.abs() * valid).sum())
            # exact block mass of this chunk's query blocks
            counts = block_token_counts(sq, block_m, q.device)[i0:i1]
            mass = ((z / z_total[:, None]).view(nb, block_m, nk) * valid).sum(1) / counts[:, None]  # [nb, NK]
            if mass_out is not None:
                mass_out[i0:i1] = mass
            chunk_masks = [masks_f[:, i0:i1]]
            if ideal:
                forced = None
                if ideal_forced is not None:
                    forced = ideal_forced[0][i0:i1, None] | ideal_forced[1][None, :]
                    mass = mass.masked_fill(forced, 0.0)  # forced blocks are kept anyway: drop among the rest
                ideal_masks = [naive_select_cdf(mass, t) for t in self.ideal_thresholds]
                ideal_masks += [select_by_drop_mass(mass, dm) for dm in self.ideal_drop_mass]
                if forced is not None:
                    ideal_masks = [m | forced for m in ideal_masks]
                chunk_masks += [m.float()[None] for m in ideal_masks]
            m = torch.cat(chunk_masks, 0).transpose(0, 1).contiguous()  # [nb, M', NK]
            out = torch.bmm(m, num).view(nb, -1, block_m, d)  # [nb, M', bm, D]
            den = torch.bmm(m, z.view(nb, block_m, nk).transpose(1, 2))  # [nb, M', bm]
            out = out / den.clamp_min(_EPS).unsqueeze(-1)
            diff = ((out - ref.unsqueeze(1)).abs() * valid.unsqueeze(1)).sum(dim=(0, 2, 3))
            self.abs_diff += diff.double().cpu()
            self.kept += m.sum(dim=(0, 2)).double().cpu()
            self.blocks += nb * nk

    def rel_l1(self) -> torch.Tensor:
        """Relative L1 of each mask (given masks first, then the ideal per τ, then per δ): float64 ``[M']``."""
        return self.abs_diff / max(self.ref_abs, _EPS)

    def sparsity(self) -> torch.Tensor:
        """Fraction of skipped blocks of each mask, over all heads added: float64 ``[M']``."""
        return 1.0 - self.kept / max(self.blocks, 1.0)


def masked_attention_rel_l1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, *,
                            block_m: int, block_n: int, scale: Optional[float] = None) -> float:
    """Relative L1 (``Σ|out − ref| / Σ|ref|`` over the whole tensor) of exact block-sparse attention with
    ``block_mask [B, H, NQ, NK]`` against fp32 dense attention; streams over query blocks (evaluation only)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    sweep = MaskSweep(1)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            sweep.add_head(q[b, h], k[b, h], v[b, h], block_mask[b, h][None], block_m=block_m, block_n=block_n,
                           scale=scale)
    return float(sweep.rel_l1()[0])


def best_sparsity(rel_l1: Sequence[float], sparsity: Sequence[float], budget: float) -> Tuple[float, Optional[int]]:
    """Largest sparsity among settings with relative L1 ``<= budget``: ``(sparsity, index)``; ``(0.0, None)`` if
    none qualifies."""
    best, best_index = 0.0, None
    for index, (err, sp) in enumerate(zip(rel_l1, sparsity)):
        if float(err) <= budget and float(sp) > best:
            best, best_index = float(sp), index
    return best, best_index


def relative_l1(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``Σ|out − ref| / Σ|ref|`` in fp32, the error measure of the paper and of ANCHORS.md."""
    ref = ref.float()
    return float((out.float() - ref).abs().sum() / ref.abs().sum().clamp_min(_EPS))


def cosine_similarity(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors."""
    return float(torch.nn.functional.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0))


__all__ = [
    "MaskSweep",
    "best_sparsity",
    "cosine_similarity",
    "masked_attention_rel_l1",
    "naive_block_mass",
    "naive_ideal_block_mask",
    "relative_l1",
]
