"""Per-layer oracle block sparsity of the embedded model's learned attention.

Captures post-RoPE q, k, v (`sparge_diffusers.capture.capture_attention`) during real denoising runs at three
denoising times (first, middle, last step), then for each (step, layer) measures the largest block sparsity whose
exact block-sparse attention stays within relative L1 ``<= 0.05`` (and ``<= 0.03``) of dense attention: the ideal
selector (TopCdf over the exact block mass, `kernels.evaluation.MaskSweep`, text blocks always kept), pooled over
heads, batch (CFG negative + positive) and prompts. Token order: raw (diffusers' t, h, w raster) and Hilbert
(what Sparge uses). ``--random`` measures a random-weight copy of the same architecture as the baseline.

Writes ``sparsity.csv`` (one row per order, step, layer) and ``sparsity.md`` to ``--out``.

    python scripts/attention_sparsity.py --size large --device cuda --out benchmarks/results/embedded
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import torch

from sparge_diffusers.capture import capture_attention
from sparge_diffusers.embedded import default_call_kwargs, embedded_model_path
from sparge_diffusers.hilbert import hilbert_order
from sparge_diffusers.kernels.evaluation import MaskSweep, best_sparsity

THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995)
BUDGETS = (0.05, 0.03)
PROMPTS = ("a red ball rolling", "a blue square falling", "a green ring orbiting", "a yellow triangle bouncing")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    p.add_argument("--size", choices=("default", "large"), default="large")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the size's)")
    p.add_argument("--prompts", type=int, default=2, help="how many of the built-in prompts to run")
    p.add_argument("--block", type=int, default=128, help="query and key block size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--random", action="store_true", help="random-weight transformer (baseline)")
    p.add_argument("--out", default="benchmarks/results/embedded")
    p.add_argument("--tag", default=None, help="file name suffix (default: size, and 'random' for --random)")
    return p.parse_args(argv)


def load(args):
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(args.model or embedded_model_path())
    if args.random:
        from sparge_diffusers.embedded.build import build_transformer

        torch.manual_seed(0)
        pipe.transformer = build_transformer().eval()
    return pipe.to(args.device)


def forced_blocks(text_len: int, seq: int, block: int, device):
    n = (seq + block - 1) // block
    text = torch.arange(n, device=device) * block < text_len  # blocks holding any text token
    return text, text


def measure(records, block: int, device, order: str):
    """{(step, layer): {budget: sparsity}} for the records of one token order."""
    out = {}
    groups = {}
    for r in records:
        groups.setdefault((r.step, r.layer), []).append(r)
    for key, recs in sorted(groups.items()):
        sweep = MaskSweep(0, ideal_thresholds=THRESHOLDS)
        for r in recs:
            q, k, v = (x.to(device, torch.float32) for x in (r.q, r.k, r.v))
            if order == "hilbert":
                perm = hilbert_order(r.grid).to(device) + r.text_len
                index = torch.cat([torch.arange(r.text_len, device=device), perm])
                q, k, v = q[:, :, index], k[:, :, index], v[:, :, index]
            seq = q.shape[2]
            forced = forced_blocks(r.text_len, seq, block, device)
            nq = (seq + block - 1) // block
            empty = torch.zeros(0, nq, nq, dtype=torch.bool, device=device)
            for b in range(q.shape[0]):
                for h in range(q.shape[1]):
                    sweep.add_head(q[b, h], k[b, h], v[b, h], empty, block_m=block, block_n=block, scale=r.scale,
                                   ideal_forced=forced)
        rel, sp = sweep.rel_l1().tolist(), sweep.sparsity().tolist()
        out[key] = {budget: best_sparsity(rel, sp, budget)[0] for budget in BUDGETS}
        out[key]["timestep"] = recs[0].timestep
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    call = default_call_kwargs(args.size)
    for key, value in (("height", args.height), ("width", args.width), ("num_frames", args.frames),
                       ("num_inference_steps", args.steps)):
        if value is not None:
            call[key] = value
    pipe = load(args)
    n = int(call["num_inference_steps"])
    steps = sorted({0, n // 2, n - 1})
    t0 = time.time()
    records = []
    for i, prompt in enumerate(PROMPTS[: args.prompts]):
        generator = torch.Generator(device="cpu").manual_seed(i)
        records += capture_attention(pipe, prompt, steps=steps, generator=generator, output_type="latent", **call)
    grid = records[0].grid
    tokens = records[0].q.shape[2]
    print(f"captured {len(records)} records in {time.time() - t0:.1f} s: grid {grid}, {tokens} tokens "
          f"({records[0].text_len} text), block {args.block}")
    tag = args.tag or (args.size + ("-random" if args.random else ""))
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for order in ("raw", "hilbert"):
        result = measure(records, args.block, args.device, order)
        for (step, layer), values in result.items():
            rows.append({"model": "random" if args.random else "trained", "size": args.size, "order": order,
                         "tokens": tokens, "grid": "x".join(map(str, grid)), "block": args.block, "step": step,
                         "timestep": values["timestep"], "layer": layer,
                         "sparsity_at_0.05": round(values[0.05], 4), "sparsity_at_0.03": round(values[0.03], 4)})
    with open(os.path.join(args.out, f"sparsity_{tag}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    layers = sorted({r["layer"] for r in rows})
    lines = [f"# Oracle block sparsity ({'random init' if args.random else 'trained'}, {args.size} size)", "",
             f"Grid {grid} ({tokens} tokens incl. {records[0].text_len} text), {args.block}x{args.block} blocks, "
             f"{args.prompts} prompts x CFG batch, steps {steps} of {n}. Ideal TopCdf selector on the exact block "
             f"mass, text blocks kept; largest sparsity with relative L1 <= budget, pooled over heads.", "",
             "| order | budget | step | " + " | ".join(f"L{i}" for i in layers) + " |",
             "|---|---|---|" + "---|" * len(layers)]
    for order in ("raw", "hilbert"):
        for budget in ("0.05", "0.03"):
            for step in steps:
                vals = {r["layer"]: r[f"sparsity_at_{budget}"] for r in rows
                        if r["order"] == order and r["step"] == step}
                lines.append(f"| {order} | {budget} | {step} | " + " | ".join(f"{vals[i]:.2f}" for i in layers) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, f"sparsity_{tag}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
