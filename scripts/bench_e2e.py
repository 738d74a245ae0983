"""End-to-end step time of full-size diffusers transformers: stock attention against Sparge, in one run.

Builds the real transformer configs of CogVideoX-2b, CogVideoX-5b, Mochi-1, Flux.1-dev, Wan 2.1 1.3B (480p, 81
frames: 32,760 tokens), Wan 2.1 14B (720p, 81 frames: 75,600 tokens) and HunyuanVideo (720p, 129 frames: 118,800
tokens) with random weights in bf16 on one GPU (no weights needed) and feeds one denoising step at that resolution
(CogVideoX / Mochi: CFG batch 2; Wan runs its two CFG forwards separately and HunyuanVideo and Flux.1-dev are
guidance-distilled: batch 1). It reports step time, speed-up over stock, peak memory (and its ratio to stock; on the
CPU, ``--tiny``, the eager peak of the tensors made during the forward plus the weights, `LiveBytes`), the
share of the step spent in attention and in the Hilbert reordering, and the measured sparsity, eager and, with
``--compile``, under ``torch.compile`` of the transformer (compile time = first call minus a steady call; graph breaks
counted by dynamo, ``graph_breaks``, should be 0).

``--layers N`` builds the models with N transformer blocks (HunyuanVideo: a third double-stream, the rest
single-stream) so that the large configs fit the time budget; the ``scaled_step_ms`` column is the measured time
times full blocks / N (an upper bound: the embeddings and the output layer are scaled too) and is labelled so.
Random weights make blocks of Q and K incoherent, so the paper's self-similarity test (θ) would keep every block: θ
is off here. At topk = 1 the transformer output is compared with stock (relL1), which should match the kernel's own
error compounded over the layers. Relative L1 of compiled rows is against the *eager* stock output, so it includes
compile's own numeric drift. Every Sparge row is checked against the stock row of its mode (never slower): rows below
1.00x are printed, noted in the CSV and listed under the table; ``--strict`` makes them an exit status of 1.

    python scripts/bench_e2e.py --out benchmarks/results/e2e_h200
    python scripts/bench_e2e.py --models wan21-1.3b-480p wan21-14b-720p hunyuan-720p-129f --layers 4 --compile
    python scripts/bench_e2e.py --tiny          # CPU, tiny configs, seconds (CI)
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch

from sparge_diffusers import SpargeConfig, apply_sparge, get_sparge_stats, remove_sparge
from sparge_diffusers.kernels.reference import cosine_similarity, relative_l1

FIELDS = ["gpu", "torch", "triton", "diffusers", "model", "layers", "full_layers", "batch", "tokens", "mode",
          "setting", "step_ms", "scaled_step_ms", "speedup", "compile_s", "peak_gib", "peak_vs_stock",
          "attention_share", "reorder_share", "sparsity", "rel_l1_vs_stock", "cosine_vs_stock", "graph_breaks",
          "stock_spread", "note"]
DEVICE = "cuda"


def cogvideox(variant: str):
    from diffusers import CogVideoXTransformer3DModel

    config = dict(num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, num_layers=30,
                  sample_width=90, sample_height=60, sample_frames=49, patch_size=2, text_embed_dim=4096,
                  time_embed_dim=512, max_text_seq_length=226, use_rotary_positional_embeddings=False)
    if variant == "5b":
        config.update(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
    model = CogVideoXTransformer3DModel(**config)

    def inputs(batch, gen):
        return dict(hidden_states=torch.randn(batch, 13, 16, 60, 90, generator=gen, device=DEVICE),
                    encoder_hidden_states=torch.randn(batch, 226, 4096, generator=gen, device=DEVICE),
                    timestep=torch.full((batch,), 500, device=DEVICE, dtype=torch.long),
                    image_rotary_emb=_cogvideox_rope(13, 30, 45) if variant == "5b" else None)

    return model, inputs, 13 * 30 * 45 + 226


def _cogvideox_rope(t, h, w):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cos, sin = get_3d_rotary_pos_embed(embed_dim=64, crops_coords=((0, 0), (h, w)), grid_size=(h, w),
                                       temporal_size=t, device=DEVICE)
    return cos, sin


def mochi(frames: int):
    from diffusers import MochiTransformer3DModel

    model = MochiTransformer3DModel()
    latent_t = (frames - 1) // 6 + 1

    def inputs(batch, gen):
        return dict(hidden_states=torch.randn(batch, 12, latent_t, 60, 106, generator=gen, device=DEVICE),
                    encoder_hidden_states=torch.randn(batch, 256, 4096, generator=gen, device=DEVICE),
                    encoder_attention_mask=torch.ones(batch, 256, dtype=torch.bool, device=DEVICE),
                    timestep=torch.full((batch,), 500, device=DEVICE, dtype=torch.long))

    return model, inputs, latent_t * 30 * 53 + 256


def flux(double: int = 19, single: int = 38):
    """Flux.1-dev at 1024² (``double`` / ``single``: its 19 double- and 38 single-stream blocks; fewer for
    profiles)."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
                                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))

    def inputs(batch, gen):
        rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float().to(DEVICE)
        return dict(hidden_states=torch.randn(batch, 4096, 64, generator=gen, device=DEVICE),
                    encoder_hidden_states=torch.randn(batch, 512, 4096, generator=gen, device=DEVICE),
                    pooled_projections=torch.randn(batch, 768, generator=gen, device=DEVICE),
                    timestep=torch.full((batch,), 0.5, device=DEVICE), guidance=torch.full((batch,), 3.5, device=DEVICE),
                    img_ids=img_ids, txt_ids=torch.zeros(512, 3, device=DEVICE))

    return model, inputs, 4096 + 512


