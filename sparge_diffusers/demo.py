"""`sparge-diffusers demo`: dense versus sparse attention on a video-like input, no weights needed."""

from __future__ import annotations

import argparse
import time

import torch

from .attention import sparge_attn
from .config import SpargeConfig
from .errors import UsageError
from .kernels.reference import cosine_similarity, naive_attention, relative_l1
from .video_inputs import video_like_qkv


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="dense vs sparse attention on a video-like input (no weights)")
    parser.add_argument("--grid", type=int, nargs=3, default=(4, 16, 24), metavar=("T", "H", "W"),
                        help="latent grid in tokens, each >= 1 (default: 4 16 24)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads, >= 1 (default: 4)")
    parser.add_argument("--head-dim", type=int, default=64, choices=(64, 128))
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens before the video, >= 0 (default: 64)")
    parser.add_argument("--topk", type=float, nargs="+", default=(0.7, 0.5, 0.3),
                        help="fractions of key blocks kept, each in (0, 1] (default: 0.7 0.5 0.3)")
    parser.add_argument("--precision", default="int8-fp8", choices=("int8-fp8", "int8-fp16", "bf16"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.set_defaults(run=run)


def _timed(fn):
    """Result and milliseconds of ``fn``, after one untimed call (kernel compilation, caches)."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, (time.perf_counter() - start) * 1e3


MAX_ORACLE_BYTES = 8 << 30  # the fp32 oracle materialises [heads, S, S] scores


def check_args(args: argparse.Namespace) -> None:
    """One-line `UsageError` (naming the flag and what is allowed) for a demo that cannot run."""
    from .models import check_device

    if any(n < 1 for n in args.grid):
        raise UsageError(f"--grid takes three sizes T H W, each >= 1, got {' '.join(map(str, args.grid))}")
    if args.heads < 1:
        raise UsageError(f"--heads must be >= 1, got {args.heads}")
    if args.text_tokens < 0:
        raise UsageError(f"--text-tokens must be >= 0, got {args.text_tokens}")
    bad = [k for k in args.topk if not 0.0 < k <= 1.0]
    if bad:
        raise UsageError(f"--topk values must be in (0, 1], got {', '.join(f'{k:g}' for k in bad)}")
    check_device(args.device)
    tokens = args.text_tokens + args.grid[0] * args.grid[1] * args.grid[2]
    need = args.heads * tokens * tokens * 4
    if need > MAX_ORACLE_BYTES:
        raise UsageError(f"--grid {' '.join(map(str, args.grid))}: {tokens} tokens need {need / (1 << 30):.0f} GiB "
                         f"for the dense oracle; keep heads × tokens² × 4 bytes under {MAX_ORACLE_BYTES >> 30} GiB")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float16
    q, k, v = video_like_qkv(tuple(args.grid), args.heads, args.head_dim, text_tokens=args.text_tokens,
                             dtype=dtype, device=args.device)
    print(f"video-like input: grid {tuple(args.grid)} + {args.text_tokens} text tokens -> "
          f"q/k/v {tuple(q.shape)} {dtype} on {args.device}")
    oracle = naive_attention(q, k, v)
    dense, dense_ms = _timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    print(f"{'setting':<22}{'sparsity':>9}{'relL1':>9}{'cosine':>9}{'ms':>10}  backend")
    print(f"{'dense SDPA':<22}{0.0:>9.3f}{relative_l1(dense, oracle):>9.4f}"
          f"{cosine_similarity(dense, oracle):>9.4f}{dense_ms:>10.1f}  sdpa")
    for topk in args.topk:
        config = SpargeConfig(topk=topk, precision=args.precision, sim_threshold=None)
        (out, stats), ms = _timed(lambda: sparge_attn(q, k, v, config=config, return_stats=True,
                                                      keep_ranges=[(0, args.text_tokens)]))
        print(f"{f'topk={topk} {args.precision}':<22}{stats.mean_sparsity:>9.3f}{relative_l1(out, oracle):>9.4f}"
              f"{cosine_similarity(out, oracle):>9.4f}{ms:>10.1f}  {stats.backend}")
    return 0
