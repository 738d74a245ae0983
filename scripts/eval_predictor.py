"""Block predictors on video-like attention: best sparsity at a relative-L1 budget, per geometry and token order.

For each geometry (CogVideoX, Mochi, Flux; `sparge_diffusers.video_inputs.GEOMETRIES`), token order (row-major,
Hilbert) and input variant (tuning / held-out), builds Q/K/V for a subset of heads, predicts block masks with each
predictor over a sweep of its threshold, measures each mask's relative L1 against fp32 dense attention (exact
block-sparse attention, no quantization), and reports the best sparsity with relL1 <= 0.05 and <= 0.03, alongside
the ideal selector (TopCdf over the exact block mass). With ``--device cuda`` it also times each predictor against
dense SDPA measured in the same run (`triton.testing.do_bench` median on the full head count of the geometry).

Examples:
    python scripts/eval_predictor.py --geometries cogvideox --heads 4 --out benchmarks/results/predictor_eval
    python scripts/eval_predictor.py --device cuda --timing-only --out benchmarks/results/predictor_timing
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from sparge_diffusers.kernels import evaluation as E
from sparge_diffusers.kernels import selection as S
from sparge_diffusers.kernels.predict import naive as P
from sparge_diffusers.kernels import reference as R
from sparge_diffusers.video_inputs import GEOMETRIES, geometry_qkv

BLOCK_M, BLOCK_N = 128, 64
DROP_MASS = (0.001, 0.002, 0.004, 0.007, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.17,
             0.22, 0.3, 0.4, 0.5)
TOPK = tuple(round(0.05 * i, 2) for i in range(1, 20))
BUDGETS = (0.05, 0.03)


def _text_ranges(geo) -> Tuple[Tuple[int, int], ...]:
    return (geo.text_range,) if geo.text_tokens else ()


def predictor_sweeps() -> Dict[str, Tuple[str, Sequence[float], Callable]]:
    """name -> (knob name, knob values, fn(q, k, scale, keep_ranges, value) -> mask [B, H, NQ, NK])."""

    def sparge_cdf(q, k, scale, keep, value):
        return R.naive_predict_block_mask(q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale,
                                          cdf_threshold=1.0 - value, sim_threshold=0.6, keep_ranges=keep)

    def sparge_cdf_nosim(q, k, scale, keep, value):
        return R.naive_predict_block_mask(q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale,
                                          cdf_threshold=1.0 - value, sim_threshold=None, keep_ranges=keep)

    def sparge_topk_nosim(q, k, scale, keep, value):
        return R.naive_predict_block_mask(q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale, topk=value,
                                          sim_threshold=None, keep_ranges=keep)

    def sparge_topk(q, k, scale, keep, value):
        return R.naive_predict_block_mask(q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale, topk=value,
                                          sim_threshold=0.6, keep_ranges=keep)

    def lse(weight):
        def fn(q, k, scale, keep, value):
            return P.naive_predict_block_mask_lse(q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale,
                                                  drop_mass=value, keep_ranges=keep, variance_weight=weight)
        return fn

    def lse_topk(q, k, scale, keep, value):
        return P.naive_predict_block_mask_lse(q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale, topk=value,
                                              keep_ranges=keep)

    def rows(n):
        def fn(q, k, scale, keep, value):
            probs = P.naive_sampled_rows_block_probs(q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale, rows=n)
            forced_rows, forced_cols = R.naive_forced_blocks(q, k, block_m=BLOCK_M, block_n=BLOCK_N, keep_ranges=keep)
            forced_cols = forced_cols.unsqueeze(-2).expand_as(probs)
            return S.select_by_drop_mass(probs, value, forced_cols) | forced_cols | forced_rows.unsqueeze(-1)
        return fn

    return {
        "sparge-cdf": ("1-tau", DROP_MASS, sparge_cdf),
        "sparge-topk": ("topk", TOPK, sparge_topk),
        "sparge-cdf-nosim": ("1-tau", DROP_MASS, sparge_cdf_nosim),
        "sparge-topk-nosim": ("topk", TOPK, sparge_topk_nosim),
        "lse": ("delta", DROP_MASS, lse(1.0)),
        "lse-novar": ("delta", DROP_MASS, lse(0.0)),
        "lse-topk": ("topk", TOPK, lse_topk),
    }


def evaluate(geometry: str, order: str, variant: str, heads: Sequence[int], predictors: Sequence[str],
             scale_grid: float, device: str, ideal_keeps_text: bool = False,
             ) -> List[dict]:
    """One (geometry, order, variant): rows of (predictor, knob, value, sparsity, rel_l1)."""
    sweeps = {name: spec for name, spec in predictor_sweeps().items() if name in predictors}
    index: List[Tuple[str, str, float]] = []
    for name, (knob, values, _) in sweeps.items():
        index += [(name, knob, v) for v in values]
    sweep = E.MaskSweep(len(index), ideal_drop_mass=DROP_MASS)
    t0 = time.time()
    for head in heads:
        q, k, v, geo = geometry_qkv(geometry, variant=variant, head_indices=[head], order=order,
                                    scale_grid=scale_grid, device=device)
        scale = geo.head_dim ** -0.5
        keep = _text_ranges(geo)
        masks = []
        for name, (_, values, fn) in sweeps.items():
            masks += [fn(q, k, scale, keep, value)[0, 0] for value in values]
        stacked = torch.stack(masks) if masks else torch.zeros(0, 1, 1, dtype=torch.bool)
        forced = None
        if ideal_keeps_text:
            rows_forced, cols_forced = R.naive_forced_blocks(q, k, block_m=BLOCK_M, block_n=BLOCK_N, keep_ranges=keep)
            forced = (rows_forced[0, 0], cols_forced[0, 0])
        sweep.add_head(q[0, 0], k[0, 0], v[0, 0], stacked, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale,
                       ideal_forced=forced)
        print(f"  {geometry} {order} {variant} head {head}: S={geo.seq_len} ({time.time() - t0:.0f}s)",
              file=sys.stderr, flush=True)
    index += [("ideal-textkept" if ideal_keeps_text else "ideal", "delta", dm) for dm in DROP_MASS]
    rel, sp = sweep.rel_l1().tolist(), sweep.sparsity().tolist()
    base = dict(geometry=geometry, order=order, variant=variant, seq_len=geo.seq_len,
                grid="x".join(map(str, geo.grid)), heads=" ".join(map(str, heads)))
    return [dict(base, predictor=name, knob=knob, value=value, sparsity=round(s, 4), rel_l1=round(r, 5))
            for (name, knob, value), r, s in zip(index, rel, sp)]


def summarize(rows: List[dict]) -> List[dict]:
    """Best sparsity per (geometry, variant, order, predictor) at each budget."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["geometry"], row["variant"], row["order"], row["predictor"]), []).append(row)
    out = []
    for (geometry, variant, order, predictor), items in groups.items():
        record = dict(geometry=geometry, variant=variant, order=order, predictor=predictor)
        for budget in BUDGETS:
            best, i = E.best_sparsity([r["rel_l1"] for r in items], [r["sparsity"] for r in items], budget)
            record[f"sparsity@{budget}"] = best
            record[f"value@{budget}"] = items[i]["value"] if i is not None else None
        out.append(record)
    return out


