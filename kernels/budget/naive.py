"""Ground truth of the error budget ε (`budget.kernel`): per-head drop budgets measured on sampled exact rows of
the same call.

A fixed map from predicted dropped mass to error cannot be a budget: how much output error a dropped block causes
depends on how wrong the predicted mass is and on how far that block's values lie from the output, and both change
from model to model, layer to layer and head to head. So the budget is checked, not assumed.

For one call, per (batch, head):

1. Sample ``rows`` query rows, one in each of ``rows`` evenly spaced query blocks (all blocks when there are
   fewer), at a fixed pseudo-random offset inside the block.
2. For those rows compute the exact softmax partial sums per key block: ``z[r, j] = Σ_{c ∈ j} exp(s_rc − m_r)``
   and ``u[r, j] = Σ_{c ∈ j} exp(s_rc − m_r) v_c`` (a ``rows / block_m`` share of the dense Q·Kᵀ and P·V work:
   about 0.4-0.8% at 128-token blocks).
3. Rank each sampled row's key blocks as the selection kernel does: the *predicted* block masses of its query
   block, least massive first, forced blocks never dropped, the most massive block always kept. Dropping the
   first ``n`` blocks of that order leaves ``out_n = (Σ u − Σ_{first n} u) / (Σ z − Σ_{first n} z)`` whose
   distance to the exact row ``Σ u / Σ z`` is the error the selection would cause on that row.
4. For a ladder of drop masses δ (`DROP_MASS_LADDER`) measure the relative L1 error over the sampled rows, and
   keep the largest δ whose error, and that of every smaller δ, stays ``<= GUARD_MARGIN · ε``. When no δ meets
   it, the head keeps every block (δ = `KEEP_ALL`): the budget keeps more blocks, never fewer.

The drop mass then selects blocks for every query block of the head in the selection kernel (mode 2). Because
every head meets ε on its own rows, the relative L1 of the whole call (a weighted mean over heads) meets it too.
This is a sampled estimate, so it can miss by the sampling error; `GUARD_MARGIN` and `GUARD_ROWS` were chosen on
one evaluation family and checked on all of them (`benchmarks/results/predictor_eval.md`).

`naive_budget_drop_mass` is plain PyTorch (a few matmuls, exponentials and cumulative sums, chunked over heads so
that a 45K-token call stays within a few hundred MB): what the CPU runs and what the Triton path
(`kernel.budget_drop_mass_fwd`) is tested against.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..geometry import block_token_counts, num_blocks

# Sampled query rows per (batch, head): one in each of up to this many query blocks.
GUARD_ROWS = 96
# The measured error on the sampled rows must stay within this share of ε (the rest is left to sampling error).
GUARD_MARGIN = 0.75
# Drop masses tried, largest first: 0.5 down to 2^-15 in steps of √2.
DROP_MASS_LADDER = tuple(2.0 ** (-k / 2.0) for k in range(2, 31))
# The per-head drop mass that keeps every block (the selection keeps blocks while the mass before them is
# below the total minus δ, so a negative δ drops nothing).
KEEP_ALL = -1.0

_EPS = 1e-30


def sample_rows(seq_len_q: int, block_m: int, rows: int, device=None) -> torch.Tensor:
    """Query rows the guard measures: long ``[R]`` (one per sampled query block, ascending)."""
    nq = num_blocks(seq_len_q, block_m)
    count = min(nq, max(1, rows))
    blocks = torch.div(torch.arange(count, device=device) * nq, count, rounding_mode="floor")
    tokens = block_token_counts(seq_len_q, block_m, device).long()[blocks]
    offset = (blocks * 53 + 17) % tokens  # a fixed spread of positions inside the blocks
    return blocks * block_m + offset


def naive_row_partials(q_rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, block_n: int,
                       low_precision: bool = False):
    """Exact per-key-block softmax partial sums of some query rows.

    Args:
        q_rows: ``[G, R, D]``; k, v: ``[G, Sk, D]`` (G = batch·heads of a chunk).
        low_precision: run the two matmuls on bf16 operands (tensor cores; what the GPU path does). The scores
            and the per-block sums are then rounded to bf16 (relative 2⁻⁸) before the fp32 exponentials and sums;
            the reference and every candidate selection are measured from the same rounded partials, so the
            rounding perturbs each block's share by well under a percent, not the difference between selections.
    Returns:
        ``z [G, R, NK]`` fp32 and ``u [G, R, NK, D]`` fp32 (scores shifted by each row's max).
    """
    g, r, d = q_rows.shape
    sk = k.shape[1]
    nk = num_blocks(sk, block_n)
    pad = nk * block_n - sk
    operand = torch.bfloat16 if low_precision else torch.float32
    scores = torch.matmul((q_rows.float() * scale).to(operand), k.to(operand).transpose(-1, -2)).float()  # [G,R,Sk]
    scores = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    if pad:
        scores = torch.nn.functional.pad(scores, (0, pad))
    weights = scores.view(g, r, nk, block_n)
    z = weights.sum(-1)  # [G, R, NK]
    vb = torch.nn.functional.pad(v.to(operand), (0, 0, 0, pad)).view(g, nk, block_n, v.shape[-1])
    # [G, NK, R, bn] x [G, NK, bn, D] -> [G, NK, R, D]: one batched matmul over (chunk, key block)
    u = torch.matmul(weights.to(operand).transpose(1, 2), vb).transpose(1, 2).float()  # [G, R, NK, D]
    return z, u


def drop_errors(probs_rows: torch.Tensor, forced_cols: torch.Tensor, forced_rows: torch.Tensor, z: torch.Tensor,
                u: torch.Tensor, ladder) -> torch.Tensor:
    """Relative L1 over the sampled rows of dropping blocks by predicted mass, for each drop mass of ``ladder``.

    Args:
        probs_rows: ``[G, R, NK]`` predicted block masses of each sampled row's query block.
        forced_cols: bool ``[G, NK]`` or ``[NK]``: never dropped. forced_rows: bool ``[R]`` or ``[G, R]``: rows
            whose query block keeps everything.
        z, u: `naive_row_partials`.
    Returns:
        fp32 ``[G, C]``.
    """
    p = probs_rows.float().masked_fill(forced_cols.unsqueeze(-2) if forced_cols.dim() == 2 else forced_cols,
                                       float("inf"))
    sorted_p, order = torch.sort(p, dim=-1, stable=True)  # ascending: the drop order
    cum = torch.cumsum(sorted_p, dim=-1)  # [G, R, NK]
    deltas = torch.tensor(ladder, dtype=torch.float32, device=p.device)
    n_drop = (cum.unsqueeze(-1) <= deltas).sum(dim=-2)  # [G, R, C]
    n_drop = n_drop.clamp(max=p.shape[-1] - 1)  # the most massive block always stays
    n_drop = n_drop.masked_fill(forced_rows.unsqueeze(-1) if forced_rows.dim() == 2 else forced_rows[:, None], 0)
    zs = torch.gather(z, -1, order)
    us = torch.gather(u, -2, order.unsqueeze(-1).expand_as(u))
    cz = torch.nn.functional.pad(torch.cumsum(zs, dim=-1), (1, 0))  # [G, R, NK+1]
    cu = torch.nn.functional.pad(torch.cumsum(us, dim=-2), (0, 0, 1, 0))  # [G, R, NK+1, D]
    z_all, u_all = cz[..., -1:], cu[..., -1:, :]  # [G, R, 1], [G, R, 1, D]
    ref = u_all / z_all.unsqueeze(-1).clamp_min(_EPS)  # [G, R, 1, D]
    kept_z = z_all - torch.gather(cz, -1, n_drop)  # [G, R, C]
    kept_u = u_all - torch.gather(cu, -2, n_drop.unsqueeze(-1).expand(*n_drop.shape, u.shape[-1]))
    out = kept_u / kept_z.unsqueeze(-1).clamp_min(_EPS)  # [G, R, C, D]
    err = (out - ref).abs().sum(dim=(1, 3))  # [G, C]
    return err / ref.abs().sum(dim=(1, 2, 3)).clamp_min(_EPS).unsqueeze(-1)


def choose_drop_mass(errors: torch.Tensor, target: float, ladder) -> torch.Tensor:
    """Per row of ``errors [G, C]`` (ladder largest first), the largest δ whose error and that of every smaller δ
    is ``<= target``; `KEEP_ALL` when even the smallest fails. fp32 ``[G]``."""
    ok = errors <= target  # [G, C]
    # ladder descends: a δ qualifies when it and every later (smaller) entry are ok
    tail_ok = torch.flip(torch.cumprod(torch.flip(ok.int(), [-1]), dim=-1), [-1]).bool()
    first = torch.where(tail_ok.any(-1), tail_ok.int().argmax(-1), torch.full_like(ok[:, 0], len(ladder),
                                                                                    dtype=torch.long))
    values = torch.tensor(tuple(ladder) + (KEEP_ALL,), dtype=torch.float32, device=errors.device)
    return values[first]


@torch.no_grad()
def naive_budget_drop_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probs: torch.Tensor, *,
                           target_error: float, block_m: int, block_n: int, scale: float, forced_rows: torch.Tensor,
                           forced_cols: torch.Tensor, rows: int = GUARD_ROWS, margin: float = GUARD_MARGIN,
                           max_chunk_elements: int = 1 << 25, low_precision: Optional[bool] = None) -> torch.Tensor:
    """Per-(batch, head) drop mass δ meeting the error budget ε on sampled exact rows (see the module docstring).

    Args:
        q: ``[B, H, Sq, D]``; k, v: ``[B, H, Sk, D]`` (any strides, any float dtype).
        probs: ``[B, H, NQ, NK]`` predicted block masses (the softmax the selection kernel uses).
        forced_rows: bool ``[NQ]`` (or ``[B, H, NQ]``), forced_cols: bool ``[NK]`` (or ``[B, H, NK]``): blocks the
            selection always keeps.
        rows: sampled rows per (batch, head); margin: the share of ε the sampled error may use.
        low_precision: bf16 matmuls for the sampled rows (`naive_row_partials`); default: on CUDA tensors.
    Returns:
        fp32 ``[B, H]`` drop masses (`KEEP_ALL` where no δ meets the budget).
    """
    b, h, sq, d = q.shape
    sk = k.shape[2]
    nq, nk = probs.shape[-2:]
    row_index = sample_rows(sq, block_m, rows, q.device)  # [R]
    row_block = torch.div(row_index, block_m, rounding_mode="floor")
    r = row_index.numel()
    qf, kf, vf = (x.reshape(b * h, *x.shape[2:]) for x in (q, k, v))
    probs_rows = probs.reshape(b * h, nq, nk)[:, row_block]  # [BH, R, NK]
    fr = forced_rows.reshape(-1, nq) if forced_rows.dim() > 1 else forced_rows[None]
    fc = forced_cols.reshape(-1, nk) if forced_cols.dim() > 1 else forced_cols[None]
    fr = fr.expand(b * h, nq)[:, row_block]  # [BH, R]
    fc = fc.expand(b * h, nk)
    target = margin * target_error
    per_head = r * max(sk, nk * d) * 3
    chunk = max(1, min(b * h, max_chunk_elements // max(per_head, 1)))
    out = torch.empty(b * h, dtype=torch.float32, device=q.device)
    for g0 in range(0, b * h, chunk):
        g1 = min(b * h, g0 + chunk)
        z, u = naive_row_partials(qf[g0:g1, row_index], kf[g0:g1], vf[g0:g1], scale=scale, block_n=block_n,
                                  low_precision=q.is_cuda if low_precision is None else low_precision)
        errors = drop_errors(probs_rows[g0:g1], fc[g0:g1], fr[g0:g1], z, u, DROP_MASS_LADDER)
        out[g0:g1] = choose_drop_mass(errors, target, DROP_MASS_LADDER)
    return out.view(b, h)


__all__ = ["DROP_MASS_LADDER", "GUARD_MARGIN", "GUARD_ROWS", "KEEP_ALL", "choose_drop_mass", "drop_errors",
           "naive_budget_drop_mass", "naive_row_partials", "sample_rows"]

