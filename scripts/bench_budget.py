"""What the error budget costs: the sampled-row measurement (`kernels.budget.budget_drop_mass`) and the whole
`sparge_attn` call with ``target_error`` (measuring in the call, or reusing a guard's drop masses) against dense
cuDNN SDPA, in one run on the GPU (`triton.testing.do_bench`, median). Prints a table and writes a CSV.

    python scripts/bench_budget.py --out benchmarks/results/budget_cost_h200.csv
"""

from __future__ import annotations

import argparse
import csv
import sys

import torch
import triton
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

from sparge_diffusers import SpargeConfig, sparge_attn
from sparge_diffusers import attention_families as F
from sparge_diffusers.budget_guard import BudgetGuard
from sparge_diffusers.kernels.budget import budget_drop_mass
from sparge_diffusers.kernels.geometry import blocks_touching

SHAPES = {"flux1024": ("flux", 24, 4608, 128, 512), "cogvideox2b": ("cogvideox", 30, 17776, 64, 226),
          "mochi": ("mochi", 24, 44776, 128, 256)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--eps", type=float, default=0.05)
    args = parser.parse_args(argv)
    rows = []
    name_gpu = torch.cuda.get_device_name()
    for name, (geometry, heads, seq, dim, text) in SHAPES.items():
        geo = F.scaled_geometry(geometry)
        # video-like inputs (every head drawn; heads of the layer), bf16, batch 2 as a CFG batch
        q, k, v = F.family_qkv("clip", geo, heads=list(range(heads)), seed=3, device="cuda", dtype=torch.bfloat16)
        q, k, v = (torch.cat([x, x.flip(1)], 0).contiguous() for x in (q, k, v))
        keep = [geo.text_range]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            dense = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                                            return_mode="median")
        nq = triton.cdiv(seq, 128)
        probs = torch.softmax(torch.randn(2, heads, nq, nq, device="cuda"), -1)
        fr = blocks_touching(keep, seq, 128, "cuda")
        guard_ms = triton.testing.do_bench(lambda: budget_drop_mass(
            q, k, v, probs, target_error=args.eps, block_m=128, block_n=128, scale=dim ** -0.5, forced_rows=fr,
            forced_cols=fr), return_mode="median")
        config = SpargeConfig(target_error=args.eps, keep_token_ranges=keep, check_finite=False, speed_rule="sparse")
        measured_ms = triton.testing.do_bench(lambda: sparge_attn(q, k, v, config=config), return_mode="median")
        guard = BudgetGuard(max_interval=1 << 30)
        _, stats = sparge_attn(q, k, v, config=config, guard=guard, return_stats=True)
        guard.update(q.shape[:2], stats.drop_mass)
        guard.interval = 1 << 30  # reuse from now on
        reused_ms = triton.testing.do_bench(lambda: sparge_attn(q, k, v, config=config, guard=guard),
                                            return_mode="median")
        topk_ms = triton.testing.do_bench(lambda: sparge_attn(q, k, v, config=config.replace(topk=0.5)),
                                          return_mode="median")
        row = dict(gpu=name_gpu, torch=torch.__version__, triton=triton.__version__, shape=name, seq_len=seq,
                   heads=heads, head_dim=dim, eps=args.eps, sparsity=round(stats.mean_sparsity, 4),
                   cudnn_ms=round(dense, 4), guard_ms=round(guard_ms, 4), guard_share=round(guard_ms / dense, 4),
                   budget_measured_ms=round(measured_ms, 4), budget_reused_ms=round(reused_ms, 4),
                   topk05_ms=round(topk_ms, 4), x_cudnn_measured=round(dense / measured_ms, 3),
                   x_cudnn_reused=round(dense / reused_ms, 3))
        rows.append(row)
        print(row, flush=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{'shape':12s} {'cudnn ms':>9s} {'guard ms':>9s} {'share':>6s} {'sparsity':>8s} {'x cudnn (measure)':>17s} "
          f"{'x cudnn (reuse)':>15s} {'topk0.5 ms':>10s}")
    for r in rows:
        print(f"{r['shape']:12s} {r['cudnn_ms']:9.3f} {r['guard_ms']:9.3f} {r['guard_share']:6.1%} {r['sparsity']:8.3f} "
              f"{r['x_cudnn_measured']:17.2f} {r['x_cudnn_reused']:15.2f} {r['topk05_ms']:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
