"""End-to-end step time of full-size diffusers transformers: stock attention against Sparge, in one run.

Builds the real transformer configs of CogVideoX-2b, CogVideoX-5b, Mochi-1 and Flux.1-dev with random weights in
bf16 on one GPU (no weights needed), feeds one denoising step at the default resolution (CFG batch 2; Flux.1-dev is
guidance-distilled and runs batch 1), and reports step time, speed-up over stock, peak memory, the share of the step
spent in attention and in the Hilbert reordering, and the measured sparsity. Random weights make blocks of Q and K
incoherent, so the paper's self-similarity test (θ) would keep every block: θ is off here. At topk = 1 the transformer output is
compared with stock (relL1), which should match the kernel's own error.

    python scripts/bench_e2e.py --out benchmarks/results/e2e_h200
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import traceback
from typing import Callable, Dict, List, Optional

import torch
import triton

from sparge_diffusers import SpargeConfig, apply_sparge, get_sparge_stats, remove_sparge
from sparge_diffusers.kernels.reference import cosine_similarity, relative_l1

FIELDS = ["gpu", "torch", "triton", "diffusers", "model", "batch", "tokens", "setting", "step_ms", "speedup",
          "peak_gib", "attention_share", "reorder_share", "sparsity", "rel_l1_vs_stock", "cosine_vs_stock", "note"]


def cogvideox(variant: str):
    from diffusers import CogVideoXTransformer3DModel

    config = dict(num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, num_layers=30,
                  sample_width=90, sample_height=60, sample_frames=49, patch_size=2, text_embed_dim=4096,
                  time_embed_dim=512, max_text_seq_length=226, use_rotary_positional_embeddings=False)
    if variant == "5b":
        config.update(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
    model = CogVideoXTransformer3DModel(**config)

    def inputs(batch, gen):
        return dict(hidden_states=torch.randn(batch, 13, 16, 60, 90, generator=gen, device="cuda"),
                    encoder_hidden_states=torch.randn(batch, 226, 4096, generator=gen, device="cuda"),
                    timestep=torch.full((batch,), 500, device="cuda", dtype=torch.long),
                    image_rotary_emb=_cogvideox_rope(13, 30, 45) if variant == "5b" else None)

    return model, inputs, 13 * 30 * 45 + 226


def _cogvideox_rope(t, h, w):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cos, sin = get_3d_rotary_pos_embed(embed_dim=64, crops_coords=((0, 0), (h, w)), grid_size=(h, w),
                                       temporal_size=t, device="cuda")
    return cos, sin


def mochi(frames: int):
    from diffusers import MochiTransformer3DModel

    model = MochiTransformer3DModel()
    latent_t = (frames - 1) // 6 + 1

    def inputs(batch, gen):
        return dict(hidden_states=torch.randn(batch, 12, latent_t, 60, 106, generator=gen, device="cuda"),
                    encoder_hidden_states=torch.randn(batch, 256, 4096, generator=gen, device="cuda"),
                    encoder_attention_mask=torch.ones(batch, 256, dtype=torch.bool, device="cuda"),
                    timestep=torch.full((batch,), 500, device="cuda", dtype=torch.long))

    return model, inputs, latent_t * 30 * 53 + 256


def flux():
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))

    def inputs(batch, gen):
        rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float().cuda()
        return dict(hidden_states=torch.randn(batch, 4096, 64, generator=gen, device="cuda"),
                    encoder_hidden_states=torch.randn(batch, 512, 4096, generator=gen, device="cuda"),
                    pooled_projections=torch.randn(batch, 768, generator=gen, device="cuda"),
                    timestep=torch.full((batch,), 0.5, device="cuda"), guidance=torch.full((batch,), 3.5, device="cuda"),
                    img_ids=img_ids, txt_ids=torch.zeros(512, 3, device="cuda"))

    return model, inputs, 4096 + 512


MODELS: Dict[str, Callable] = {
    "cogvideox-2b": lambda: cogvideox("2b"),
    "cogvideox-5b": lambda: cogvideox("5b"),
    "mochi-163f": lambda: mochi(163),
    "mochi-85f": lambda: mochi(85),
    "flux-dev-1024": flux,
}


def step_time(model, kwargs, repeats: int) -> float:
    """Median wall time (ms) of one forward, CUDA-synchronized."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(**kwargs, return_dict=False)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def run_model(name: str, args, rows: List[Dict], meta: Dict):
    torch.manual_seed(0)
    with torch.device("cuda"):
        model, make_inputs, tokens = MODELS[name]()
    model = model.to(torch.bfloat16).eval()
    batch = 1 if name.startswith("flux") else 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    kwargs = {k: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() and k not in ("img_ids", "txt_ids") else v)
              for k, v in make_inputs(batch, gen).items()}
    if kwargs.get("image_rotary_emb") is None:
        kwargs.pop("image_rotary_emb", None)

    def add(setting, ms, peak, stock_ms=None, **extra):
        row = dict(meta, model=name, batch=batch, tokens=tokens, setting=setting, step_ms=round(ms, 2),
                   speedup="" if stock_ms is None else round(stock_ms / ms, 3), peak_gib=round(peak / 2 ** 30, 2),
                   attention_share="", reorder_share="", sparsity="", rel_l1_vs_stock="", cosine_vs_stock="",
                   note="")
        row.update(extra)
        rows.append(row)
        print(" ".join(f"{k}={row[k]}" for k in ("model", "setting", "step_ms", "speedup", "peak_gib",
                                                  "attention_share", "sparsity", "rel_l1_vs_stock")), flush=True)

    with torch.no_grad():
        model(**kwargs, return_dict=False)
        torch.cuda.reset_peak_memory_stats()
        stock_out = model(**kwargs, return_dict=False)[0].float()
        stock_ms = step_time(model, kwargs, args.repeats)
        add("stock", stock_ms, torch.cuda.max_memory_allocated())

        settings = [("topk=1 (exactness)", SpargeConfig(topk=1.0, sim_threshold=None, check_finite=False))]
        for item in args.settings:
            predictor, topk = item.split(":")
            settings.append((f"{predictor} topk={topk} hilbert", SpargeConfig(
                topk=float(topk), predictor=predictor, sim_threshold=None, reorder="hilbert", check_finite=False)))
        for label, config in settings:
            apply_sparge(model, config)
            model(**kwargs, return_dict=False)
            torch.cuda.reset_peak_memory_stats()
            out = model(**kwargs, return_dict=False)[0].float()
            ms = step_time(model, kwargs, args.repeats)
            peak = torch.cuda.max_memory_allocated()
            remove_sparge(model)
            apply_sparge(model, config, collect_stats=True)
            model(**kwargs, return_dict=False)
            stats = get_sparge_stats(model)
            attention_ms = stats.total_attention_ms
            sparsity = stats.mean_sparsity
            remove_sparge(model)
            add(label, ms, peak, stock_ms, attention_share=round(attention_ms / ms, 3),
                sparsity=round(sparsity, 4), rel_l1_vs_stock=round(relative_l1(out, stock_out), 5),
                cosine_vs_stock=round(cosine_similarity(out, stock_out), 6),
                note="attention share from per-layer CUDA events in a separate stats pass")
        reorder_ms = time_reorder(model, kwargs, tokens, batch)
        if reorder_ms is not None:
            rows[-1]["reorder_share"] = round(reorder_ms / rows[-1]["step_ms"], 4)
    del model, kwargs, stock_out
    gc.collect()
    torch.cuda.empty_cache()


