"""Kernel benchmark: cuDNN / FlashAttention SDPA, FlexAttention, sageattention and sparge-diffusers in one run.

Writes one CSV row per measurement (GPU, versions, shape, implementation, sparsity, median ms, effective TFLOPS,
ratio to cuDNN SDPA measured in the same run, relL1 and cosine against an fp32 oracle on the first heads) and a
markdown summary. Effective TFLOPS credit dense work: 4·B·H·S²·D / time.

    python scripts/bench_kernels.py --out benchmarks/results/kernels_h100
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
from typing import Callable, Dict, List, Optional

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from sparge_diffusers import BlockMap, SpargeConfig, sparge_attn
from sparge_diffusers.kernels import block_sparse_attn, dispatch, predict, quantize
from sparge_diffusers.kernels.reference import cosine_similarity, relative_l1
from sparge_diffusers.run_stats import capture_cuda_graph

SHAPES = {
    "flux1024": (1, 24, 4608, 128),
    "cogvideox2b": (1, 30, 17776, 64),
    "wan1.3b": (1, 12, 32760, 128),
    "mochi": (1, 24, 44776, 128),
}
ORACLE_HEADS = 2
FIELDS = ["gpu", "torch", "triton", "shape", "B", "H", "S", "D", "blocks", "section", "impl", "precision", "sparsity",
          "measured_sparsity", "ms", "eff_tflops", "x_cudnn", "rel_l1", "cosine", "note"]


def timed(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def graph_timed(fn: Callable[[], object]) -> float:
    """Median time of ``fn`` replayed from a CUDA graph: GPU time without Python launch overhead."""
    return timed(capture_cuda_graph(fn, warmup=2).replay)


def random_block_mask(b, h, nq, nk, sparsity, device, seed=0) -> torch.Tensor:
    """Uniformly random kept blocks with exactly round((1 - sparsity) · nk) per (head, query block)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    keep = max(1, round((1 - sparsity) * nk))
    rank = torch.rand(b, h, nq, nk, generator=gen, device=device).argsort(-1).argsort(-1)
    return rank < keep


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows: List[Dict] = []
        props = torch.cuda.get_device_properties(0)
        self.meta = {"gpu": props.name, "torch": torch.__version__, "triton": triton.__version__}

    def add(self, shape_name, shape, section, impl, ms, *, precision="bf16", sparsity=0.0, measured=None,
            cudnn_ms=None, out=None, oracle=None, note="", blocks=""):
        b, h, s, d = shape
        row = dict(self.meta, shape=shape_name, B=b, H=h, S=s, D=d, blocks=blocks, section=section, impl=impl,
                   precision=precision,
                   sparsity=sparsity, measured_sparsity="" if measured is None else round(measured, 4),
                   ms=round(ms, 4), eff_tflops=round(4 * b * h * s * s * d / ms / 1e9, 1),
                   x_cudnn="" if cudnn_ms is None else round(cudnn_ms / ms, 3), rel_l1="", cosine="", note=note)
        if out is not None and oracle is not None:
            part = out[:, :ORACLE_HEADS].float()
            row["rel_l1"], row["cosine"] = round(relative_l1(part, oracle), 5), round(cosine_similarity(part, oracle), 6)
        self.rows.append(row)
        print(f"{shape_name:<12} {blocks:<7} {section:<10} {impl:<28} {precision:<9} sp={sparsity:<4} {ms:8.3f} ms "
              f"{row['eff_tflops']:7.1f} TFLOPS x{row['x_cudnn']} relL1={row['rel_l1']}", flush=True)


def run_shape(bench: Bench, name: str, shape, sparsities, topks, block_sizes):
    b, h, s, d = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, h, s, d, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        oracle = torch.nn.functional.scaled_dot_product_attention(
            *(x[:, :ORACLE_HEADS].float() for x in (q, k, v)))

    def sdpa(backend):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    out = sdpa(SDPBackend.CUDNN_ATTENTION)
    cudnn_ms = timed(lambda: sdpa(SDPBackend.CUDNN_ATTENTION))
    bench.add(name, shape, "dense", "sdpa-cudnn", cudnn_ms, cudnn_ms=cudnn_ms, out=out, oracle=oracle)
    out = sdpa(SDPBackend.FLASH_ATTENTION)
    bench.add(name, shape, "dense", "sdpa-flash", timed(lambda: sdpa(SDPBackend.FLASH_ATTENTION)),
              cudnn_ms=cudnn_ms, out=out, oracle=oracle)
    try:
        from sageattention import sageattn

        out = sageattn(q, k, v, tensor_layout="HND", is_causal=False)
        bench.add(name, shape, "dense", "sageattention", timed(lambda: sageattn(q, k, v, tensor_layout="HND")),
                  precision="int8-fp16", cudnn_ms=cudnn_ms, out=out, oracle=oracle)
    except Exception as error:  # report the peer as missing, keep the run going
        print(f"sageattention unavailable: {error}")

    for sparsity in sparsities:
        flex_row(bench, name, shape, q, k, v, sparsity, cudnn_ms)
    for bn in block_sizes:
        run_ours(bench, name, shape, q, k, v, oracle, cudnn_ms, sparsities, topks, SpargeConfig.block_m, bn)


