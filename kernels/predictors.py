"""Block predictors beyond the paper's stage 1, the error-budget selection rule, and mask evaluation helpers.

Pure PyTorch, vectorised, device-agnostic: this is the reference each future Triton predictor is tested against and
also what runs on the GPU until one exists. Layout: ``q: [B, H, Sq, D]``, ``k, v: [B, H, Sk, D]``; block maps
``[B, H, NQ, NK]`` (``NQ = ceil(Sq / block_m)``, ``NK = ceil(Sk / block_n)``).

Predictors (all estimate the block mass ``M[i, j]``: the attention mass that the rows of query block ``i`` put on
key block ``j``, averaged over the rows, the quantity the ideal selector ranks by):

- ``"sparge"`` (the paper's stage 1, `reference.naive_predict_block_mask`): ``softmax_j(q̄_i · k̄_j · scale)``.
  Pooling both sides loses the spread of the keys within a block (``exp`` is convex: a block with one very close
  key scores like a block of average keys) and the spread of the queries.
- ``"lse"``: ``M̂[i, j] ∝ Σ_{c ∈ j} exp(q̄_i · k_c · scale + ½ scale² Σ_d σ²_{i,d} k_{c,d}²)``: the mean query of each
  block scored against every key token, log-sum-exp'ed over each key block, with a second-moment (Gaussian,
  diagonal) correction for the spread ``σ²_i`` of the queries of the block. Keys are not pooled, so the spread of
  the keys is exact. Cost: two ``[NQ, D] x [D, Sk]`` matmuls per head, ``2·Sq·Sk·D / block_m`` multiply-adds,
  i.e. ``1 / block_m`` of dense attention's ``4·Sq·Sk·D`` FLOPs (0.8% at block_m = 128), plus ``Sq·Sk / block_m``
  exponentials.

Selection (`select_by_drop_mass`): per query block, drop the least massive key blocks while their cumulative
predicted mass stays within a drop budget ``δ``; forced blocks (text rows / columns) are never dropped and their
mass counts as kept. With an error budget ``ε`` (``SpargeConfig.target_error``) the rule is ``δ = ε · c`` with the
constant ``c = DROP_MASS_PER_ERROR`` measured on video-like attention (see `benchmarks/results/predictor_eval.md`).

Evaluation (`MaskSweep`, `masked_attention_rel_l1`): the relative L1 error against fp32 dense attention of many
block masks at once, streaming over query blocks so that 45K-token sequences fit in a few hundred MB; it also
yields the exact block mass of each chunk so that the ideal selector can be evaluated in the same pass.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .reference import (
    block_token_counts,
    naive_block_mean,
    naive_forced_blocks,
    naive_select_cdf,
    num_blocks,
)

_EPS = 1e-12

# Predicted mass dropped per unit of relative-L1 budget: δ = ε · DROP_MASS_PER_ERROR. Measured with the "lse"
# predictor on the video-like inputs of `sparge_diffusers.video_inputs` (full CogVideoX and Flux geometries, both
# token orders): relL1 / δ was 0.06-0.32 on the tuning variant; c = 0.8 / 0.32 = 2.5 leaves a 20% margin. On the
# held-out variant relL1 / δ reached 0.39 at small δ and 0.33 at δ = 0.125 (ε = 0.05), so the rule still held
# (relL1 0.040 at ε = 0.05, 0.025 at ε = 0.03). See benchmarks/results/predictor_eval.md.
DROP_MASS_PER_ERROR = 2.5


# Estimated block mass


def _pad_keys(k: torch.Tensor, block_n: int) -> torch.Tensor:
    nk = num_blocks(k.shape[-2], block_n)
    return torch.nn.functional.pad(k, (0, 0, 0, nk * block_n - k.shape[-2]))


def naive_lse_block_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    scale: float,
    variance_weight: float = 1.0,
) -> torch.Tensor:
    """Log of the estimated block mass (unnormalised): ``[B, H, NQ, NK]`` fp32.

    ``logits[i, j] = logsumexp_{c ∈ j}(q̄_i · k_c · scale + variance_weight · ½ scale² Σ_d σ²_{i,d} k_{c,d}²)``
    with ``q̄_i`` and ``σ²_i`` the per-channel mean and variance of the valid queries of block ``i``. Padded key
    positions of a partial last block contribute nothing.
    """
    qf = q.float()
    q_mean = naive_block_mean(qf, block_m)  # [B, H, NQ, D]
    sk = k.shape[-2]
    # One GEMM with a 2·D inner dim: [q̄·scale, ½ w scale² σ²] · [k, k∘k]ᵀ
    query_side = [q_mean * scale]
    key_side = [k]
    if variance_weight:
        q_var = (naive_block_mean(qf * qf, block_m) - q_mean * q_mean).clamp_min(0.0)  # [B, H, NQ, D]
        query_side.append(q_var * (0.5 * variance_weight * scale * scale))
        key_side.append(k * k)
    lhs = torch.cat(query_side, dim=-1).to(k.dtype)  # [B, H, NQ, D or 2D]
    rhs = _pad_keys(torch.cat(key_side, dim=-1), block_n)  # [B, H, NK*bn, D or 2D]
    # operands rounded to the input dtype, products summed and kept in fp32 (as the Triton kernel does)
    logits = torch.matmul(lhs.float(), rhs.float().transpose(-1, -2))  # [B, H, NQ, NK*bn]
    if rhs.shape[-2] > sk:
        logits[..., sk:] = float("-inf")
    nk = num_blocks(sk, block_n)
    return torch.logsumexp(logits.unflatten(-1, (nk, block_n)), dim=-1).float()


def naive_lse_block_probs(q, k, *, block_m: int, block_n: int, scale: float, variance_weight: float = 1.0):
    """Estimated block mass, rows summing to 1: ``softmax_j`` of `naive_lse_block_logits`."""
    logits = naive_lse_block_logits(q, k, block_m=block_m, block_n=block_n, scale=scale,
                                    variance_weight=variance_weight)
    return torch.softmax(logits, dim=-1)


def naive_sampled_rows_block_probs(q, k, *, block_m: int, block_n: int, scale: float, rows: int = 4):
    """Block mass measured on ``rows`` evenly spaced query rows of each block (exact softmax over all keys).

    Cost: ``rows / block_m`` of the Q·Kᵀ of dense attention. Returns ``[B, H, NQ, NK]``, rows summing to 1.
    """
    sq, sk = q.shape[-2], k.shape[-2]
    nq, nk = num_blocks(sq, block_m), num_blocks(sk, block_n)
    counts = block_token_counts(sq, block_m, q.device).long()  # [NQ]
    offsets = (torch.arange(rows, device=q.device) * 2 + 1)  # odd multiples: centres of `rows` equal parts
    index = torch.arange(nq, device=q.device)[:, None] * block_m + (offsets[None, :] * counts[:, None]) // (2 * rows)
    sample = q.float()[..., index.flatten(), :]  # [B, H, NQ*rows, D]
    kp = _pad_keys(k.float(), block_n)
    logits = torch.matmul(sample, kp.transpose(-1, -2)) * scale
    if kp.shape[-2] > sk:
        logits[..., sk:] = float("-inf")
    probs = torch.softmax(logits, dim=-1).unflatten(-1, (nk, block_n)).sum(-1)
    return probs.unflatten(-2, (nq, rows)).mean(-2)


def naive_sparge_block_probs(q, k, *, block_m: int, block_n: int, scale: float) -> torch.Tensor:
    """The paper's pooled estimate ``softmax_j(q̄_i k̄_jᵀ · scale + log n_j)`` (no forced columns removed)."""
    q_mean = naive_block_mean(q, block_m)
    k_mean = naive_block_mean(k, block_n)
    logits = torch.matmul(q_mean, k_mean.transpose(-1, -2)) * scale
    logits = logits + torch.log(block_token_counts(k.shape[-2], block_n, k.device))
    return torch.softmax(logits, dim=-1)


