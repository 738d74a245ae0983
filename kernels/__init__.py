"""Attention kernels of sparge-diffusers. One folder of truth per op, the Triton kernel beside its pure-PyTorch
``naive`` reference (the style of fla-org/flash-linear-attention):

- `quantize/`: INT8 Q/K (K smoothed), FP8 V and the predictors' block statistics (`quantize.prepare_fwd`);
- `predict/`: stage-1 block-mass estimates and the selection kernel (`predict.select_blocks_fwd`);
- `block_sparse_attn/`: the stage-2 block-sparse attention kernel (`block_sparse_attn.block_sparse_attn_fwd`);
- `selection`: the one selection rule (top-k, TopCdf τ, the error budget ε) and its naive selectors;
- `budget/`: the error budget's per-head drop masses, measured on sampled exact rows (`budget.budget_drop_mass`:
  Triton on CUDA, the naive PyTorch reference elsewhere);
- `geometry`: block counts and forced ranges; `lut`: kept-block lists; `evaluation`: exact masses and mask errors;
- `reference`: the whole call composed from the naive references (what the CPU runs);
- `dispatch`: the Triton launch sequence and its ``torch.library`` op.

Nothing here imports the integration layer; Triton is imported only when a launcher is first used, so importing this
package works without a GPU.
"""
