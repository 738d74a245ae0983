"""The Hopper (Gluon) schedule of the FP8 block-sparse kernel against the Triton kernel and cuDNN SDPA, one run.

For every shape and schedule: the output against the Triton kernel on the same quantized operands and against the
fp32 oracle (first heads), and the median time with a given random block mask at each sparsity. Odd lengths and
both head dims are checked first. Writes a CSV; prints a short table.

    python scripts/bench_sm90.py --out benchmarks/results/kernels_sm90_h200.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Dict, List, Optional

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import SHAPES, random_block_mask, timed  # noqa: E402

from sparge_diffusers import BlockMap  # noqa: E402
from sparge_diffusers.kernels import quantize  # noqa: E402
from sparge_diffusers.kernels.block_sparse_attn import kernel as triton_attn  # noqa: E402
from sparge_diffusers.kernels.block_sparse_attn import naive  # noqa: E402
from sparge_diffusers.kernels.reference import relative_l1  # noqa: E402

BLOCK = 128
FIELDS = ["gpu", "torch", "triton", "shape", "S", "D", "impl", "schedule", "sparsity", "ms", "x_cudnn", "x_triton",
          "rel_l1_vs_triton", "rel_l1_vs_oracle", "note"]


def operands(q, k, v):
    scale = q.shape[-1] ** -0.5
    prep = quantize.prepare_fwd(q, k, v, block_m=BLOCK, block_n=BLOCK, q_scale_mult=scale * triton_attn.LOG2E)
    return prep[0], prep[1], prep[2], prep[3], prep[4], prep[5]


def parse_schedule(text: str):
    """``stages,consumer_regs,producer_regs``."""
    return tuple(int(x) for x in text.split(","))


def _common(ops, s):
    q8, q_scale, k8, k_scale, v8, v_scale = ops
    out = torch.empty(*q8.shape[:2], s, q8.shape[-1], dtype=torch.bfloat16, device="cuda")
    return out, dict(seq_len_q=s, seq_len_k=s, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale)


def triton_launch(ops, lut, counts, s, int_rowmax=False):
    """The Triton kernel (never the Hopper route) on the quantized operands, as a zero-argument call."""
    q8, _, k8, _, v8, _ = ops
    out, common = _common(ops, s)
    return lambda: triton_attn.block_sparse_attn_fwd(
        q8, k8, v8, lut, counts, out, block_m=BLOCK, block_n=BLOCK, pv_mode=triton_attn.PV_FP8, v_transposed=True,
        softmax_scale=q8.shape[-1] ** -0.5, hopper=False, int_rowmax=int_rowmax, **common)


def gluon_launch(ops, lut, counts, s, schedule):
    """The Hopper kernel with ``schedule`` on the quantized operands, as a zero-argument call."""
    from sparge_diffusers.kernels.block_sparse_attn import kernel_sm90

    q8, _, k8, _, v8, _ = ops
    out, common = _common(ops, s)
    return lambda: kernel_sm90.sm90_fwd(q8, k8, v8, lut, counts, out, schedule=schedule, **common)


def check_odd(schedules) -> List[str]:
    """Odd lengths, both head dims, a sparse mask with the partial last block: the Gluon kernel against the naive
    emulation, with the Triton kernel's error as the yardstick."""
    failures = []
    for s, d in ((1000, 64), (777, 128), (4608, 128), (1409, 64)):
        gen = torch.Generator(device="cuda").manual_seed(s + d)
        q, k, v = (torch.randn(2, 3, s, d, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        ops = operands(q, k, v)
        nq = nk = triton.cdiv(s, BLOCK)
        mask = random_block_mask(2, 3, nq, nk, 0.4, "cuda", seed=s)
        mask[..., -1] = True  # the partial last key block
        lut, counts = BlockMap(mask, BLOCK, BLOCK, s, s).to_lut()
        ref = naive.naive_block_sparse_attention(q, k, v, mask, block_m=BLOCK, block_n=BLOCK, scale=d ** -0.5,
                                                 precision="int8-fp8")
        err_t = relative_l1(triton_launch(ops, lut, counts, s)().float(), ref)
        for schedule in schedules:
            try:
                out_g = gluon_launch(ops, lut, counts, s, schedule)().float()
            except Exception as error:  # report and go on: a schedule may not compile
                failures.append(f"S={s} D={d} {schedule}: {type(error).__name__}: {str(error)[:300]}")
                continue
            err_g = relative_l1(out_g, ref)
            ok = bool(torch.isfinite(out_g).all()) and err_g <= max(2 * err_t, 0.01)
            print(f"check S={s} D={d} {schedule}: relL1 vs naive gluon {err_g:.5f} triton {err_t:.5f} "
                  f"{'ok' if ok else 'FAIL'}", flush=True)
            if not ok:
                failures.append(f"S={s} D={d} {schedule}: relL1 {err_g:.5f} (triton {err_t:.5f})")
    return failures


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.0, 0.5, 0.9])
    parser.add_argument("--schedules", nargs="+", default=["3,232,40", "2,232,40", "4,232,40"],
                        help="stages,consumer_regs,producer_regs of the warp-specialized kernel")
    parser.add_argument("--check-only", action="store_true", help="only the odd-length checks")
    parser.add_argument("--out", default="benchmarks/results/kernels_sm90_h200.csv")
    args = parser.parse_args(argv)
    schedules = [parse_schedule(text) for text in args.schedules]
    props = torch.cuda.get_device_properties(0)
    meta = {"gpu": props.name, "torch": torch.__version__, "triton": triton.__version__}
    failures = check_odd(schedules)
    if args.check_only:
        for failure in failures:
            print("FAILED", failure)
        return 1 if failures else 0
    rows: List[Dict] = []
    for name in args.shapes:
        b, h, s, d = SHAPES[name]
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(b, h, s, d, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            cudnn_ms = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        oracle = naive.naive_attention(q[:, :2], k[:, :2], v[:, :2])
        ops = operands(q, k, v)
        nq = nk = triton.cdiv(s, BLOCK)
        for sparsity in args.sparsities:
            mask = random_block_mask(b, h, nq, nk, sparsity, "cuda")
            lut, counts = BlockMap(mask, BLOCK, BLOCK, s, s).to_lut()
            tri = triton_launch(ops, lut, counts, s)
            out_t = tri().clone()
            t_ms = timed(tri)
            base = dict(meta, shape=name, S=s, D=d, sparsity=sparsity)
            oracle_error = round(relative_l1(out_t[:, :2].float(), oracle), 5) if sparsity == 0 else ""
            rows.append(dict(base, impl="triton", schedule="int_rowmax=False", ms=round(t_ms, 4),
                             x_cudnn=round(cudnn_ms / t_ms, 3), x_triton=1.0, rel_l1_vs_oracle=oracle_error))
            print(f"{name:<12} sp={sparsity:<4} cudnn {cudnn_ms:8.3f} ms  triton {t_ms:8.3f} ms "
                  f"x{cudnn_ms / t_ms:.3f}", flush=True)
            tri_rowmax = triton_launch(ops, lut, counts, s, int_rowmax=True)
            out_r = tri_rowmax().clone()
            r_ms = timed(tri_rowmax)
            rows.append(dict(base, impl="triton", schedule="int_rowmax", ms=round(r_ms, 4),
                             x_cudnn=round(cudnn_ms / r_ms, 3), x_triton=round(t_ms / r_ms, 3),
                             rel_l1_vs_triton=round(relative_l1(out_r.float(), out_t.float()), 5)))
            print(f"{name:<12} sp={sparsity:<4} triton int_rowmax {r_ms:8.3f} ms x{cudnn_ms / r_ms:.3f} cuDNN "
                  f"x{t_ms / r_ms:.3f} triton  relL1 vs triton {rows[-1]['rel_l1_vs_triton']}", flush=True)
            for schedule in schedules:
                glu = gluon_launch(ops, lut, counts, s, schedule)
                label = ",".join(map(str, schedule))
                try:
                    out_g = glu().clone()
                    g_ms = timed(glu)
                except Exception as error:
                    rows.append(dict(base, impl="gluon", schedule=label, note=f"{type(error).__name__}: "
                                     f"{str(error)[:200]}"))
                    print(f"{name:<12} sp={sparsity:<4} gluon {label}: {type(error).__name__}: {str(error)[:300]}")
                    continue
                rows.append(dict(base, impl="gluon", schedule=label, ms=round(g_ms, 4),
                                 x_cudnn=round(cudnn_ms / g_ms, 3), x_triton=round(t_ms / g_ms, 3),
                                 rel_l1_vs_triton=round(relative_l1(out_g.float(), out_t.float()), 5),
                                 rel_l1_vs_oracle=round(relative_l1(out_g[:, :2].float(), oracle), 5)
                                 if sparsity == 0 else ""))
                print(f"{name:<12} sp={sparsity:<4} gluon {label:<8} {g_ms:8.3f} ms x{cudnn_ms / g_ms:.3f} cuDNN "
                      f"x{t_ms / g_ms:.3f} triton  relL1 vs triton {rows[-1]['rel_l1_vs_triton']}", flush=True)
        rows.append(dict(meta, shape=name, S=s, D=d, impl="sdpa-cudnn", ms=round(cudnn_ms, 4), x_cudnn=1.0))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
