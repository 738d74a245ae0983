"""Error floor of FP8 e4m3 P·V on random inputs, with exact fp32 accumulation (CPU, a few seconds).

Rounds P (scaled by 448, as the kernel does) and V (per-channel scale, as `quantize.prepare_fwd` does) to
``torch.float8_e4m3fn`` and multiplies in fp32, so the only error left is the rounding of the two operands. The
result is the best relative L1 against the fp32 oracle that any kernel with e4m3 P and V can reach on these inputs,
whatever its accumulator (the SageAttention2 paper, arXiv 2411.10958, discusses the FP8 accumulator separately).

    python scripts/fp8_error_floor.py --seq-len 8192 --head-dim 128
"""

from __future__ import annotations

import argparse
from typing import List, Optional

import torch

from sparge_diffusers.kernels.reference import relative_l1

P_SCALE = 448.0


def e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float8_e4m3fn).float()


def error_floor(seq_len: int, head_dim: int, heads: int = 2, seed: int = 0) -> dict:
    """relL1 against the fp32 oracle for: P in e4m3, V in e4m3, both (exact fp32 products and sums)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(heads, seq_len, head_dim, generator=gen) for _ in range(3))
    scores = (q @ k.transpose(-1, -2)) * head_dim ** -0.5
    p = torch.exp(scores - scores.amax(-1, keepdim=True))  # [H, S, S]
    row_sum = p.sum(-1, keepdim=True)
    oracle = (p @ v) / row_sum
    p8 = e4m3(p * P_SCALE) / P_SCALE
    v_scale = v.abs().amax(-2, keepdim=True) / 448.0  # per channel, as prepare_fwd
    v8 = e4m3(v / v_scale) * v_scale
    return {
        "p_e4m3": relative_l1((p8 @ v) / row_sum, oracle),
        "v_e4m3": relative_l1((p @ v8) / row_sum, oracle),
        "p_and_v_e4m3": relative_l1((p8 @ v8) / row_sum, oracle),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args(argv)
    print("| head dim | P e4m3 | V e4m3 | P and V e4m3 |\n|---|---|---|---|")
    for d in args.head_dim:
        r = error_floor(args.seq_len, d)
        print(f"| {d} | {r['p_e4m3']:.4f} | {r['v_e4m3']:.4f} | {r['p_and_v_e4m3']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
