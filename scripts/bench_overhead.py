"""Eager overhead of one `sparge_attn` call: kernel launches, caching-allocator allocations and host syncs per call,
host (CPU) time per call, and eager against CUDA-graph replay time, at the Flux, CogVideoX, Mochi and Wan shapes, with
cuDNN SDPA in the same run. One CSV row per (shape, setting, finite-check mode).

Counts (CUDA only):
    ``kernels``: GPU kernels per call (torch.profiler CUDA activity, memcpy / memset excluded);
    ``launch_calls``: host launch API calls per call (cudaLaunchKernel*, cuLaunchKernel*: Triton launches through the
        driver API);
    ``syncs``: host synchronizations per call: cudaStreamSynchronize / cudaDeviceSynchronize / cudaEventSynchronize
        calls plus device-to-host copies seen by the profiler; ``sync_warnings``: the same counted by
        ``torch.cuda.set_sync_debug_mode("warn")``;
    ``allocs``: caching-allocator allocations per call (``torch.cuda.memory_stats()["allocation.all.allocated"]``
        delta), ``cuda_mallocs`` (``segment.all.allocated`` delta, should be 0 once warm), ``call_peak_mib``: peak
        memory of the call above what was allocated before it;
    ``aten_ops`` / ``aten_factories``: PyTorch ops (and tensor-creating ops) per call seen by a TorchDispatchMode;
        counted on any device (Triton launches are not aten ops).
Times: ``eager_ms`` (triton.testing.do_bench median: back-to-back calls, so host overhead shows when the GPU waits for
the host), ``graph_ms`` (the same call captured once in a CUDA graph and replayed), ``host_us`` (wall time per call of
a loop of calls without synchronization: the host cost alone), ``cudnn_ms``.

Finite-check modes: ``immediate`` (`sparge_attn` alone, the default: one host read per call), ``deferred`` (a
`FiniteCheck` queued on the device, as the diffusers integration does; read once per forward, not per call), ``off``.
Graph capture skips the check in every mode.

    python scripts/bench_overhead.py --out benchmarks/results/overhead_h200.csv      # GPU, ~3-5 min
    python scripts/bench_overhead.py --tiny --out /tmp/overhead_tiny.csv             # CPU dry run: counts need CUDA
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sparge_diffusers import SpargeConfig, sparge_attn
from sparge_diffusers.finite import FiniteCheck
from sparge_diffusers.run_stats import capture_cuda_graph

# name: (batch, heads, seq_len, head_dim)
SHAPES = {
    "floor-1k": (1, 24, 1024, 128),
    "flux-dev-1024": (1, 24, 4608, 128),
    "cogvideox-2b": (2, 30, 17776, 64),
    "wan21-1.3b-480p": (1, 12, 32760, 128),
    "mochi-163f": (2, 24, 44776, 128),
}
TINY_SHAPES = {"tiny-64": (1, 2, 130, 64), "tiny-128": (1, 1, 97, 128)}
SETTINGS = {
    "lse topk=0.5": dict(topk=0.5, predictor="lse"),
    "full (topk=1)": dict(topk=1.0, predictor="full"),
}
FINITE_MODES = ("immediate", "deferred", "off")
FIELDS = ["gpu", "torch", "triton", "shape", "batch", "heads", "seq_len", "head_dim", "setting", "finite_check",
          "cudnn_ms", "eager_ms", "graph_ms", "eager_over_graph", "x_cudnn_eager", "x_cudnn_graph", "host_us",
          "kernels", "launch_calls", "syncs", "sync_warnings", "allocs", "cuda_mallocs", "call_peak_mib", "aten_ops",
          "aten_factories", "note"]
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
FACTORIES = ("empty", "zeros", "ones", "full", "arange", "new_empty", "new_zeros", "new_full", "scalar_tensor",
             "randn", "rand", "empty_like", "zeros_like", "ones_like", "full_like", "empty_strided", "lift_fresh")


class OpCounter(TorchDispatchMode):
    """Counts the aten ops (and the tensor-creating ones) that run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.factories = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func.__name__.split(".")[0] in FACTORIES:
            self.factories += 1
        return func(*args, **(kwargs or {}))


def make_call(q, k, v, setting: str, finite: str) -> Callable[[], torch.Tensor]:
    config = SpargeConfig(sim_threshold=None, check_finite=finite != "off", speed_rule="sparse", **SETTINGS[setting])
    check = FiniteCheck() if finite == "deferred" else None

    def call():
        out = sparge_attn(q, k, v, config=config, finite_check=check)
        if check is not None and len(check) >= 64:
            check.reset()  # a forward of 64 layers would be read once here; the read itself is not timed
        return out

    return call


def aten_counts(fn, calls: int = 2):
    counter = OpCounter()
    with counter:
        for _ in range(calls):
            fn()
    return counter.ops / calls, counter.factories / calls


