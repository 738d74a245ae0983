"""How much can one block map serve more than one attention call? Measured on the trained embedded model.

Issue 16, block-map reuse. Two reuses are possible in a denoising loop:

- across the halves of a classifier-free-guidance batch (negative and positive prompt, same latent): one prediction
  for both;
- across adjacent denoising steps: the map of step ``t - k`` used at step ``t``.

For every recorded (step, layer) of one real run (`sparge_diffusers.capture`: both CFG halves, post-RoPE q/k/v,
visual tokens put in Hilbert order, text kept as the integration keeps it), this script predicts each half's map
(lse predictor, top-k), then measures, per call, the relative L1 error against fp32 dense of

- ``own``: the call's own map (today's behaviour);
- ``cfg``: the other half's map (the negative half attends with the positive half's map);
- ``step-k``: the map of the same half ``k`` steps earlier (k = 1, 2, 4);

together with the agreement of the maps (Jaccard index of their kept blocks). Reuse pays if its error stays near
``own``'s; it saves at most the prediction share of the call (`benchmarks/results/kernels_h200.csv`, "prediction
only" rows).

    python scripts/map_reuse.py --size large --steps 20 --out benchmarks/results/map_reuse.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import defaultdict

import torch

from sparge_diffusers.capture import capture_attention
from sparge_diffusers.embedded import default_call_kwargs, embedded_model_path
from sparge_diffusers.hilbert import TokenPermutation
from sparge_diffusers.kernels.evaluation import masked_attention_rel_l1
from sparge_diffusers.kernels.predict.naive import naive_forced_blocks, naive_predicted_block_probs
from sparge_diffusers.kernels.selection import naive_select_blocks

FIELDS = ["step", "layer", "half", "topk", "reuse", "rel_l1", "own_rel_l1", "jaccard", "sparsity"]
STEP_LAGS = (1, 2, 4)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kept-block overlap of two bool masks: |a ∧ b| / |a ∨ b|."""
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded trained model)")
    parser.add_argument("--size", choices=("default", "large"), default="large")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layers", type=int, nargs="*", default=None, help="layers to record (default: all)")
    parser.add_argument("--topk", type=float, nargs="+", default=[0.5])
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--prompt", default="a red ball rolling")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from diffusers import CogVideoXPipeline

    t0 = time.time()
    pipe = CogVideoXPipeline.from_pretrained(args.model or embedded_model_path()).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    call = {**default_call_kwargs(args.size), "num_inference_steps": args.steps}
    records = capture_attention(pipe, args.prompt, layers=args.layers, output_type="latent",
                                generator=torch.Generator().manual_seed(0), **call)
    if records[0].q.shape[0] != 2:
        print("map_reuse needs a classifier-free-guidance batch (guidance_scale > 1)", file=sys.stderr)
        return 2
    print(f"captured {len(records)} records in {time.time() - t0:.0f} s, q {tuple(records[0].q.shape)}")
    block = args.block
    masks = {}  # (step, layer, half, topk) -> bool [H, NQ, NK]
    inputs = {}  # (step, layer) -> (q, k, v) on the device, Hilbert order
    rows = []
    for rec in records:
        s = rec.q.shape[-2]
        perm = TokenPermutation.for_grid(tuple(rec.grid), "hilbert", device=args.device, offset=rec.text_len,
                                         total_len=s)
        q, k, v = (perm.apply(x.to(args.device).float(), dim=-2) for x in (rec.q, rec.k, rec.v))
        inputs[(rec.step, rec.layer)] = (q, k, v)
        probs = naive_predicted_block_probs("lse", q, k, block_m=block, block_n=block, scale=rec.scale)
        fr, fc = naive_forced_blocks(q, k, block_m=block, block_n=block, keep_ranges=[(0, rec.text_len)])
        for topk in args.topk:
            mask = naive_select_blocks(probs, fr, fc, topk=topk)  # [2, H, NQ, NK]
            for half in (0, 1):
                masks[(rec.step, rec.layer, half, topk)] = mask[half]

    def error(step, layer, half, mask):
        q, k, v = inputs[(step, layer)]
        return masked_attention_rel_l1(q[half:half + 1], k[half:half + 1], v[half:half + 1], mask[None],
                                       block_m=block, block_n=block, scale=q.shape[-1] ** -0.5)

    for rec in records:
        step, layer = rec.step, rec.layer
        for topk in args.topk:
            for half in (0, 1):
                own = masks[(step, layer, half, topk)]
                own_err = error(step, layer, half, own)
                sparsity = 1.0 - own.float().mean().item()
                base = dict(step=step, layer=layer, half=half, topk=topk, own_rel_l1=round(own_err, 5),
                            sparsity=round(sparsity, 4))
                rows.append(dict(base, reuse="own", rel_l1=round(own_err, 5), jaccard=1.0))
                other = masks[(step, layer, 1 - half, topk)]
                rows.append(dict(base, reuse="cfg", rel_l1=round(error(step, layer, half, other), 5),
                                 jaccard=round(jaccard(own, other), 4)))
                for lag in STEP_LAGS:
                    earlier = masks.get((step - lag, layer, half, topk))
                    if earlier is None:
                        continue
                    rows.append(dict(base, reuse=f"step-{lag}", rel_l1=round(error(step, layer, half, earlier), 5),
                                     jaccard=round(jaccard(own, earlier), 4)))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    summary = defaultdict(list)
    for row in rows:
        summary[(row["topk"], row["reuse"])].append(row)
    print(f"{'topk':>5} {'reuse':>7} {'calls':>5} {'jaccard':>8} {'relL1':>8} {'own relL1':>9} {'ratio':>6}")
    for (topk, reuse), group in sorted(summary.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        err = sum(r["rel_l1"] for r in group) / len(group)
        own = sum(r["own_rel_l1"] for r in group) / len(group)
        jac = sum(r["jaccard"] for r in group) / len(group)
        print(f"{topk:>5} {reuse:>7} {len(group):>5} {jac:>8.3f} {err:>8.4f} {own:>9.4f} {err / max(own, 1e-12):>6.2f}")
    print(f"wrote {len(rows)} rows to {args.out} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