def time_reorder(model, kwargs, tokens, batch) -> Optional[float]:
    """Cost of the boundary reordering: gather + inverse gather of a hidden-state-sized tensor, timed alone."""
    hidden = getattr(model.config, "num_attention_heads", 0) * getattr(model.config, "attention_head_dim", 0)
    if not hidden:
        return None
    x = torch.randn(batch, tokens, hidden, device="cuda", dtype=torch.bfloat16)
    order = torch.randperm(tokens, device="cuda")
    inverse = torch.argsort(order)
    return triton.testing.do_bench(lambda: x[:, order][:, inverse], warmup=10, rep=50, return_mode="median")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/e2e")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--settings", nargs="+", default=["lse:0.5", "lse:0.3", "sparge:0.5"],
                        help="PREDICTOR:TOPK pairs run with Hilbert order")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import diffusers

    meta = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
            "diffusers": diffusers.__version__}
    rows: List[Dict] = []
    for name in args.models:
        try:
            run_model(name, args, rows, meta)
        except torch.cuda.OutOfMemoryError as error:
            rows.append(dict(meta, model=name, setting="out of memory", note=str(error)[:200]))
            print(f"{name}: out of memory", flush=True)
            torch.cuda.empty_cache()
        except Exception as error:  # one broken model must not hide the others' numbers
            traceback.print_exc()
            rows.append(dict(meta, model=name, setting="failed", note=f"{type(error).__name__}: {str(error)[:200]}"))
            gc.collect()
            torch.cuda.empty_cache()
        write(rows, args.out)
    return 0


def write(rows: List[Dict], out_prefix: str) -> None:
    os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
    with open(out_prefix + ".csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    meta = rows[0] if rows else {}
    lines = [f"# End-to-end transformer step on {meta.get('gpu', '?')}", "",
             f"torch {meta.get('torch')}, Triton {meta.get('triton')}, diffusers {meta.get('diffusers')}; random "
             "weights in bf16, real configs, one denoising step, median of repeats; speed-up = stock step time / "
             "step time in the same run.", "",
             "| model | batch | tokens | setting | step ms | speed-up | peak GiB | attention share | reorder share | "
             "sparsity | relL1 vs stock |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(k, "")) for k in (
            "model", "batch", "tokens", "setting", "step_ms", "speedup", "peak_gib", "attention_share",
            "reorder_share", "sparsity", "rel_l1_vs_stock")) + " |")
    with open(out_prefix + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
