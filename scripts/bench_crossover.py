"""Where the sparse path stops paying: the whole `sparge_attn` call (eager, as users run it) against cuDNN SDPA over
sequence length × batch × head dim × sparsity, in one run on the GPU. The table it prints (and writes as JSON with
``--table``, keeping the file's other entries) is what `sparge_diffusers.speed_rule` uses to send calls that cannot
win to cuDNN. A sparsity wins at a shape when it and every larger measured sparsity beat cuDNN by `MARGIN` (run-to-run
noise of an eager call is about 1%). Each row also has SDPA's own backend choice (what a stock pipeline runs) and the
sparse call replayed from a CUDA graph (its device time alone: eager minus graph is the host launch cost).

    python scripts/bench_crossover.py --out benchmarks/results/crossover_h200.csv --table sparge_diffusers/crossover/sm90.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import torch
import triton
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

from sparge_diffusers import SpargeConfig, sparge_attn
from sparge_diffusers.run_stats import capture_cuda_graph

LENGTHS = (1024, 2048, 4608, 8192, 17776, 32760)
TOPKS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1)
MARGIN = 1.03  # a win is at least 3% faster than cuDNN


def least_winning(times: dict, dense_ms: float):
    """The least measured sparsity from which every larger one beats ``dense_ms`` by `MARGIN` (None: none does)."""
    winning = None
    for sparsity in sorted(times, reverse=True):
        if times[sparsity] * MARGIN >= dense_ms:
            break
        winning = sparsity
    return winning


def timed(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")


def graph_timed(fn) -> float:
    """Device time of ``fn`` replayed from a CUDA graph: the call's cost when the host runs ahead of the GPU."""
    return timed(capture_cuda_graph(fn).replay)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--table", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    table = {}
    if args.table and os.path.exists(args.table):
        with open(args.table) as handle:
            table = json.load(handle)  # other measurements in the file (the budget call) are kept
    table.update({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                  "capability": "sm%d%d" % torch.cuda.get_device_capability(), "min_sparsity": {}})
    rows = []
    shapes = [(head_dim, heads, batch, seq) for head_dim, heads in ((64, 30), (128, 24)) for batch in args.batches
              for seq in LENGTHS]
    for head_dim, heads, batch, seq in shapes:
        entries = table["min_sparsity"].setdefault(str(head_dim), [])
        # [B, S, H, D] storage seen as [B, H, S, D] views: the layout diffusers' attention gives SDPA
        q, k, v = [torch.randn(batch, seq, heads, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                   for _ in range(3)]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            dense = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        # what a stock pipeline runs: SDPA's own backend choice
        stock = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        times = {}
        for topk in TOPKS:
            # the default predictor: the rule then errs to dense for the cheaper lse
            config = SpargeConfig(topk=topk, predictor="full" if topk == 1.0 else SpargeConfig.predictor,
                                  check_finite=False, speed_rule="sparse")
            ms = timed(lambda: sparge_attn(q, k, v, config=config))
            graph_ms = graph_timed(lambda: sparge_attn(q, k, v, config=config))
            sparsity = round(1.0 - topk, 4)
            rows.append(dict(gpu=table["gpu"], torch=torch.__version__, triton=triton.__version__,
                             head_dim=head_dim, heads=heads, batch=batch, seq_len=seq, topk=topk, sparsity=sparsity,
                             cudnn_ms=round(dense, 4), sdpa_default_ms=round(stock, 4),
                             sparge_eager_ms=round(ms, 4), sparge_graph_ms=round(graph_ms, 4),
                             x_cudnn=round(dense / ms, 3), graph_x_cudnn=round(dense / graph_ms, 3)))
            times[sparsity] = ms
            print(rows[-1], flush=True)
        entries.append([seq, batch * heads, least_winning(times, dense)])
        q = k = v = None  # free before the next length
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if args.table:
        with open(args.table, "w") as handle:
            json.dump(table, handle, indent=1)
    print("\nhead_dim  seq_len  batch*heads  least sparsity at which the eager sparse call beats cuDNN")
    for head_dim, entries in table["min_sparsity"].items():
        for seq, batch_heads, sparsity in entries:
            print(f"{head_dim:>8s} {seq:8d} {batch_heads:12d}  {sparsity}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