def run_ours(bench: Bench, name: str, shape, q, k, v, oracle, cudnn_ms, sparsities, topks, bm, bn):
    """Our kernel, whole call and overhead rows with ``bm × bn`` blocks (rows tagged with the block sizes)."""
    b, h, s, d = shape
    scale = d ** -0.5

    def add(*args, **kwargs):
        bench.add(*args, blocks=f"{bm}x{bn}", **kwargs)

    nq, nk = triton.cdiv(s, bm), triton.cdiv(s, bn)
    prepare = dict(block_m=bm, block_n=bn, q_scale_mult=scale * block_sparse_attn.LOG2E)
    q8, q_scale, k8, k_scale, v8, v_scale, *_ = quantize.prepare_fwd(q, k, v, **prepare)
    v16 = dispatch.padded_fp16(v, bn)
    out_buf = torch.empty_like(q)
    common = dict(seq_len_q=s, seq_len_k=s, block_m=bm, block_n=bn, softmax_scale=scale)

    def kernel_fp8(lut, counts, hopper=None):
        return block_sparse_attn.block_sparse_attn_fwd(q8, k8, v8, lut, counts, out_buf, pv_mode=block_sparse_attn.PV_FP8,
                                                       q_scale=q_scale, k_scale=k_scale, v_scale=v_scale,
                                                       v_transposed=True, hopper=hopper, **common)

    def kernel_fp8_triton(lut, counts):
        return kernel_fp8(lut, counts, hopper=False)

    def kernel_fp16(lut, counts):
        return block_sparse_attn.block_sparse_attn_fwd(q8, k8, v16, lut, counts, out_buf,
                                                       pv_mode=block_sparse_attn.PV_FP16, q_scale=q_scale,
                                                       k_scale=k_scale, **common)

    def kernel_bf16(lut, counts):
        return block_sparse_attn.block_sparse_attn_fwd(q, k, v, lut, counts, out_buf,
                                                       pv_mode=block_sparse_attn.PV_NATIVE, **common)

    def quant_fp8():
        quantize.prepare_fwd(q, k, v, **prepare)

    quant_ms = timed(quant_fp8)
    for sparsity in sparsities:
        mask = random_block_mask(b, h, nq, nk, sparsity, "cuda")
        block_map = BlockMap(mask, bm, bn, s, s)
        lut, counts = block_map.to_lut()
        measured = block_map.sparsity()
        oracle_here = oracle if sparsity == 0 else None
        kernels = (("int8-fp8", "sparge kernel only", kernel_fp8),
                   ("int8-fp8", "sparge kernel only (Triton, hopper=False)", kernel_fp8_triton),
                   ("int8-fp16", "sparge kernel only", kernel_fp16), ("bf16", "sparge kernel only", kernel_bf16))
        for precision, impl, kernel in kernels:
            if (precision != "int8-fp8" or "Triton" in impl) and sparsity not in (0.0, 0.5):
                continue
            out = kernel(lut, counts).clone()
            ms = timed(lambda: kernel(lut, counts))
            add(name, shape, "given-mask", impl, ms, precision=precision, sparsity=sparsity,
                      measured=measured, cudnn_ms=cudnn_ms, out=out, oracle=oracle_here)
            if impl == "sparge kernel only" and precision == "int8-fp8":
                add(name, shape, "given-mask", "sparge quantize+kernel", ms + quant_ms, precision=precision,
                          sparsity=sparsity, measured=measured, cudnn_ms=cudnn_ms, note="sum of two timings")

    for predictor in ("sparge", "lse"):
        for topk in topks:
            config = SpargeConfig(topk=topk, sim_threshold=None, predictor=predictor, check_finite=False,
                                  speed_rule="sparse", block_m=bm, block_n=bn)
            out, stats = sparge_attn(q, k, v, config=config, return_stats=True)
            ms = timed(lambda: sparge_attn(q, k, v, config=config))
            label = f"{predictor} topk={topk}"
            add(name, shape, "whole-call", label, ms, precision="int8-fp8", sparsity=1 - topk,
                      measured=stats.mean_sparsity, cudnn_ms=cudnn_ms, out=out, oracle=oracle,
                      note="relL1 vs dense oracle (random inputs: near-uniform attention)")
            ms = graph_timed(lambda: sparge_attn(q, k, v, config=config))
            add(name, shape, "whole-call", f"{label} (CUDA graph)", ms, precision="int8-fp8",
                      sparsity=1 - topk, measured=stats.mean_sparsity, cudnn_ms=cudnn_ms,
                      note="same call replayed from a CUDA graph")
    config = SpargeConfig(topk=1.0, predictor="full", check_finite=False, block_m=bm, block_n=bn, speed_rule="sparse")
    out = sparge_attn(q, k, v, config=config)
    add(name, shape, "whole-call", "sparge full (quantized dense)", timed(lambda: sparge_attn(q, k, v, config=config)),
              precision="int8-fp8", measured=0.0, cudnn_ms=cudnn_ms, out=out, oracle=oracle)

    selection = dict(seq_len_q=s, seq_len_k=s, block_m=bm, block_n=bn, scale=scale, topk=0.5, cdf_threshold=None)

    def pooled_select(stats):
        return predict.select_blocks_fwd(stats.q_means, stats.k_means, stats.q_sims, stats.k_sims, sim_threshold=0.6,
                                         **selection)

    def lse_select(stats):
        return predict.select_blocks_fwd(None, None, None, None, sim_threshold=None, block_logits=stats.block_logits,
                                         **selection)

    def predict_only():
        pooled_select(quantize.prepare_fwd(q, k, None, quantize_qk=False, v_fp8=False, stats="pooled", **prepare))

    def predict_and_quantize():
        pooled_select(quantize.prepare_fwd(q, k, v, stats="pooled", **prepare))

    def lse_predict_only():
        lse_select(quantize.prepare_fwd(q, k, None, quantize_qk=False, v_fp8=False, stats="lse", softmax_scale=scale,
                                        **prepare))

    def lse_predict_and_quantize():
        lse_select(quantize.prepare_fwd(q, k, v, stats="lse", softmax_scale=scale, **prepare))

    for label, fn in (("prediction only", predict_only), ("prediction+quantization", predict_and_quantize),
                      ("lse prediction only", lse_predict_only),
                      ("lse prediction+quantization", lse_predict_and_quantize)):
        for suffix, timer in (("", timed), (" (CUDA graph)", graph_timed)):
            ms = timer(fn)
            add(name, shape, "overhead", label + suffix, ms, precision="int8-fp8", cudnn_ms=cudnn_ms,
                      note=f"{100 * ms / cudnn_ms:.2f}% of dense cuDNN")
    add(name, shape, "overhead", "quantization only", quant_ms, precision="int8-fp8", cudnn_ms=cudnn_ms,
              note=f"{100 * quant_ms / cudnn_ms:.2f}% of dense cuDNN")
    lse_stats = quantize.prepare_fwd(q, k, v, stats="lse", softmax_scale=scale, **prepare)
    parts = {
        "part: prepare, quantization only": quant_fp8,
        "part: prepare, quantization + lse logits": lambda: quantize.prepare_fwd(
            q, k, v, stats="lse", softmax_scale=scale, **prepare),
        "part: selection kernel (lse logits)": lambda: lse_select(lse_stats),
        "part: block-sparse kernel, full mask": lambda: kernel_fp8(*dispatch.full_lut(b, h, s, s, bm, bn, "cuda")),
    }
    for label, fn in parts.items():
        add(name, shape, "overhead", label, graph_timed(fn), precision="int8-fp8", cudnn_ms=cudnn_ms,
                  note="CUDA graph")


