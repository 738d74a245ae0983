"""What the error budget costs: the sampled-row measurement (`kernels.budget.budget_drop_mass`, naive PyTorch and
Triton) and the whole `sparge_attn` call with ``target_error`` (measuring in the call, or reusing a guard's drop
masses) against dense cuDNN SDPA, in one run (`triton.testing.do_bench`, median). Prints a table and writes a CSV.
Also checks that the Triton measurement chooses the naive one's drop masses on the same inputs.

    python scripts/bench_budget.py --out benchmarks/results/budget_cost_h200.csv
    python scripts/bench_budget.py --tiny --out /tmp/budget_cost_tiny.csv   # CPU smoke run (Triton interpreter)

``--tiny`` shrinks every shape (grid scaled by 0.1, 2 heads) so that the whole script runs on a CPU in a minute:
without CUDA it sets ``TRITON_INTERPRET=1`` before Triton is imported, times with ``time.perf_counter`` and
measures dense attention with PyTorch's own SDPA; the numbers mean nothing there, only that every path runs.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch

# shape: (geometry, heads, sequence length, head dim, text tokens) at full size
SHAPES = {"flux1024": ("flux", 24, 4608, 128, 512), "cogvideox2b": ("cogvideox", 30, 17776, 64, 226),
          "mochi": ("mochi", 24, 44776, 128, 256)}
# guard variants timed against each other: today's PyTorch measurement and the Triton one (default launch settings;
# bf16 block sums; 32 sampled rows per program; three pipeline stages)
VARIANTS = {"naive": dict(implementation="naive"), "triton": dict(implementation="triton"),
            "triton_bf16": dict(implementation="triton", partials_dtype=torch.bfloat16),
            "triton_r32": dict(implementation="triton", block_r=32),
            "triton_s3": dict(implementation="triton", num_stages=3)}
TINY_GRID = 0.1
TINY_HEADS = 2


def _timer(cuda: bool):
    if cuda:
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, return_mode="median")

    def cpu_time(fn, reps: int = 2) -> float:
        fn()  # warm-up (the interpreter's first call also traces)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return cpu_time


def _ladder_steps(a: torch.Tensor, b: torch.Tensor, ladder) -> int:
    """Largest distance in ladder rungs between two drop-mass tensors (KEEP_ALL counts as the rung past the last)."""
    rungs = list(ladder) + [-1.0]

    def index(x: float) -> int:  # the drop masses are fp32 copies of the fp64 ladder: nearest rung
        return min(range(len(rungs)), key=lambda i: abs(rungs[i] - x))

    return max(abs(index(x) - index(y)) for x, y in zip(a.flatten().tolist(), b.flatten().tolist()))


def _reusing_guard(q, k, drop):
    """A `BudgetGuard` that reuses ``drop`` for every later call of this shape (agreeing updates double the
    interval: 31 of them put the next measurement 2^31 calls away)."""
    from sparge_diffusers.budget_guard import BudgetGuard

    guard = BudgetGuard(max_interval=1 << 31)
    key = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    for _ in range(32):
        guard.update(key, drop)
    return guard


def _stage_times(bench, q, k, v, probs, forced, scale) -> dict:
    """The Triton measurement's four launches timed one by one (`kernels.budget.kernel`, default settings)."""
    from sparge_diffusers.kernels.budget import GUARD_ROWS
    from sparge_diffusers.kernels.budget import kernel as K

    groups = q.shape[0] * q.shape[1]
    nq, nk = probs.shape[-2:]
    index, block = K.sampled_rows(q.shape[2], 128, GUARD_ROWS, q.device)
    flat = probs.reshape(groups, nq, nk)
    fr, fc = K.per_head_mask(forced, groups, nq), K.per_head_mask(forced, groups, nk)
    ladder = K.ladder_tensor(q.device)
    m, z, u = K.budget_partials_fwd(q, k, v, index, scale=scale, block_n=128)
    bucket = K.budget_buckets_fwd(flat, block, fr, fc, ladder)
    err = torch.empty((groups, index.numel(), ladder.numel()), dtype=torch.float32, device=q.device)
    ref_norm = torch.empty((groups, index.numel()), dtype=torch.float32, device=q.device)
    return dict(
        partials=bench(lambda: K.budget_partials_fwd(q, k, v, index, scale=scale, block_n=128)),
        buckets=bench(lambda: K.budget_buckets_fwd(flat, block, fr, fc, ladder)),
        errors=bench(lambda: K.budget_drop_errors_fwd(m, z, u, bucket, ladder.numel(), err, ref_norm)),
        choose=bench(lambda: K.budget_choose_fwd(err, ref_norm, ladder, 0.0375)),
        softmax=bench(lambda: torch.softmax(probs, dim=-1)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--tiny", action="store_true", help="shrunken shapes: a smoke run on the CPU")
    parser.add_argument("--skip-calls", action="store_true", help="time only the guard, not whole sparge_attn calls")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.tiny:
            parser.error("full shapes need a CUDA GPU; use --tiny for a CPU smoke run")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first import of Triton
    import triton  # noqa: E402
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

    from sparge_diffusers import SpargeConfig, sparge_attn  # noqa: E402
    from sparge_diffusers import attention_families as F  # noqa: E402
    from sparge_diffusers.kernels.budget import DROP_MASS_LADDER, budget_drop_mass  # noqa: E402
    from sparge_diffusers.kernels.geometry import blocks_touching  # noqa: E402
    from sparge_diffusers.kernels.predict.naive import naive_lse_block_probs  # noqa: E402

    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float16  # the interpreter's bf16 dots are wrong
    bench = _timer(cuda)
    backend = SDPBackend.CUDNN_ATTENTION if cuda else SDPBackend.MATH
    name_gpu = torch.cuda.get_device_name() if cuda else "cpu"
    rows = []
    for name in args.shapes:
        geometry, heads, _, dim, _ = SHAPES[name]
        geo = F.scaled_geometry(geometry, TINY_GRID if args.tiny else 1.0)
        heads = TINY_HEADS if args.tiny else heads
        seq = geo.seq_len
        # video-like inputs (every head drawn; heads of the layer), batch 2 as a CFG batch
        q, k, v = F.family_qkv("clip", geo, heads=list(range(heads)), seed=3, device=device, dtype=dtype)
        q, k, v = (torch.cat([x, x.flip(1)], 0).contiguous() for x in (q, k, v))
        keep = [geo.text_range]
        scale = dim ** -0.5
        with sdpa_kernel(backend):
            dense = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        # the lse predictor's block masses (what the fused call ranks by)
        probs = torch.cat([naive_lse_block_probs(q[i:i + 1], k[i:i + 1], block_m=128, block_n=128, scale=scale)
                           for i in range(q.shape[0])])
        fr = blocks_touching(keep, seq, 128, device)
        guard_args = dict(target_error=args.eps, block_m=128, block_n=128, scale=scale, forced_rows=fr,
                          forced_cols=fr)
        timed = {}
        drops = {}
        for label, extra in VARIANTS.items():
            call = (lambda e=extra: budget_drop_mass(q, k, v, probs, **guard_args, **e))
            drops[label] = call()
            timed[label] = bench(call)
        stages = _stage_times(bench, q, k, v, probs, fr, scale)
        row = dict(gpu=name_gpu, torch=torch.__version__, triton=triton.__version__, shape=name, seq_len=seq,
                   heads=heads, head_dim=dim, batch=q.shape[0], eps=args.eps, cudnn_ms=round(dense, 4),
                   guard_naive_ms=round(timed["naive"], 4), guard_triton_ms=round(timed["triton"], 4),
                   guard_triton_bf16_ms=round(timed["triton_bf16"], 4),
                   guard_triton_r32_ms=round(timed["triton_r32"], 4), guard_triton_s3_ms=round(timed["triton_s3"], 4),
                   naive_share=round(timed["naive"] / dense, 4), triton_share=round(timed["triton"] / dense, 4),
                   triton_bf16_share=round(timed["triton_bf16"] / dense, 4),
                   triton_r32_share=round(timed["triton_r32"] / dense, 4),
                   triton_s3_share=round(timed["triton_s3"] / dense, 4),
                   triton_speedup=round(timed["naive"] / timed["triton"], 2),
                   heads_equal=round(float((drops["triton"] == drops["naive"]).float().mean()), 4),
                   heads_equal_bf16=round(float((drops["triton_bf16"] == drops["naive"]).float().mean()), 4),
                   max_rung_diff=max(_ladder_steps(drops[label], drops["naive"], DROP_MASS_LADDER)
                                     for label in VARIANTS),
                   **{f"stage_{key}_ms": round(value, 4) for key, value in stages.items()})
        if not args.skip_calls:
            config = SpargeConfig(target_error=args.eps, keep_token_ranges=keep, check_finite=False,
                                  speed_rule="sparse", map_reuse=1)  # every call predicts (the columns before reuse)
            measured_ms = bench(lambda: sparge_attn(q, k, v, config=config))
            _, stats = sparge_attn(q, k, v, config=config, return_stats=True)
            guard = _reusing_guard(q, k, stats.drop_mass)
            reused_ms = bench(lambda: sparge_attn(q, k, v, config=config, guard=guard))
            topk = SpargeConfig(topk=0.5, predictor="lse", keep_token_ranges=keep, check_finite=False,
                                speed_rule="sparse")
            topk_ms = bench(lambda: sparge_attn(q, k, v, config=topk))
            # the "mixed" predictor (lse + 4 sampled exact rows per block): top-k 0.5, and ε with reused drop masses
            mixed_topk_ms = bench(lambda: sparge_attn(q, k, v, config=topk.replace(predictor="mixed")))
            mixed = config.replace(predictor="mixed")
            _, mixed_stats = sparge_attn(q, k, v, config=mixed, return_stats=True)
            mixed_guard = _reusing_guard(q, k, mixed_stats.drop_mass)
            mixed_reused_ms = bench(lambda: sparge_attn(q, k, v, config=mixed, guard=mixed_guard))
            # block-map reuse: after the first call every call attends the stored map (no prediction at all), so the
            # difference to mixed_reused_ms is what the mixed prediction costs in a call
            reuse_all = mixed.replace(map_reuse=1 << 30)
            sparge_attn(q, k, v, config=reuse_all, guard=mixed_guard)
            map_reused_ms = bench(lambda: sparge_attn(q, k, v, config=reuse_all, guard=mixed_guard))
            prediction = (mixed_reused_ms - map_reused_ms) / dense
            # map_reuse 2 alternates predicting and reusing calls: timed as pairs (a median of single calls would
            # pick one of the two kinds)
            pairs = mixed.replace(map_reuse=2)
            pair_ms = bench(lambda: (sparge_attn(q, k, v, config=pairs, guard=mixed_guard),
                                     sparge_attn(q, k, v, config=pairs, guard=mixed_guard))) / 2
            row.update(sparsity=round(stats.mean_sparsity, 4), backend=stats.backend,
                       budget_measured_ms=round(measured_ms, 4), budget_reused_ms=round(reused_ms, 4),
                       topk05_ms=round(topk_ms, 4), x_cudnn_measured=round(dense / measured_ms, 3),
                       x_cudnn_reused=round(dense / reused_ms, 3), mixed_topk05_ms=round(mixed_topk_ms, 4),
                       mixed_extra_share=round((mixed_topk_ms - topk_ms) / dense, 4),
                       mixed_sparsity=round(mixed_stats.mean_sparsity, 4),
                       mixed_reused_ms=round(mixed_reused_ms, 4), map_reused_ms=round(map_reused_ms, 4),
                       maps_reused=mixed_guard.maps_reused, prediction_share=round(prediction, 4),
                       reuse2_ms=round(pair_ms, 4),
                       prediction_share_reuse2=round((pair_ms - map_reused_ms) / dense, 4),
                       x_cudnn_map_reused=round(dense / map_reused_ms, 3))
        rows.append(row)
        print(row, flush=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{'shape':12s} {'seq':>6s} {'dense ms':>9s} {'naive ms':>9s} {'share':>7s} {'triton ms':>9s} "
          f"{'share':>6s} {'bf16-u ms':>9s} {'share':>6s} {'r32 ms':>8s} {'s3 ms':>8s} {'same δ':>6s} "
          f"{'x measure':>9s} {'x reuse':>8s} {'predict':>8s} {'x map':>6s}")
    for r in rows:
        print(f"{r['shape']:12s} {r['seq_len']:6d} {r['cudnn_ms']:9.3f} {r['guard_naive_ms']:9.3f} "
              f"{r['naive_share']:7.1%} {r['guard_triton_ms']:9.3f} {r['triton_share']:6.1%} "
              f"{r['guard_triton_bf16_ms']:9.3f} {r['triton_bf16_share']:6.1%} {r['guard_triton_r32_ms']:8.3f} "
              f"{r['guard_triton_s3_ms']:8.3f} {r['heads_equal']:6.2f} "
              f"{r.get('x_cudnn_measured', float('nan')):9.2f} {r.get('x_cudnn_reused', float('nan')):8.2f} "
              f"{r.get('prediction_share', float('nan')):8.1%} {r.get('x_cudnn_map_reused', float('nan')):6.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