def wan(size: str, layers: Optional[int]):
    """Wan 2.1 T2V 1.3B at 480x832 or 14B at 720x1280, 81 frames (latent 21 frames, 8x VAE, 1x2x2 patches)."""
    from diffusers import WanTransformer3DModel

    if size == "1.3b":
        config = dict(num_attention_heads=12, ffn_dim=8960, num_layers=30)
        height, width = 480, 832
    else:
        config = dict(num_attention_heads=40, ffn_dim=13824, num_layers=40)
        height, width = 720, 1280
    full = config["num_layers"]
    config["num_layers"] = layers or full
    model = WanTransformer3DModel(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16,
                                  text_dim=4096, freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                  **config)
    latent_t, latent_h, latent_w = 21, height // 8, width // 8

    def inputs(batch, gen):
        return dict(hidden_states=torch.randn(batch, 16, latent_t, latent_h, latent_w, generator=gen, device=DEVICE),
                    encoder_hidden_states=torch.randn(batch, 512, 4096, generator=gen, device=DEVICE),
                    timestep=torch.full((batch,), 500.0, device=DEVICE))

    return model, inputs, latent_t * (latent_h // 2) * (latent_w // 2), full


def hunyuan_video(layers: Optional[int]):
    """HunyuanVideo T2V at 720x1280, 129 frames (latent 33 frames, 8x VAE, 1x2x2 patches), 256 text tokens."""
    from diffusers import HunyuanVideoTransformer3DModel

    full = 20 + 40
    double = 20 if layers is None else max(1, layers // 3)
    single = 40 if layers is None else max(1, layers - double)
    model = HunyuanVideoTransformer3DModel(num_layers=double, num_single_layers=single)
    latent_t, latent_h, latent_w = 33, 90, 160

    def inputs(batch, gen):
        mask = torch.ones(batch, 256, dtype=torch.bool, device=DEVICE)
        mask[:, 200:] = False  # a padded prompt, as the pipeline passes it
        return dict(hidden_states=torch.randn(batch, 16, latent_t, latent_h, latent_w, generator=gen, device=DEVICE),
                    encoder_hidden_states=torch.randn(batch, 256, 4096, generator=gen, device=DEVICE),
                    encoder_attention_mask=mask,
                    pooled_projections=torch.randn(batch, 768, generator=gen, device=DEVICE),
                    timestep=torch.full((batch,), 500.0, device=DEVICE),
                    guidance=torch.full((batch,), 6000.0, device=DEVICE))

    return model, inputs, latent_t * (latent_h // 2) * (latent_w // 2) + 256, full


def tiny(family: str, layers: Optional[int]):
    """A tiny random transformer of a family (``--tiny``: CPU, seconds)."""
    from sparge_diffusers.pipelines.tiny import TINY_GRIDS, tiny_transformer, transformer_inputs

    model = tiny_transformer(family, num_layers=layers or 1)
    grid = TINY_GRIDS[family]

    def inputs(batch, gen):
        return {k: v for k, v in transformer_inputs(model, grid, batch_size=batch, device=DEVICE).items()
                if k != "return_dict"}

    tokens = 1
    for g in grid:
        tokens *= g
    return model, inputs, tokens, layers or 1


TINY_MODELS: Dict[str, Callable] = {f"tiny-{f}": (lambda f=f: lambda layers: tiny(f, layers))()
                                    for f in ("wan", "hunyuan_video", "ltx", "flux")}
LAYERED = {"wan21-1.3b-480p": lambda layers: wan("1.3b", layers), "wan21-14b-720p": lambda layers: wan("14b", layers),
           "hunyuan-720p-129f": hunyuan_video, **TINY_MODELS}
BATCH_ONE = ("flux", "wan", "hunyuan", "tiny")

MODELS: Dict[str, Callable] = {
    "wan21-1.3b-480p": None,
    "wan21-14b-720p": None,
    "hunyuan-720p-129f": None,
    "cogvideox-2b": lambda: cogvideox("2b"),
    "cogvideox-5b": lambda: cogvideox("5b"),
    "mochi-163f": lambda: mochi(163),
    "mochi-85f": lambda: mochi(85),
    "flux-dev-1024": flux,
}


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed_call(model, kwargs) -> float:
    """Wall time (ms) of one synchronized forward."""
    _sync()
    start = time.perf_counter()
    model(**kwargs, return_dict=False)
    _sync()
    return (time.perf_counter() - start) * 1e3


COMPILED_MIN_REPEATS = 5


def rebase(rows: List[Dict], model: str, mode: str, before_ms: float, after_ms: float) -> None:
    """Speed-ups of the Sparge rows of one model and mode against the mean of the stock step timed before and after
    them (GPU clocks drift by 1-2% over a run: one stock timing at the start biases every ratio), and a
    ``stock (again)`` row with the second timing."""
    reference = (before_ms + after_ms) / 2
    spread = round(abs(after_ms - before_ms) / reference, 4)
    for row in rows:
        if row["model"] == model and row["mode"] == mode:
            row["stock_spread"] = spread
            if row["speedup"] != "":
                row["speedup"] = round(reference / row["step_ms"], 3)
    drift = round(after_ms / before_ms, 4)
    for row in rows:
        if row["model"] == model and row["mode"] == mode and row["setting"] == "stock":
            row["note"] = (f"stock again after the Sparge rows: {after_ms:.2f} ms ({drift}x); speed-ups are against "
                           f"the mean; " + (row["note"] or "")).rstrip("; ")


def loop_length(config: SpargeConfig) -> int:
    """Forwards one step-time sample averages: the error budget's guard measures once per up to `MAX_INTERVAL`
    calls and a reused block map serves ``map_reuse`` calls, so their forwards differ and a denoising loop pays the
    mean of a whole cycle (`MAX_INTERVAL` forwards, a multiple of every map_reuse up to it); other rules: 1."""
    from sparge_diffusers.budget_guard import MAX_INTERVAL

    return MAX_INTERVAL if config.selection.rule == "budget" or config.map_reuse_calls > 1 else 1


def step_time(model, kwargs, repeats: int, group: int = 1) -> float:
    """Median wall time (ms) of one forward, synchronized. With ``group`` > 1 each sample is the mean of ``group``
    consecutive forwards (`loop_length`)."""
    times = sorted(sum(timed_call(model, kwargs) for _ in range(group)) / group for _ in range(repeats))
    return times[len(times) // 2]


def _reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0


def peak_call(model, kwargs):
    """One forward and its peak memory: ``max_memory_allocated`` on a GPU (weights included); on the CPU the peak of
    the tensors made during the forward (`LiveBytes`, eager only)."""
    if DEVICE == "cuda":
        _reset_peak()
        out = model(**kwargs, return_dict=False)[0].float()
        return out, _peak()
    from sparge_diffusers.live_memory import LiveBytes

    with LiveBytes() as tracker:
        out = model(**kwargs, return_dict=False)[0].float()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return out, tracker.peak + weights


KEEP_FP32 = ("img_ids", "txt_ids", "timestep", "guidance")  # position ids and conditioning scalars stay fp32


def cast_inputs(inputs: Dict, dtype: torch.dtype) -> Dict:
    """The transformer inputs in the model's ``dtype``, except `KEEP_FP32`."""
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and k not in KEEP_FP32 else v)
            for k, v in inputs.items()}


def build(name: str, layers: Optional[int]):
    if name in LAYERED:
        return LAYERED[name](layers)
    model, make_inputs, tokens = MODELS[name]()
    return model, make_inputs, tokens, None


def run_model(name: str, args, rows: List[Dict], meta: Dict):
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model, make_inputs, tokens, full_layers = build(name, args.layers)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    model = model.to(dtype).eval()
    batch = 1 if name.startswith(BATCH_ONE) else 2
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    kwargs = cast_inputs(make_inputs(batch, gen), dtype)
    if kwargs.get("image_rotary_emb") is None:
        kwargs.pop("image_rotary_emb", None)
    layers = args.layers if full_layers is not None else None
    scale = (full_layers / layers) if layers else 1.0
    stock_peak = {}

    def add(mode, setting, ms, peak, stock_ms=None, **extra):
        row = dict(meta, model=name, layers=layers or "all", full_layers=full_layers or "", batch=batch,
                   tokens=tokens, mode=mode, setting=setting, step_ms=round(ms, 2),
                   scaled_step_ms=round(ms * scale, 1) if layers else "",
                   speedup="" if stock_ms is None else round(stock_ms / ms, 3), compile_s="",
                   peak_gib=round(peak / 2 ** 30, 2),
                   peak_vs_stock=round(peak / stock_peak[mode], 4) if stock_peak.get(mode) else "",
                   attention_share="", reorder_share="", sparsity="", rel_l1_vs_stock="", cosine_vs_stock="",
                   note="scaled_step_ms = step_ms x full/N blocks (upper bound)" if layers else "")
        row.update(extra)
        rows.append(row)
        print(" ".join(f"{k}={row[k]}" for k in ("model", "mode", "setting", "step_ms", "speedup", "compile_s",
                                                  "peak_vs_stock", "attention_share", "sparsity",
                                                  "rel_l1_vs_stock")), flush=True)

    settings = [("topk=1 (exactness)", SpargeConfig(topk=1.0, sim_threshold=None, check_finite=False))]
    for item in args.settings:
        predictor, value, *reuse = item.split(":")
        map_reuse = int(reuse[0]) if reuse else 1  # the rows before map_reuse existed predicted in every call
        suffix = f" map_reuse={map_reuse}" if reuse else ""
        if predictor in ("eps", "mixed-eps"):  # the error budget with the lse / mixed predictor
            ranking = "lse" if predictor == "eps" else "mixed"
            settings.append((f"{ranking} eps={value} hilbert{suffix}",
                             SpargeConfig(target_error=float(value), predictor=ranking, sim_threshold=None,
                                          reorder="hilbert", check_finite=False, map_reuse=map_reuse)))
            continue
        settings.append((f"{predictor} topk={value} hilbert{suffix}",
                         SpargeConfig(topk=float(value), predictor=predictor, sim_threshold=None, reorder="hilbert",
                                      check_finite=False, map_reuse=map_reuse)))

    with torch.no_grad():
        model(**kwargs, return_dict=False)
        stock_out, stock_peak["eager"] = peak_call(model, kwargs)
        stock_ms = step_time(model, kwargs, args.repeats)
        add("eager", "stock", stock_ms, stock_peak["eager"])
        for label, config in settings:
            apply_sparge(model, config)
            model(**kwargs, return_dict=False)
            out, peak = peak_call(model, kwargs)
            ms = step_time(model, kwargs, args.repeats, group=loop_length(config))
            remove_sparge(model)
            apply_sparge(model, config, collect_stats=True)
            model(**kwargs, return_dict=False)
            stats = get_sparge_stats(model)
            attention_ms, sparsity = stats.total_attention_ms, stats.mean_sparsity
            remove_sparge(model)
            add("eager", label, ms, peak, stock_ms, attention_share=round(attention_ms / ms, 3),
                sparsity=round(sparsity, 4), rel_l1_vs_stock=round(relative_l1(out, stock_out), 5),
                cosine_vs_stock=round(cosine_similarity(out, stock_out), 6))
        rebase(rows, name, "eager", stock_ms, step_time(model, kwargs, args.repeats))
        reorder_ms = time_reorder(model, kwargs, tokens, batch)
        if reorder_ms is not None:
            rows[-1]["reorder_share"] = round(reorder_ms / rows[-1]["step_ms"], 4)
        if args.compile:
            compiled_runs(name, model, kwargs, settings[-1:] if args.compile_last_only else settings, args, add,
                          stock_out, stock_peak, rows)
    del model, kwargs, stock_out
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def compiled_runs(name, model, kwargs, settings, args, add, stock_out, stock_peak, rows) -> None:
    """Stock and Sparge under ``torch.compile`` of the transformer (fresh compile each; compile time reported)."""
    from torch._dynamo.utils import counters

    def compile_and_time(label, reset=True, group=1):
        if reset:
            torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(model, backend=args.compile_backend)
        first = timed_call(compiled, kwargs)
        breaks = sum(counters["graph_break"].values())
        _reset_peak()
        out = compiled(**kwargs, return_dict=False)[0].float()
        peak = _peak()  # 0 on the CPU: compiled code is not measured there
        # compiled steps are short next to their compile: at least 5 repeats (2 spread Flux by about 2%)
        ms = step_time(compiled, kwargs, max(args.repeats, COMPILED_MIN_REPEATS), group=group)
        return out, ms, peak, max(0.0, (first - ms) / 1e3), breaks, compiled

    # the compiled stock row's relL1 is against eager stock (what compilation alone changes); the compiled Sparge
    # rows' are against compiled stock
    compiled_stock, stock_ms, peak, compile_s, breaks, stock_fn = compile_and_time("stock")
    stock_peak["compiled"] = peak
    add("compiled", "stock", stock_ms, peak, compile_s=round(compile_s, 1), graph_breaks=breaks,
        rel_l1_vs_stock=round(relative_l1(compiled_stock, stock_out), 5))
    for label, config in settings:
        apply_sparge(model, config)
        # no dynamo reset: the compiled stock code stays cached (its guards fail while Sparge is on), so that stock
        # can be timed again afterwards without a second compile
        out, ms, peak, compile_s, breaks, _ = compile_and_time(label, reset=False, group=loop_length(config))
        remove_sparge(model)
        add("compiled", label, ms, peak, stock_ms, compile_s=round(compile_s, 1),
            rel_l1_vs_stock=round(relative_l1(out, compiled_stock), 5),
            cosine_vs_stock=round(cosine_similarity(out, compiled_stock), 6), graph_breaks=breaks)
    stock_fn(**kwargs, return_dict=False)  # the stock entry again (a recompile here would not be timed)
    rebase(rows, name, "compiled", stock_ms, step_time(stock_fn, kwargs, max(args.repeats, COMPILED_MIN_REPEATS)))
    torch._dynamo.reset()


def time_reorder(model, kwargs, tokens, batch) -> Optional[float]:
    """Cost of the boundary reordering: gather + inverse gather of a hidden-state-sized tensor, timed alone."""
    hidden = getattr(model.config, "num_attention_heads", 0) * getattr(model.config, "attention_head_dim", 0)
    if not hidden or DEVICE != "cuda":
        return None
    import triton

    x = torch.randn(batch, tokens, hidden, device=DEVICE, dtype=torch.bfloat16)
    order = torch.randperm(tokens, device=DEVICE)
    inverse = torch.argsort(order)
    return triton.testing.do_bench(lambda: x[:, order][:, inverse], warmup=10, rep=50, return_mode="median")


def main(argv: Optional[List[str]] = None) -> int:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/e2e")
    parser.add_argument("--models", nargs="+", default=None, choices=list(MODELS) + list(TINY_MODELS))
    parser.add_argument("--settings", nargs="+", default=["lse:0.5", "lse:0.3", "sparge:0.5", "eps:0.05"],
                        help="PREDICTOR:TOPK pairs run with Hilbert order (eps:E / mixed-eps:E: the error budget E "
                             "with the lse / mixed predictor); a third field N reuses a block map for up to N calls "
                             "(default 1: every call predicts); budget and reuse rows are means of 8 forwards")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=None,
                        help="transformer blocks of the Wan / HunyuanVideo rows (default: all)")
    parser.add_argument("--compile", action="store_true", help="also run stock and Sparge under torch.compile")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-last-only", action="store_true",
                        help="compile only stock and the last --settings entry (saves compile time)")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny random configs, seconds (tests / CI)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a Sparge row is slower than stock in its mode (never-slower check)")
    args = parser.parse_args(argv)
    if args.tiny:
        DEVICE = "cpu"
        args.models = args.models or list(TINY_MODELS)
        if args.compile_backend == "inductor":
            args.compile_backend = "eager"
    else:
        DEVICE = "cuda"
        args.models = args.models or [m for m in MODELS]
    import diffusers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    meta = {"gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
            "triton": triton_version, "diffusers": diffusers.__version__}
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
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
        write(rows, args.out)
    slower = slower_than_stock(rows)
    for row in slower:
        print(f"never-slower check: {row['model']} {row['mode']} {row['setting']} runs {row['speedup']}x stock",
              flush=True)
    return 1 if slower and args.strict else 0