def host_us(fn, calls: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    sync()
    return elapsed / calls * 1e6


def cuda_counts(fn, calls: int = 5) -> Dict[str, float]:
    """Per-call kernels, launch API calls, syncs (profiler), sync warnings, allocations (memory_stats)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    after = torch.cuda.memory_stats()
    allocs = (after["allocation.all.allocated"] - before["allocation.all.allocated"]) / calls
    mallocs = (after["segment.all.allocated"] - before["segment.all.allocated"]) / calls
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()  # counted below as one sync: subtracted
    kernels = launches = syncs = 0
    for event in prof.events():
        name = event.name
        if event.device_type == DeviceType.CUDA:
            if "Memcpy DtoH" in name or "Memcpy Device -> Host" in name:
                syncs += 1
            elif not name.startswith(("Memcpy", "Memset")):
                kernels += 1
        elif name in LAUNCH_CALLS:
            launches += 1
        elif name in SYNC_CALLS:
            syncs += 1
    syncs -= 1
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(calls):
                fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sync_warnings = sum("synchroniz" in str(w.message) for w in caught)
    return dict(kernels=kernels / calls, launch_calls=launches / calls, syncs=max(0, syncs) / calls,
                sync_warnings=sync_warnings / calls, allocs=allocs, cuda_mallocs=mallocs,
                call_peak_mib=round(peak, 2))


def graph_ms(fn, bench) -> Optional[float]:
    """Median replay time of ``fn`` captured once in a CUDA graph (None when capture fails)."""
    try:
        graph = capture_cuda_graph(fn)
    except Exception as error:  # a host read inside the call makes capture fail: report, do not stop
        print(f"  graph capture failed: {type(error).__name__}: {str(error)[:160]}", flush=True)
        return None
    return bench(graph.replay)


def run(args) -> List[dict]:
    cuda = not args.tiny
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    known = {**SHAPES, **TINY_SHAPES}
    names = args.shapes or (list(TINY_SHAPES) if args.tiny else list(SHAPES))
    shapes = {name: known[name] for name in names}
    meta = dict(gpu=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__, triton=_triton_version())
    if cuda:
        import triton.testing
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def bench(fn):
            return triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")
    else:
        print("--tiny: CPU dry run of every code path; kernel, launch, sync and allocation counts and the graph / "
              "cuDNN times need CUDA and are left empty", flush=True)

        args.host_calls = min(args.host_calls, 2)

        def bench(fn):
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3

    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for shape, (batch, heads, seq, head_dim) in shapes.items():
        q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=gen, device=device, dtype=dtype)
                   for _ in range(3))
        if cuda:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                cudnn = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        else:
            cudnn = None
        for setting in args.settings:
            for finite in args.finite:
                fn = make_call(q, k, v, setting, finite)
                fn()  # compile / warm the caches
                row = dict(meta, shape=shape, batch=batch, heads=heads, seq_len=seq, head_dim=head_dim,
                           setting=setting, finite_check=finite, note="")
                eager = bench(fn)
                row["eager_ms"] = round(eager, 4)
                row["host_us"] = round(host_us(fn, args.host_calls), 1)
                row["aten_ops"], row["aten_factories"] = aten_counts(fn)
                if cuda:
                    row.update(cuda_counts(fn))
                    replay = graph_ms(fn, bench)
                    row["cudnn_ms"] = round(cudnn, 4)
                    row["x_cudnn_eager"] = round(cudnn / eager, 3)
                    if replay is not None:
                        row["graph_ms"] = round(replay, 4)
                        row["eager_over_graph"] = round(eager / replay, 3)
                        row["x_cudnn_graph"] = round(cudnn / replay, 3)
                    else:
                        row["note"] = "graph capture failed"
                else:
                    row["note"] = "CPU reference path; counts need CUDA"
                rows.append(row)
                print(" ".join(f"{key}={row.get(key, '')}" for key in (
                    "shape", "setting", "finite_check", "cudnn_ms", "eager_ms", "graph_ms", "eager_over_graph",
                    "x_cudnn_eager", "host_us", "kernels", "launch_calls", "syncs", "sync_warnings", "allocs",
                    "aten_ops")), flush=True)
        del q, k, v
        if cuda:
            torch.cuda.empty_cache()
    return rows


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="CSV path")
    parser.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES) + list(TINY_SHAPES),
                        help="default: every full shape (GPU) or every tiny shape (--tiny)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--finite", nargs="+", default=list(FINITE_MODES), choices=FINITE_MODES)
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetitions, ms")
    parser.add_argument("--host-calls", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="CPU dry run at tiny shapes (counts need CUDA)")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --tiny for the CPU dry run")
    rows = run(args)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