def flex_row(bench, name, shape, q, k, v, sparsity, cudnn_ms):
    """FlexAttention (compiled, bf16) on a random 128×128 block mask of the same sparsity."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention
    except ImportError:
        return
    b, h, s, d = shape
    n = triton.cdiv(s, 128)
    mask = random_block_mask(b, h, n, n, sparsity, "cuda", seed=1)
    lut, counts = BlockMap(mask, 128, 128, s, s).to_lut()
    try:
        block_mask = BlockMask.from_kv_blocks(torch.zeros_like(counts), lut, full_kv_num_blocks=counts,
                                              full_kv_indices=lut, BLOCK_SIZE=128, seq_lengths=(s, s))
        flex = torch.compile(flex_attention, dynamic=False)
        flex(q, k, v, block_mask=block_mask)
        ms = timed(lambda: flex(q, k, v, block_mask=block_mask))
        bench.add(name, shape, "given-mask", "flex bf16 128x128", ms, sparsity=sparsity,
                  measured=1 - float(mask.float().mean()), cudnn_ms=cudnn_ms)
    except Exception as error:  # keep the run going; the row says why it is missing
        print(f"flex failed on {name} sparsity {sparsity}: {type(error).__name__}: {str(error)[:200]}")


def tune(shape_names):
    """Time the FP8 kernel over launch settings at sparsity 0 and 0.9; prints a small table."""
    for name in shape_names:
        b, h, s, d = SHAPES[name]
        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            cudnn_ms = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        out = torch.empty_like(q)
        for bm, bn in ((128, 64), (128, 128), (64, 64)):
            q8, q_scale, k8, k_scale, v8, v_scale, *_ = quantize.prepare_fwd(
                q, k, v, block_m=bm, block_n=bn, q_scale_mult=d ** -0.5 * block_sparse_attn.LOG2E)
            nq, nk = triton.cdiv(s, bm), triton.cdiv(s, bn)
            for sparsity in (0.0, 0.9):
                lut, counts = BlockMap(random_block_mask(b, h, nq, nk, sparsity, "cuda"), bm, bn, s, s).to_lut()
                settings = [(4, 3), (4, 4), (8, 3)] if bm == 128 else [(4, 3)]
                for warps, stages in settings:
                    def run():
                        block_sparse_attn.block_sparse_attn_fwd(
                            q8, k8, v8, lut, counts, out, seq_len_q=s, seq_len_k=s, block_m=bm, block_n=bn,
                            pv_mode=block_sparse_attn.PV_FP8, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale,
                            v_transposed=True, softmax_scale=d ** -0.5, num_warps=warps, num_stages=stages)
                    label = f"tune {name:<12} sp={sparsity} BM={bm} BN={bn} warps={warps} stages={stages}"
                    try:
                        run()
                        ms = timed(run)
                        print(f"{label}: {ms:7.3f} ms  x{cudnn_ms / ms:.3f} cuDNN", flush=True)
                    except Exception as error:
                        print(f"{label}: {type(error).__name__} {str(error)[:150]}", flush=True)


def write(bench: Bench, out_prefix: str):
    os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
    with open(out_prefix + ".csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(bench.rows)
    lines = [f"# Kernel benchmark on {bench.meta['gpu']}", "",
             f"torch {bench.meta['torch']}, Triton {bench.meta['triton']}, Python {platform.python_version()}; "
             "`triton.testing.do_bench` median; random normal bf16 inputs; x cuDNN = cuDNN SDPA time in the same "
             "run / time; relL1 against an fp32 oracle on the first two heads.", "",
             "| shape | blocks | section | impl | precision | sparsity | ms | eff. TFLOPS | x cuDNN | relL1 | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in bench.rows:
        lines.append(f"| {row['shape']} | {row['blocks']} | {row['section']} | {row['impl']} | {row['precision']} | "
                     f"{row['measured_sparsity'] if row['measured_sparsity'] != '' else row['sparsity']} | {row['ms']} | "
                     f"{row['eff_tflops']} | {row['x_cudnn']} | {row['rel_l1']} | {row['note']} |")
    with open(out_prefix + ".md", "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/kernels")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.9])
    parser.add_argument("--topks", type=float, nargs="+", default=[0.5, 0.2])
    parser.add_argument("--block-n", type=int, nargs="+", default=[SpargeConfig.block_n], choices=[64, 128],
                        help=f"key block sizes of our rows (default: {SpargeConfig.block_n}, SpargeConfig's)")
    parser.add_argument("--tune", action="store_true", help="only time kernel launch settings")
    args = parser.parse_args(argv)
    if args.tune:
        tune(args.shapes)
        return 0
    bench = Bench(args)
    for name in args.shapes:
        run_shape(bench, name, SHAPES[name], args.sparsities, args.topks, args.block_n)
        write(bench, args.out)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
