"""Does ``target_error=ε`` hold? Error budget, top-k and the exact-mass oracle on every evaluation family.

For each family (`sparge_diffusers.attention_families`, plus captured attention of the trained model with
``--captured FILE``) × geometry × token order, it measures with exact fp32 block-sparse attention (selection only,
no quantization; text rows and columns always kept):

- the error budget at each ε (``--eps``) for each predictor: sparsity and the actual relative L1;
- top-k at 0.1 … 0.9 for each predictor: the best sparsity at relL1 ≤ 0.05 and ≤ 0.03;
- the oracle (exact block mass, drop-mass ladder, same forced blocks): the best sparsity at relL1 ≤ ε and at
  relL1 ≤ the budget's actual error.

Writes one CSV row per (input, setting) and prints a summary table. Usage (CPU, reduced grid)::

    python scripts/eval_budget.py --scale-grid 0.4 --heads 4 --out benchmarks/results/budget_eval_cpu.csv

On the GPU, full geometry: ``--device cuda --scale-grid 1 --heads 8``. ``--write-frame-cache FILE`` stores the clip
frames these inputs need (for machines without the clips or a video decoder); ``--frame-cache FILE`` reads them.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

import torch

from sparge_diffusers import attention_families as F
from sparge_diffusers import video_inputs
from sparge_diffusers.hilbert import TokenPermutation
from sparge_diffusers.kernels import evaluation as E
from sparge_diffusers.kernels.budget import DROP_MASS_LADDER, budget_drop_mass
from sparge_diffusers.kernels.predict.naive import (naive_forced_blocks, naive_mixed_block_probs,
                                                    naive_predicted_block_probs, naive_sampled_rows_block_probs)
from sparge_diffusers.kernels.selection import naive_select_blocks

TOPKS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
STYLES = {"clip": ("default", "sharp", "broad", "local"), "structured": ("mixed",), "values-zero": ("default",),
          "values-offset": ("default",), "random": ("default",)}
FIELDS = ["family", "style", "geometry", "order", "seq_len", "heads", "predictor", "setting", "eps", "sparsity",
          "rel_l1", "oracle_at_eps", "oracle_at_actual", "tuning"]


def inputs(args):
    """Yields ``(family, style, geometry, q, k, v, text_range)``."""
    for family in args.families:
        for style in STYLES[family]:
            for name in args.geometries:
                geo = F.scaled_geometry(name, args.scale_grid)
                heads = list(range(0, geo.heads, max(1, geo.heads // args.heads)))[: args.heads]
                for seed in args.seeds:
                    q, k, v = F.family_qkv(family, geo, heads=heads, seed=seed, style=style, device=args.device)
                    yield family, f"{style}/s{seed}", geo, q, k, v, geo.text_range
    if args.captured:
        for rec in F.load_captured(args.captured, limit=args.captured_limit):
            q, k, v = (rec[x].to(args.device, torch.float32) for x in ("q", "k", "v"))
            text = tuple(rec["text_range"])
            geo = video_inputs.Geometry(f"trained-l{rec['layer']}-t{rec['step']}", tuple(rec["grid"]),
                                        text[1] - text[0], text[0] == 0, q.shape[-1], q.shape[1], (0, 0, 0))
            yield "trained", f"layer{rec['layer']}/step{rec['step']}", geo, q, k, v, text


def frame_keys(args):
    """The `video_inputs.load_clip` arguments the clip-based families need for these geometries and seeds."""
    keys = set()
    for name in args.geometries:
        t, h, w = F.scaled_geometry(name, args.scale_grid).grid3
        for seed in args.seeds:
            clip, start = F.clip_for_seed(seed)
            keys.add((clip, t, video_inputs.PATCH * h, video_inputs.PATCH * w, start))
    return sorted(keys)


def ordered(q, k, v, geo, order):
    """The inputs are built with row-major visual tokens (captured ones already in the model's order)."""
    if order == "rowmajor" or geo.name.startswith("trained"):
        return q, k, v
    perm = TokenPermutation.for_grid(geo.grid, order, device=q.device, offset=geo.visual_offset,
                                     total_len=geo.seq_len)
    return tuple(perm.apply(z, dim=-2) for z in (q, k, v))


def block_probs(predictor, q, k, block, scale):
    """Block masses to rank by: a `SpargeConfig` predictor (``lse``, ``sparge``, ``mixed``: the mean of lse and
    rows4, `naive_mixed_block_probs`), or a candidate: ``rows4`` (4 exact sampled rows per block alone), ``mixed2``
    (mixed with 2 rows)."""
    if predictor == "rows4":
        return naive_sampled_rows_block_probs(q, k, block_m=block, block_n=block, scale=scale, rows=4)
    if predictor == "mixed2":  # a cheaper candidate: 2 sampled rows per block instead of 4
        return naive_mixed_block_probs(q, k, block_m=block, block_n=block, scale=scale, rows=2)
    return naive_predicted_block_probs(predictor, q, k, block_m=block, block_n=block, scale=scale)


def masks_for(q, k, v, predictor, eps_list, keep, block):
    scale = q.shape[-1] ** -0.5
    probs = block_probs(predictor, q, k, block, scale)
    fr, fc = naive_forced_blocks(q, k, block_m=block, block_n=block, keep_ranges=[keep])
    out = {}
    for eps in eps_list:
        drop = budget_drop_mass(q, k, v, probs, target_error=eps, block_m=block, block_n=block, scale=scale,
                                forced_rows=fr, forced_cols=fc)
        out[("budget", eps)] = naive_select_blocks(probs, fr, fc, drop_mass=drop)
    for topk in TOPKS:
        out[("topk", topk)] = naive_select_blocks(probs, fr, fc, topk=topk)
    return out, (fr, fc)


def evaluate(q, k, v, keep, args):
    block = args.block
    scale = q.shape[-1] ** -0.5
    all_masks, names = [], []
    forced = None
    for predictor in args.predictors:
        masks, forced = masks_for(q, k, v, predictor, args.eps, keep, block)
        for key, mask in masks.items():
            names.append((predictor,) + key)
            all_masks.append(mask)
    stacked = torch.stack(all_masks, 2)  # [B, H, M, NQ, NK]
    sweep = E.MaskSweep(len(names), ideal_drop_mass=DROP_MASS_LADDER)
    fr, fc = forced
    for h in range(q.shape[1]):
        sweep.add_head(q[0, h], k[0, h], v[0, h], stacked[0, h], block_m=block, block_n=block, scale=scale,
                       ideal_forced=(fr[0, h], fc[0, h]))
    err, sp = sweep.rel_l1().tolist(), sweep.sparsity().tolist()
    m = len(names)
    return names, err[:m], sp[:m], err[m:], sp[m:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(F.FAMILIES), choices=F.FAMILIES)
    parser.add_argument("--geometries", nargs="+", default=["cogvideox", "mochi", "flux"])
    parser.add_argument("--orders", nargs="+", default=["hilbert", "rowmajor"])
    parser.add_argument("--predictors", nargs="+", default=["lse", "sparge"], choices=("lse", "sparge", "rows4", "mixed", "mixed2"))
    parser.add_argument("--eps", nargs="+", type=float, default=[0.02, 0.05, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--heads", type=int, default=4, help="heads per geometry (spread over the layer)")
    parser.add_argument("--scale-grid", type=float, default=1.0)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--captured", default=None, help="q/k/v captured from the trained model (torch.save file)")
    parser.add_argument("--captured-limit", type=int, default=None)
    parser.add_argument("--frame-cache", default=None)
    parser.add_argument("--write-frame-cache", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--summarize", default=None, help="only print the summary of an existing CSV")
    parser.add_argument("--markdown", default=None, help="with --summarize: also write the markdown tables here")
    args = parser.parse_args(argv)
    if args.summarize:
        rows = read_rows(args.summarize)
        summarize(rows)
        if args.markdown:
            with open(args.markdown, "w") as handle:
                handle.write(markdown(rows))
        return 0
    if args.frame_cache:
        video_inputs.use_frame_cache(torch.load(args.frame_cache))
    if args.write_frame_cache:
        cache = dict(video_inputs.frame_cache_entry(*key) for key in frame_keys(args))
        torch.save(cache, args.write_frame_cache)
        print(f"wrote {len(cache)} clip frame sets to {args.write_frame_cache}")
        return 0
    rows = []
    t0 = time.time()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    handle = open(args.out, "w", newline="")
    writer = csv.DictWriter(handle, fieldnames=FIELDS)
    writer.writeheader()
    written = 0
    for family, style, geo, q0, k0, v0, keep in inputs(args):
        for order in args.orders:
            if geo.name.startswith("trained") and order != args.orders[0]:
                continue
            q, k, v = ordered(q0, k0, v0, geo, order)
            names, err, sp, ideal_err, ideal_sp = evaluate(q, k, v, keep, args)
            tuning = f"{family}/{style.split('/')[0]}" in F.TUNING_FAMILIES
            for (predictor, setting, value), e, s in zip(names, err, sp):
                eps = value if setting == "budget" else ""
                at_eps = E.best_sparsity(ideal_err, ideal_sp, value)[0] if setting == "budget" else ""
                at_actual = E.best_sparsity(ideal_err, ideal_sp, max(e, 1e-9))[0]
                rows.append(dict(family=family, style=style, geometry=geo.name, order=order, seq_len=q.shape[2],
                                 heads=q.shape[1], predictor=predictor, setting=f"{setting}={value}", eps=eps,
                                 sparsity=round(s, 4), rel_l1=round(e, 5), oracle_at_eps=at_eps,
                                 oracle_at_actual=round(at_actual, 4), tuning=tuning))
            for bound in (0.05, 0.03):
                rows.append(dict(family=family, style=style, geometry=geo.name, order=order, seq_len=q.shape[2],
                                 heads=q.shape[1], predictor="oracle", setting=f"best<={bound}", eps="",
                                 sparsity=round(E.best_sparsity(ideal_err, ideal_sp, bound)[0], 4), rel_l1="",
                                 oracle_at_eps="", oracle_at_actual="", tuning=tuning))
            writer.writerows(rows[written:])
            handle.flush()
            written = len(rows)
            print(f"[{time.time() - t0:7.1f}s] {family:13s} {style:14s} {geo.name:10s} {order:8s} S={q.shape[2]}",
                  flush=True)
    handle.close()
    summarize(rows)
    return 0


def read_rows(path):
    rows = []
    with open(path) as handle:
        for row in csv.DictReader(handle):
            for key in ("sparsity", "rel_l1", "oracle_at_eps", "oracle_at_actual", "eps"):
                row[key] = float(row[key]) if row[key] not in ("", None) else ""
            rows.append(row)
    return rows


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def markdown(rows) -> str:
    """Two tables: the budget against ε per family and geometry, and best sparsity per predictor at a bound."""
    out = ["| family | geometry | predictor | ε | inputs | worst relL1/ε | mean relL1/ε | sparsity | oracle at ε | "
           "oracle at the same error | sparsity / oracle |", "|" + "---|" * 11]
    groups = {}
    for r in rows:
        if str(r["setting"]).startswith("budget"):
            groups.setdefault((r["family"], r["geometry"], r["predictor"], r["eps"]), []).append(r)
    for (family, geometry, predictor, eps), items in sorted(groups.items()):
        ratio = [r["rel_l1"] / eps for r in items]
        sp, at_eps, at_act = (_mean(r[k] for r in items) for k in ("sparsity", "oracle_at_eps", "oracle_at_actual"))
        share = f"{sp / at_act:.2f}" if at_act > 0.005 else "–"
        out.append(f"| {family} | {geometry} | {predictor} | {eps:g} | {len(items)} | {max(ratio):.2f} | "
                   f"{_mean(ratio):.2f} | {sp:.3f} | {at_eps:.3f} | {at_act:.3f} | {share} |")
    out += ["", "Best sparsity at relL1 ≤ 0.05 / ≤ 0.03 (top-k swept 0.1–0.9 per predictor; oracle: exact block "
            "mass, drop-mass ladder), mean over the family's inputs:", "",
            "| family | geometry | order | lse top-k | sparge top-k | oracle |", "|---|---|---|---|---|---|"]
    cells = {}
    for r in rows:
        if r["predictor"] == "oracle":
            key = (r["family"], r["geometry"], r["order"])
            bound = float(str(r["setting"]).split("<=")[1])
            cells.setdefault(key, {}).setdefault(("oracle", bound), []).append(r["sparsity"])
    for r in rows:
        if str(r["setting"]).startswith("topk"):
            key = (r["family"], r["geometry"], r["order"])
            for bound in (0.05, 0.03):
                best = cells.setdefault(key, {}).setdefault((r["predictor"], bound, r["style"]), [0.0])
                if r["rel_l1"] <= bound:
                    best[0] = max(best[0], r["sparsity"])
    for key in sorted(cells):
        entry = cells[key]
        text = []
        for name in ("lse", "sparge"):
            per_bound = []
            for bound in (0.05, 0.03):
                values = [v[0] for k, v in entry.items() if k[0] == name and k[1] == bound]
                per_bound.append(f"{_mean(values):.3f}")
            text.append(" / ".join(per_bound))
        text.append(" / ".join(f"{_mean(entry.get(('oracle', b), [math.nan])):.3f}" for b in (0.05, 0.03)))
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(text) + " |")
    return "\n".join(out) + "\n"


def summarize(rows):
    """Per family and ε: worst and mean actual/ε, and mean sparsity against the oracle at the same error."""
    print(f"\n{'family':13s} {'pred':6s} {'eps':>5s} {'n':>3s} {'worst err/eps':>13s} {'mean err/eps':>12s} "
          f"{'sparsity':>8s} {'oracle@eps':>10s} {'oracle@act':>10s} {'ratio@act':>9s}")
    groups = {}
    for r in rows:
        if not str(r["setting"]).startswith("budget"):
            continue
        groups.setdefault((r["family"], r["predictor"], r["eps"]), []).append(r)
    for (family, predictor, eps), items in sorted(groups.items()):
        ratios = [r["rel_l1"] / eps for r in items]
        sp = sum(r["sparsity"] for r in items) / len(items)
        at_eps = sum(r["oracle_at_eps"] for r in items) / len(items)
        at_act = sum(r["oracle_at_actual"] for r in items) / len(items)
        print(f"{family:13s} {predictor:6s} {eps:5.2f} {len(items):3d} {max(ratios):13.2f} "
              f"{sum(ratios) / len(ratios):12.2f} {sp:8.3f} {at_eps:10.3f} {at_act:10.3f} "
              f"{(sp / at_act if at_act > 0 else math.nan):9.2f}")


if __name__ == "__main__":
    sys.exit(main())