# Selection


def select_by_drop_mass(probs: torch.Tensor, drop_mass: float, forced: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per row, drop the least probable blocks while their cumulative mass stays ``<= drop_mass`` (δ).

    Args:
        probs: ``[..., NK]`` non-negative block masses (rows summing to about 1).
        drop_mass: δ >= 0; 0 keeps every block with positive mass... and every block at all (ties at zero mass are
            dropped only when δ > 0).
        forced: bool broadcastable to ``probs``; forced blocks are never dropped.
    Returns:
        bool ``[..., NK]`` kept blocks; every row keeps at least its most probable block.
    """
    if drop_mass <= 0:
        return torch.ones_like(probs, dtype=torch.bool)
    p = probs.float()
    if forced is not None:
        p = p.masked_fill(forced, float("inf"))
    sorted_p, order = torch.sort(p, dim=-1, stable=True)  # ascending
    dropped_sorted = torch.cumsum(sorted_p, dim=-1) <= drop_mass
    dropped_sorted[..., -1] = False  # the most probable block always stays
    dropped = torch.zeros_like(dropped_sorted).scatter(-1, order, dropped_sorted)
    return ~dropped


def naive_predict_block_mask_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_m: int,
    block_n: int,
    scale: float,
    topk: Optional[float] = None,
    drop_mass: Optional[float] = None,
    keep_ranges: Sequence[Tuple[int, int]] = (),
    variance_weight: float = 1.0,
) -> torch.Tensor:
    """The ``"lse"`` predictor: bool ``[B, H, NQ, NK]`` kept blocks.

    Scores blocks with `naive_lse_block_probs` (softmax over all key blocks, forced ones included), then keeps
    per query block either the ``round(topk · NK)`` most probable blocks (forced columns count against the budget,
    as in the paper's top-k) or every block except the least probable ones whose cumulative mass is ``<= δ``
    (``drop_mass``). Rows and columns touching ``keep_ranges`` are always kept. Every row keeps at least one block.
    """
    from .reference import naive_select_topk, topk_block_count

    if (topk is None) == (drop_mass is None):
        raise ValueError("naive_predict_block_mask_lse needs exactly one of topk or drop_mass")
    probs = naive_lse_block_probs(q, k, block_m=block_m, block_n=block_n, scale=scale,
                                  variance_weight=variance_weight)  # [B, H, NQ, NK] fp32
    forced_rows, forced_cols = naive_forced_blocks(q, k, block_m=block_m, block_n=block_n, keep_ranges=keep_ranges)
    forced_cols = forced_cols.unsqueeze(-2)
    if topk is not None:
        nk = probs.shape[-1]
        budget = topk_block_count(topk, nk) - forced_cols.sum(dim=-1)
        selected = naive_select_topk(probs.masked_fill(forced_cols, -1.0), budget.clamp_min(0))
    else:
        selected = select_by_drop_mass(probs, drop_mass, forced_cols.expand_as(probs))
    return selected | forced_cols | forced_rows.unsqueeze(-1)


# Evaluation: relative L1 of many masks against fp32 dense attention, in one streaming pass


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


__all__ = [
    "DROP_MASS_PER_ERROR",
    "MaskSweep",
    "best_sparsity",
    "masked_attention_rel_l1",
    "naive_lse_block_logits",
    "naive_lse_block_probs",
    "naive_predict_block_mask_lse",
    "naive_sampled_rows_block_probs",
    "naive_sparge_block_probs",
    "select_by_drop_mass",
]
