"""Quality of sparse against dense attention on the embedded trained model.

For each (prompt, seed) pair it renders the dense video, then each sparse setting from the same seed
(`apply_sparge(pipe, config, collect_stats=True)`), and records PSNR / SSIM to the dense render
(`sparge_diffusers.metrics`), the checker's colour / motion verdicts (`sparge_diffusers.checker`) and the measured
sparsity (`get_sparge_stats(pipe).mean_sparsity`). Settings: dense, ``topk=0.5`` and the error-budget setting
``SpargeConfig(target_error=0.05, topk=None)``, each with ``dense_steps`` 0 and 2. Prompts are the procedural
vocabulary's (object x colour x motion, short "rolling" captions included), spread evenly.

Writes ``eval_<tag>.csv`` (one row per render) and ``eval_<tag>.md`` (one row per setting) to ``--out``.

    python scripts/eval_embedded.py --device cuda --size large --prompts 28 --seeds 2 --out benchmarks/results/embedded
    python scripts/eval_embedded.py --smoke --out /tmp/eval-smoke       # CPU, tiny
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from typing import List

import numpy as np
import torch

from sparge_diffusers import SpargeConfig, apply_sparge, get_sparge_stats, remove_sparge
from sparge_diffusers.checker import check_video
from sparge_diffusers.embedded import default_call_kwargs, embedded_model_path
from sparge_diffusers.metrics.fidelity import psnr, ssim
from sparge_diffusers.procedural import COLOUR_NAMES, MOTIONS, OBJECTS


def eval_prompts(n: int) -> List[str]:
    """``n`` prompts spread over colours, objects and motions (every 3rd rolling prompt without its direction)."""
    out, i = [], 0
    while len(out) < n:
        colour = COLOUR_NAMES[i % len(COLOUR_NAMES)]
        obj = OBJECTS[(i // len(COLOUR_NAMES) + i) % len(OBJECTS)]
        motion = MOTIONS[(i * 3 + i // len(MOTIONS)) % len(MOTIONS)]
        if motion.startswith("rolling") and i % 3 == 0:
            motion = "rolling"
        out.append(f"a {colour} {obj} {motion}")
        i += 1
    return out


def settings(block_n: int):
    """(name, config or None for dense) of every evaluated setting. ``speed_rule="sparse"``: on CUDA the default
    ``"auto"`` sends these short sequences to dense SDPA (the GPU run of 2026-12-02 measured sparsity 0 that way)."""
    rows = [("dense", None)]
    for dense_steps in (0, 2):
        rows.append((f"topk0.5_ds{dense_steps}", SpargeConfig(topk=0.5, predictor="lse", block_n=block_n,
                                                                 dense_steps=dense_steps, speed_rule="sparse")))
        rows.append((f"eps0.05_ds{dense_steps}", SpargeConfig(target_error=0.05, predictor="lse", block_n=block_n,
                                                               dense_steps=dense_steps, speed_rule="sparse",
                                                               map_reuse=1)))
    # the mixed predictor (lse + 4 sampled exact rows per block)
    rows.append(("mixed_topk0.5_ds0", SpargeConfig(topk=0.5, predictor="mixed", block_n=block_n,
                                                   speed_rule="sparse")))
    rows.append(("mixed_eps0.05_ds0", SpargeConfig(target_error=0.05, topk=None, predictor="mixed",
                                                   block_n=block_n, speed_rule="sparse", map_reuse=1)))
    # block-map reuse: one predicted map serves up to N calls of a layer while its drop masses are reused (2: the
    # default with the budget)
    for reuse in (2, 4):
        rows.append((f"mixed_eps0.05_reuse{reuse}", SpargeConfig(target_error=0.05, predictor="mixed",
                                                                 block_n=block_n, speed_rule="sparse",
                                                                 map_reuse=reuse)))
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    p.add_argument("--size", choices=("default", "large"), default="default")
    p.add_argument("--prompts", type=int, default=25)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the size's)")
    p.add_argument("--block-n", type=int, default=None, help="key block (default: 64 at the default size, 128 large)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bfloat16 on CUDA)")
    p.add_argument("--out", default="benchmarks/results/embedded")
    p.add_argument("--tag", default=None)
    p.add_argument("--samples", type=int, default=8, help="dense renders drawn into samples_<tag>.png (0: none)")
    p.add_argument("--settings", default=None, help="comma-separated subset of the settings to run (dense always "
                   "runs: it is the reference), e.g. topk0.5_ds2,eps0.05_ds2")
    p.add_argument("--merge", nargs="+", default=None, metavar="CSV",
                   help="render nothing: merge eval CSVs of parallel runs (same prompts, seeds, size) into "
                        "eval_<tag>.csv / .md")
    p.add_argument("--smoke", action="store_true", help="2 prompts x 1 seed, 2 steps, 32 x 32 (CPU path test)")
    return p.parse_args(argv)


def render(pipe, prompt: str, seed: int, call: dict) -> np.ndarray:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    frames = pipe(prompt, generator=generator, output_type="np", **call).frames[0]
    return (np.clip(np.asarray(frames, dtype=np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)  # [T, H, W, 3]


def main(argv=None) -> None:
    from diffusers import CogVideoXPipeline

    args = parse_args(argv)
    call = default_call_kwargs(args.size)
    if args.merge:
        merge(args, call)
        return
    if args.smoke:
        call.update(height=32, width=32, num_inference_steps=2)
        args.prompts, args.seeds = 2, 1
    if args.steps is not None:
        call["num_inference_steps"] = args.steps
    block_n = args.block_n or (64 if args.size == "default" else 128)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda")
                                                           else torch.float32)
    pipe = CogVideoXPipeline.from_pretrained(args.model or embedded_model_path()).to(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    prompts = eval_prompts(args.prompts)
    rows = []
    t_start = time.time()
    tag = args.tag or (("smoke" if args.smoke else args.size) + f"-{args.device.split(':')[0]}")
    os.makedirs(args.out, exist_ok=True)
    dense = {}
    done = []
    chosen = settings(block_n)
    if args.settings:
        wanted = [w.strip() for w in args.settings.split(",") if w.strip()]
        unknown = sorted(set(wanted) - {name for name, _ in chosen})
        if unknown:
            raise SystemExit(f"--settings: unknown {unknown}; choose from {[name for name, _ in chosen]}")
        chosen = [(name, config) for name, config in chosen if config is None or name in wanted]
    for name, config in chosen:
        if config is not None:
            apply_sparge(pipe, config, collect_stats=True)
        t0 = time.time()
        for prompt in prompts:
            for seed in range(args.seeds):
                if config is not None:
                    get_sparge_stats(pipe).reset()
                frames = render(pipe, prompt, seed, call)
                check = check_video(frames, prompt)
                if config is None:
                    dense[(prompt, seed)] = frames
                ref = dense[(prompt, seed)]
                rows.append({"setting": name, "prompt": prompt, "seed": seed, "colour": check.colour,
                             "motion": check.motion, "colour_ok": check.colour_ok, "motion_ok": check.motion_ok,
                             "sparsity": 0.0 if config is None else round(get_sparge_stats(pipe).mean_sparsity, 4),
                             "psnr": float("inf") if config is None else round(psnr(frames, ref), 3),
                             "ssim": 1.0 if config is None else round(ssim(frames, ref), 4),
                             "map_reuse_share": 0.0 if config is None else round(
                                 get_sparge_stats(pipe).map_reuse_share, 4),
                             "frames": frames, "check": check})
                if len(rows) % 10 == 0:  # partial results survive a time limit (the table counts the renders)
                    write_results(args, call, block_n, str(dtype), len(prompts), rows, done + [name], tag,
                                  time.time() - t_start)
        if config is not None:
            remove_sparge(pipe)
        done.append(name)
        print(f"{name}: {len(prompts) * args.seeds} renders in {time.time() - t0:.1f} s", flush=True)
        write_results(args, call, block_n, str(dtype), len(prompts), rows, done, tag, time.time() - t_start)
        if config is None and args.samples:
            write_samples(args, rows, tag)
    print(open(os.path.join(args.out, f"eval_{tag}.md")).read())


def write_samples(args, rows, tag) -> None:
    import imageio.v3 as iio

    sel = [r for r in rows if r["setting"] == "dense"][: args.samples]
    sheet = np.concatenate([np.concatenate(list(r["frames"][:: max(1, len(r["frames"]) // 4)]), 1) for r in sel], 0)
    iio.imwrite(os.path.join(args.out, f"samples_{tag}.png"), sheet)
    with open(os.path.join(args.out, f"samples_{tag}.txt"), "w") as f:
        f.write("\n".join(f"{r['prompt']} (seed {r['seed']}): checker {r['colour']}, {r['motion']}" for r in sel))


def _flag(value):
    """A CSV cell of colour_ok / motion_ok back to True / False / None."""
    if isinstance(value, bool) or value is None:
        return value
    return {"True": True, "False": False}.get(str(value))


def merge(args, call) -> None:
    """One table from the CSVs of parallel runs: dense rows once, each setting's rows from the first file with it."""
    rows, done, seen = [], [], set()
    for path in args.merge:
        with open(path, newline="") as f:
            file_rows = list(csv.DictReader(f))
        for name in dict.fromkeys(r["setting"] for r in file_rows):
            if name in seen:
                continue
            seen.add(name)
            done.append(name)
            for r in file_rows:
                if r["setting"] == name:
                    rows.append({**r, "seed": int(r["seed"]), "colour_ok": _flag(r["colour_ok"]),
                                 "motion_ok": _flag(r["motion_ok"]), "sparsity": float(r["sparsity"]),
                                 "psnr": float(r["psnr"]), "ssim": float(r["ssim"])})
    if "dense" in done:  # dense first, then the settings in their usual order
        order = [name for name, _ in settings(args.block_n or 64)]
        done.sort(key=lambda n: order.index(n) if n in order else len(order))
    pairs = {(r["prompt"], r["seed"]) for r in rows}
    seeds = len({s for _, s in pairs})
    block_n = args.block_n or (64 if args.size == "default" else 128)
    tag = args.tag or f"{args.size}-merged"
    os.makedirs(args.out, exist_ok=True)
    write_results(argparse.Namespace(size=args.size, seeds=seeds, out=args.out, device=args.device), call, block_n,
                  args.dtype or "see the merged runs", len(pairs) // max(seeds, 1), rows, done, tag, float("nan"))
    print(open(os.path.join(args.out, f"eval_{tag}.md")).read())


def _accuracy(sel) -> dict:
    """Checker accuracy from rows' colour_ok / motion_ok (None: the prompt does not say; left out)."""
    def share(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else float("nan")

    return {"colour": share([r["colour_ok"] for r in sel]), "motion": share([r["motion_ok"] for r in sel]),
            "both": share([r["colour_ok"] is not False and r["motion_ok"] is not False for r in sel])}


def write_results(args, call, block_n, dtype, n_prompts, rows, done, tag, seconds) -> None:
    fields = ["setting", "prompt", "seed", "colour", "motion", "colour_ok", "motion_ok", "sparsity", "psnr", "ssim",
              "map_reuse_share"]
    with open(os.path.join(args.out, f"eval_{tag}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    h, w, t = call["height"], call["width"], call["num_frames"]
    lines = [f"# Sparse vs dense on the embedded model ({args.size} size: {t} x {h} x {w}, "
             f"{call['num_inference_steps']} steps, guidance {call['guidance_scale']})", "",
             f"{n_prompts} prompts x {args.seeds} seeds, key block {block_n}, device {args.device}, {dtype}; "
             f"PSNR / SSIM against the dense render of the same seed; checker accuracy against the prompt.", "",
             "| setting | renders | sparsity | maps reused | PSNR dB (mean / min) | SSIM | colour acc | motion acc "
             "| both |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in done:
        sel = [r for r in rows if r["setting"] == name]
        acc = _accuracy(sel)
        finite = [r["psnr"] for r in sel if math.isfinite(r["psnr"])]
        psnr_text = "dense" if not finite else f"{np.mean(finite):.2f} / {np.min(finite):.2f}"
        reused = np.mean([float(r.get("map_reuse_share") or 0.0) for r in sel])
        lines.append(f"| {name} | {len(sel)} | {np.mean([r['sparsity'] for r in sel]):.3f} | {reused:.2f} | "
                     f"{psnr_text} | "
                     f"{np.mean([r['ssim'] for r in sel]):.4f} | {acc['colour']:.3f} | {acc['motion']:.3f} | "
                     f"{acc['both']:.3f} |")
    if math.isfinite(seconds):
        lines += ["", f"{seconds:.0f} s in all."]
    with open(os.path.join(args.out, f"eval_{tag}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