def write_outputs(prefix: str, rows: List[dict], summary: List[dict]) -> None:
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    for path, data in ((prefix + "_sweep.csv", rows), (prefix + ".csv", summary)):
        if not data:
            continue
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data[0].keys()))
            writer.writeheader()
            writer.writerows(data)


def print_table(summary: List[dict]) -> str:
    lines = ["| geometry | variant | predictor | row-major @0.05 | Hilbert @0.05 | row-major @0.03 | Hilbert @0.03 |",
             "|---|---|---|---|---|---|---|"]
    keyed = {(r["geometry"], r["variant"], r["predictor"], r["order"]): r for r in summary}
    seen = []
    for r in summary:
        key = (r["geometry"], r["variant"], r["predictor"])
        if key in seen:
            continue
        seen.append(key)
        cells = []
        for budget in BUDGETS:
            for order in ("rowmajor", "hilbert"):
                rec = keyed.get(key + (order,))
                cells.append("–" if rec is None else f"{rec[f'sparsity@{budget}']:.3f}")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(summary_paths: Sequence[str]) -> str:
    """Markdown: per geometry and variant, the official predictor (best over its knobs), the paper's pooled scores
    without the self-similarity test, ``lse`` and the ideal, in both orders, at both budgets."""
    summary = []
    for path in summary_paths:
        with open(path) as f:
            summary += list(csv.DictReader(f))
    families = {
        "official (sparge, θ=0.6; best of TopCdf / top-k)": ("sparge-cdf", "sparge-topk"),
        "sparge pooled scores, θ off (best of TopCdf / top-k)": ("sparge-cdf-nosim", "sparge-topk-nosim"),
        "lse, drop-mass δ sweep": ("lse",),
        "lse, no variance term": ("lse-novar",),
        "lse, top-k sweep": ("lse-topk",),
        "ideal (exact block mass, TopCdf)": ("ideal",),
        "ideal, text rows/columns kept": ("ideal-textkept",),
    }
    keys = []
    for r in summary:
        if (r["geometry"], r["variant"]) not in keys:
            keys.append((r["geometry"], r["variant"]))
    lines = []
    for budget in BUDGETS:
        lines += [f"\n**Best sparsity at relL1 <= {budget}** (row-major / Hilbert)\n",
                  "| predictor | " + " | ".join(f"{g} ({v})" for g, v in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for label, members in families.items():
            cells, present = [], False
            for g, v in keys:
                pair = []
                for order in ("rowmajor", "hilbert"):
                    vals = [float(r[f"sparsity@{budget}"]) for r in summary if r["geometry"] == g
                            and r["variant"] == v and r["order"] == order and r["predictor"] in members]
                    present |= bool(vals)
                    pair.append(f"{max(vals):.3f}" if vals else "–")
                cells.append(" / ".join(pair))
            if present:
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# GPU timing: prediction time as a share of dense SDPA time, same run

TIMING_SHAPES = {"flux1024": (24, 4608, 128), "cogvideox2b": (30, 17776, 64), "mochi": (24, 44776, 128),
                 "wan1.3b": (12, 32760, 128)}


def _bench(fn, device: str) -> float:
    """Median ms: `triton.testing.do_bench` on CUDA when Triton imports, else CUDA events."""
    if device.startswith("cuda"):
        try:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
        except ImportError:
            pass
        times = []
        for _ in range(3):
            fn()
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return float(sorted(times)[len(times) // 2])
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _triton_cases(q, k, scale, keep):
    """The fused Triton predictors as `sparge_attn` runs them: block statistics + block logits + selection (no
    INT8 quantization, which every predictor shares)."""
    from sparge_diffusers.kernels import predict, quantize

    seq = q.shape[-2]
    common = dict(seq_len_q=seq, seq_len_k=seq, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale, keep_ranges=keep)

    def sparge():
        stats = quantize.prepare_fwd(q, k, None, block_m=BLOCK_M, block_n=BLOCK_N, quantize_qk=False, v_fp8=False,
                                     stats="pooled")
        predict.select_blocks_fwd(stats.q_means, stats.k_means, stats.q_sims, stats.k_sims, topk=None,
                                  cdf_threshold=0.95, sim_threshold=0.6, **common)

    def lse(variance_weight=1.0):
        stats = quantize.prepare_fwd(q, k, None, block_m=BLOCK_M, block_n=BLOCK_N, quantize_qk=False, v_fp8=False,
                                     stats="lse", softmax_scale=scale, variance_weight=variance_weight)
        predict.select_blocks_fwd(None, None, None, None, topk=None, cdf_threshold=None, sim_threshold=None,
                                  block_logits=stats.block_logits, drop_mass=0.025, **common)

    return {"sparge (Triton)": sparge, "lse (Triton)": lse, "lse-novar (Triton)": lambda: lse(0.0)}


def timing(device: str, shapes: Sequence[str]) -> List[dict]:
    """Prediction alone (each predictor at a typical setting) against dense SDPA, same run, bf16 random inputs."""
    rows = []
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    for name in shapes:
        heads, seq, dim = TIMING_SHAPES[name]
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, heads, seq, dim, device=device, dtype=torch.bfloat16, generator=gen)
                   for _ in range(3))
        scale = dim ** -0.5
        keep = ((0, 226),)
        dense = _bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), device)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                dense_cudnn = _bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), device)
        except Exception:  # noqa: BLE001 - cuDNN backend unavailable: report the default backend only
            dense_cudnn = float("nan")
        yardstick = dense_cudnn if dense_cudnn == dense_cudnn else dense
        cases = {
            "sparge-cdf (reference)": lambda: R.naive_predict_block_mask(
                q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale, cdf_threshold=0.95, sim_threshold=0.6,
                keep_ranges=keep),
            "lse (reference)": lambda: P.naive_predict_block_mask_lse(
                q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale, drop_mass=0.025, keep_ranges=keep),
            "lse-novar (reference)": lambda: P.naive_predict_block_mask_lse(
                q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale, drop_mass=0.025, keep_ranges=keep,
                variance_weight=0.0),
            "lse scores only": lambda: P.naive_lse_block_logits(
                q, k, block_m=BLOCK_M, block_n=BLOCK_N, scale=scale),
        }
        if device.startswith("cuda"):
            cases.update(_triton_cases(q, k, scale, keep))
        for case, fn in cases.items():
            ms = _bench(fn, device)
            rows.append(dict(gpu=gpu, torch=torch.__version__, shape=name, heads=heads, seq_len=seq, head_dim=dim,
                             case=case, ms=round(ms, 4), dense_sdpa_ms=round(dense, 4),
                             dense_cudnn_ms=round(dense_cudnn, 4), share_of_dense=round(ms / yardstick, 4)))
            print(rows[-1], flush=True)
        del q, k, v
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    parser.add_argument("--orders", nargs="+", default=["rowmajor", "hilbert"], choices=["rowmajor", "hilbert"])
    parser.add_argument("--variants", nargs="+", default=["tuning", "heldout"], choices=["tuning", "heldout"])
    parser.add_argument("--heads", type=int, default=4, help="heads evaluated per geometry (spread over the layer)")
    parser.add_argument("--predictors", nargs="+", default=list(predictor_sweeps()))
    parser.add_argument("--scale-grid", type=float, default=1.0, help="shrink h, w by this factor (quick runs)")
    parser.add_argument("--ideal-keeps-text", action="store_true",
                        help="the ideal selector also always keeps the text rows / columns (as the predictors do)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timing-only", action="store_true", help="GPU: only the prediction-time table")
    parser.add_argument("--timing-shapes", nargs="+", default=list(TIMING_SHAPES), choices=list(TIMING_SHAPES))
    parser.add_argument("--out", default="benchmarks/results/predictor_eval")
    parser.add_argument("--render", nargs="+", metavar="SUMMARY_CSV", help="only print the markdown tables of "
                        "these summary CSVs")
    args = parser.parse_args(argv)
    if args.render:
        print(render(args.render))
        return 0

    torch.set_grad_enabled(False)
    if args.device.startswith("cuda"):
        rows = timing(args.device, args.timing_shapes)
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out + "_timing.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(rows)
        print("| shape | case | ms | dense SDPA ms | dense cuDNN ms | share of dense |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['shape']} | {r['case']} | {r['ms']} | {r['dense_sdpa_ms']} | {r['dense_cudnn_ms']} | "
                  f"{100 * r['share_of_dense']:.1f}% |")
        if args.timing_only:
            return 0
    all_rows: List[dict] = []
    for geometry in args.geometries:
        n_heads = GEOMETRIES[geometry].heads
        heads = sorted({round(i * (n_heads - 1) / max(args.heads - 1, 1)) for i in range(args.heads)})
        for variant in args.variants:
            for order in args.orders:
                all_rows += evaluate(geometry, order, variant, heads, args.predictors, args.scale_grid, args.device,
                                     args.ideal_keeps_text)
                summary = summarize(all_rows)
                write_outputs(args.out, all_rows, summary)
                print(print_table(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