def slower_than_stock(rows: List[Dict]) -> List[Dict]:
    """Sparge rows whose step is slower than the stock step of the same model and mode by more than stock's own
    spread in the run (``stock_spread``: its two timings, before and after the Sparge rows, apart by that share of
    their mean; 0 when stock was timed once): the never-slower promise, checked on every config the run measured.
    Their ``note`` says so."""
    slower = []
    for row in rows:
        speedup = row.get("speedup")
        if row.get("setting") in ("stock", "failed", "out of memory") or speedup in ("", None):
            continue
        spread = float(row.get("stock_spread") or 0.0)
        if float(speedup) < 1.0 - spread:
            note = row.get("note") or ""
            if "slower than stock" not in note:
                row["note"] = ("slower than stock; " + note).rstrip("; ")
            slower.append(row)
    return slower


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
             "| model | layers | batch | tokens | mode | setting | step ms | scaled ms | speed-up | compile s | "
             "peak GiB | peak / stock | attention share | reorder share | sparsity | relL1 vs stock |",
             "|" + "---|" * 16]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(k, "")) for k in (
            "model", "layers", "batch", "tokens", "mode", "setting", "step_ms", "scaled_step_ms", "speedup",
            "compile_s", "peak_gib", "peak_vs_stock", "attention_share", "reorder_share", "sparsity",
            "rel_l1_vs_stock")) + " |")
    slower = slower_than_stock(rows)
    lines += ["", "Never slower (every Sparge row against stock in its mode): " + (
        "; ".join(f"**{r['model']} {r['mode']} {r['setting']}: {r['speedup']}x**" for r in slower) if slower
        else "no row below 1.00x.")]
    with open(out_prefix + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
