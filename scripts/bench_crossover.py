"""Where the sparse path stops paying: the whole `sparge_attn` call (eager, as users run it) against cuDNN SDPA over
sequence length × head dim × sparsity, in one run on the GPU. The table it prints (and writes as JSON with
``--table``) is what `sparge_diffusers.speed_rule` uses to send calls that cannot win to cuDNN.

    python scripts/bench_crossover.py --out benchmarks/results/crossover_h200.csv --table sparge_diffusers/crossover/sm90.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

import torch
import triton
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

from sparge_diffusers import SpargeConfig, sparge_attn

LENGTHS = (1024, 2048, 4608, 8192, 17776, 32760)
TOPKS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1)


def timed(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--table", default=None)
    args = parser.parse_args(argv)
    rows, table = [], {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                       "capability": "sm%d%d" % torch.cuda.get_device_capability(), "min_sparsity": {}}
    for head_dim, heads in ((64, 30), (128, 24)):
        table["min_sparsity"][str(head_dim)] = []
        for seq in LENGTHS:
            q, k, v = (torch.randn(2, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                dense = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
            winning = None
            for topk in TOPKS:
                config = SpargeConfig(topk=topk, predictor="full" if topk == 1.0 else "lse", check_finite=False,
                                      speed_rule="sparse")
                ms = timed(lambda: sparge_attn(q, k, v, config=config))
                sparsity = 1.0 - topk
                rows.append(dict(gpu=table["gpu"], torch=torch.__version__, triton=triton.__version__,
                                 head_dim=head_dim, heads=heads, batch=2, seq_len=seq, topk=topk, sparsity=sparsity,
                                 cudnn_ms=round(dense, 4), sparge_eager_ms=round(ms, 4),
                                 x_cudnn=round(dense / ms, 3)))
                if ms < dense and winning is None:
                    winning = sparsity
                print(rows[-1], flush=True)
            table["min_sparsity"][str(head_dim)].append([seq, winning])
            del q, k, v
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if args.table:
        with open(args.table, "w") as handle:
            json.dump(table, handle, indent=1)
    print("\nhead_dim  seq_len  least sparsity at which the eager sparse call beats cuDNN")
    for head_dim, entries in table["min_sparsity"].items():
        for seq, sparsity in entries:
            print(f"{head_dim:>8s} {seq:8d}  {sparsity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
