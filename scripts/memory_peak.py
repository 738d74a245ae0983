"""Peak live memory of one transformer forward, stock attention against Sparge, on the CPU (issue 15's peak-memory
target), and what is alive at the peak.

A TorchDispatchMode counts the bytes of every tensor storage created during the forward while it is alive (weights
and inputs made before the forward are not counted), so the peak is the step's transient memory, the part Sparge can
add to. ``--fused`` runs Sparge's fused Triton path under ``TRITON_INTERPRET=1`` (its INT8 / FP8 buffers, block
logits and kept-block lists, as on a GPU); without it the CPU reference path runs, whose dense intermediates are not
what a GPU allocates.

The default model is a small Wan 2.1 with the real model's proportions (head dim 128, FFN 5.8x the width, 1,024
video tokens), so that attention and FFN tensors compare as in the full-size model.

    python scripts/memory_peak.py --fused                       # Wan, stock vs Sparge topk 0.5, Hilbert order
    python scripts/memory_peak.py --fused --family hunyuan_video
"""

from __future__ import annotations

import argparse
import os
import sys
import torch

from sparge_diffusers.live_memory import LiveBytes


def wan_like(layers: int = 2, ffn_ratio: float = 2.7):
    """A small Wan 2.1 with the full model's proportions: head dim 128, FFN ``ffn_ratio`` x the width (14B: 2.7,
    1.3B: 5.83)."""
    from diffusers import WanTransformer3DModel

    heads = 2
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=32, ffn_dim=int(heads * 128 * ffn_ratio), num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=256,
    ).eval()


def build(family: str, layers: int, ffn_ratio: float, dtype: torch.dtype):
    from sparge_diffusers.pipelines.tiny import TINY_GRIDS, tiny_transformer, transformer_inputs

    torch.manual_seed(0)
    if family == "wan":
        model = wan_like(layers, ffn_ratio).to(dtype)
        grid = (4, 16, 16)
    else:
        model = tiny_transformer(family, num_layers=layers, dtype=dtype)
        grid = TINY_GRIDS[family]
    return model, transformer_inputs(model, grid)


def measure(model, inputs) -> LiveBytes:
    tracker = LiveBytes()
    with torch.no_grad(), tracker:
        model(**inputs)
    return tracker


def force_fused() -> None:
    """Run the fused Triton launch sequence (interpreted) for CPU tensors instead of the reference path."""
    from sparge_diffusers import attention

    original = attention._choose_backend

    def choose(q, k, config):
        backend = original(q, k, config)
        return "triton" if backend == "reference" else backend

    attention._choose_backend = choose


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="wan")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--topk", type=float, default=0.5)
    parser.add_argument("--ffn-ratio", type=float, default=2.7, help="Wan FFN width / model width (1.3B: 5.83)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="bf16 sizes the buffers as on a GPU (the interpreter's bf16 values are garbage; sizes "
                             "are right)")
    parser.add_argument("--fused", action="store_true", help="the fused Triton path under TRITON_INTERPRET=1")
    args = parser.parse_args(argv)
    if args.fused:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    from sparge_diffusers import SpargeConfig, apply_sparge, remove_sparge

    if args.fused:
        force_fused()
    model, inputs = build(args.family, args.layers, args.ffn_ratio, getattr(torch, args.dtype))
    measure(model, inputs)  # warm caches (RoPE tables, Hilbert curves) outside the measured forwards
    stock = measure(model, inputs)
    config = SpargeConfig(topk=args.topk, predictor="lse", sim_threshold=None, block_m=64, block_n=64,
                          speed_rule="sparse")
    apply_sparge(model, config)
    measure(model, inputs)
    sparge = measure(model, inputs)
    remove_sparge(model)
    for name, tracker in (("stock", stock), ("sparge", sparge)):
        print(f"{name}: peak live {tracker.peak / 2 ** 20:.2f} MiB; largest live at the peak:")
        for op, shape, dtype, nbytes in tracker.at_peak:
            print(f"    {nbytes / 2 ** 20:8.3f} MiB  {op:<28s} {dtype:<14s} {list(shape)}")
    print(f"sparge / stock peak = {sparge.peak / stock.peak:.4f} (+{(sparge.peak - stock.peak) / 2 ** 20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
