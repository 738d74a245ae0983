"""Context-parallel step time of Wan 2.1 14B (720p, 81 frames: 75,600 tokens) on 1 and N GPUs, stock against Sparge.

One transformer forward (one denoising step of one CFG branch) with random weights in bf16, the real 14B config.
Each launch runs stock attention (diffusers' native SDPA backend; with N > 1 under the model's own ``_cp_plan``,
Ulysses) and then Sparge (the ``"sparge"`` backend; with N > 1 under the Sparge plan of
`sparge_diffusers.parallel`, whose Hilbert order is applied before the split). Rows: step time (median of
``--repeats``, all ranks synchronised), speed-up over stock in the same launch, peak memory of every GPU, measured
sparsity. A launch with N > 1 reads the 1-GPU launch's files of the same ``--out`` when present and adds the
speed-up over 1 GPU, the scaling efficiency ``t_1 / (N t_N)`` and the relL1 of the N-GPU output against the 1-GPU
output of the same setting::

    torchrun --nproc-per-node 1 scripts/bench_cp.py --out benchmarks/results/cp_h200
    torchrun --nproc-per-node 2 scripts/bench_cp.py --out benchmarks/results/cp_h200
    python scripts/bench_cp.py --tiny --out /tmp/cp                       # CPU, one process
    torchrun --nproc-per-node 2 scripts/bench_cp.py --tiny --out /tmp/cp  # CPU, gloo (catches typos, no timing)

Files: ``{out}-w{N}.csv`` (one row per setting), ``{out}-w{N}-{setting}.pt`` (rank 0's output, fp32, for the
comparison) and ``{out}.md`` (every ``-w*.csv`` present). ``--layers`` builds fewer blocks (``scaled_step_ms`` =
measured x full / layers). Random weights make Q/K blocks incoherent: θ is off and top-k is the selection rule.
Targets (issue 17): 2-GPU Sparge >= 1.8x the 1-GPU Sparge step; 2-GPU Sparge >= 1.6x 2-GPU stock; the 2-GPU output
equal to the 1-GPU output within the kernel's own error.
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib.util
import os
import re
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from sparge_diffusers import SpargeConfig, apply_sparge, get_sparge_stats, remove_sparge
from sparge_diffusers.kernels.reference import relative_l1
from sparge_diffusers.parallel import enable_context_parallel

FIELDS = ["gpu", "torch", "diffusers", "model", "world_size", "layers", "full_layers", "tokens", "setting",
          "step_ms", "scaled_step_ms", "speedup_vs_stock", "speedup_vs_1gpu", "scaling_efficiency", "peak_gib_max",
          "peak_gib_per_rank", "sparsity", "rel_l1_vs_1gpu", "note"]
MODELS = ("wan21-14b-720p", "wan21-1.3b-480p", "tiny-wan")


def _bench_e2e():
    """scripts/bench_e2e.py (its model builders), loaded from beside this file."""
    path = Path(__file__).resolve().parent / "bench_e2e.py"
    spec = importlib.util.spec_from_file_location("bench_e2e", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slug(setting: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", setting).strip("-")


def parse_setting(text: str) -> SpargeConfig:
    """``PREDICTOR:TOPK`` (as bench_e2e's ``--settings``), Hilbert order, θ off."""
    predictor, _, topk = text.partition(":")
    if predictor not in ("lse", "sparge") or not topk:
        raise ValueError(f"--settings entries must be PREDICTOR:TOPK with PREDICTOR lse or sparge, got {text!r}")
    return SpargeConfig(topk=float(topk), predictor=predictor, sim_threshold=None, reorder="hilbert")


class World:
    """This process in the launch (torchrun's RANK / WORLD_SIZE / LOCAL_RANK; one process without torchrun)."""

    def __init__(self, device_type: str) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local = int(os.environ.get("LOCAL_RANK", str(self.rank)))
        self.cuda = device_type == "cuda"
        self.device = f"cuda:{self.local}" if self.cuda else "cpu"
        if self.cuda:
            torch.cuda.set_device(self.local)
        if self.size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.cuda else "gloo", rank=self.rank, world_size=self.size)

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value) -> list:
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def build(bench, name: str, layers: Optional[int], world: World):
    """(model, inputs, tokens, full_layers) on this rank's device, the same weights and inputs on every rank."""
    bench.DEVICE = world.device  # its builders make their inputs there
    torch.manual_seed(0)
    with torch.device(world.device):
        if name == "tiny-wan":
            model, make_inputs, tokens, full = bench.tiny("wan", layers)
        else:
            model, make_inputs, tokens, full = bench.wan("14b" if "14b" in name else "1.3b", layers)
    dtype = torch.bfloat16 if world.cuda else torch.float32
    model = model.to(dtype).eval()
    gen = torch.Generator(device=world.device).manual_seed(0)
    kwargs = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and k != "timestep" else v)
              for k, v in make_inputs(1, gen).items()}
    return model, kwargs, tokens, full


def step_ms(model, kwargs, world: World, repeats: int):
    """(median ms of one forward over all ranks, the last output)."""
    times, out = [], None
    with torch.no_grad():
        for _ in range(repeats):
            world.barrier()
            world.sync()
            start = time.perf_counter()
            out = model(**kwargs, return_dict=False)[0]
            world.sync()
            world.barrier()
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2], out


def peak_reset(world: World) -> None:
    if world.cuda:
        torch.cuda.reset_peak_memory_stats()


def peak_gib(world: World) -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if world.cuda else 0.0


def measure(name, setting, config, args, bench, world: World, meta: dict) -> Dict:
    model, kwargs, tokens, full = build(bench, name, args.layers, world)
    if world.size > 1:  # stock: the model's own plan; Sparge: the Sparge plan (token order before the split)
        enable_context_parallel(model, "ulysses", world.size, plan=model._cp_plan if config is None else None)
    if config is not None:
        apply_sparge(model, config, collect_stats=True)
    peak_reset(world)
    with torch.no_grad():
        model(**kwargs, return_dict=False)  # warm-up (kernel compilation, allocator)
    if config is not None:
        get_sparge_stats(model).reset()
    ms, out = step_ms(model, kwargs, world, args.repeats)
    peaks = world.gather(round(peak_gib(world), 3))
    layers = args.layers if args.layers else full
    row = dict(meta, model=name, world_size=world.size, layers=layers, full_layers=full, tokens=tokens,
               setting=setting, step_ms=round(ms, 3), scaled_step_ms=round(ms * full / layers, 3),
               peak_gib_max=max(peaks), peak_gib_per_rank=" ".join(str(p) for p in peaks))
    if config is not None:
        stats = get_sparge_stats(model)
        row["sparsity"] = round(float(stats.mean_sparsity), 4) if stats.rows else None
        remove_sparge(model)
    if world.rank == 0:
        torch.save(out.float().cpu(), f"{args.out}-w{world.size}-{slug(setting)}.pt")
    del model, out
    if world.cuda:
        torch.cuda.empty_cache()
    return row


def compare_to_one_gpu(rows: List[Dict], out_prefix: str, world_size: int) -> None:
    """Speed-up over 1 GPU, scaling efficiency and relL1 against the 1-GPU launch of the same ``--out``."""
    one_path = f"{out_prefix}-w1.csv"
    if world_size == 1 or not os.path.isfile(one_path):
        return
    one = {r["setting"]: r for r in csv.DictReader(open(one_path))}
    for row in rows:
        ref = one.get(row["setting"])
        if ref is None or not ref.get("step_ms"):
            continue
        t1, tn = float(ref["step_ms"]), float(row["step_ms"])
        row["speedup_vs_1gpu"] = round(t1 / tn, 3)
        row["scaling_efficiency"] = round(t1 / (world_size * tn), 3)
        ref_out = f"{out_prefix}-w1-{slug(row['setting'])}.pt"
        if os.path.isfile(ref_out):
            mine = torch.load(f"{out_prefix}-w{world_size}-{slug(row['setting'])}.pt")
            row["rel_l1_vs_1gpu"] = float(relative_l1(mine, torch.load(ref_out)))


def write(rows: List[Dict], out_prefix: str, world_size: int) -> None:
    with open(f"{out_prefix}-w{world_size}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    every = []
    for path in sorted(glob.glob(f"{glob.escape(out_prefix)}-w*.csv")):
        every += list(csv.DictReader(open(path)))
    head = every[0] if every else {}
    keys = ("model", "world_size", "layers", "tokens", "setting", "step_ms", "scaled_step_ms", "speedup_vs_stock",
            "speedup_vs_1gpu", "scaling_efficiency", "peak_gib_per_rank", "sparsity", "rel_l1_vs_1gpu")
    lines = [f"# Context-parallel transformer step on {head.get('gpu', '?')}", "",
             f"torch {head.get('torch')}, diffusers {head.get('diffusers')}; random weights, real config, one "
             "forward, median of repeats; Ulysses over the world size; speed-up vs stock = same launch, vs 1 GPU = "
             "the 1-GPU launch of the same setting; scaling efficiency = t1 / (N tN).", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in every]
    Path(f"{out_prefix}.md").write_text("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/cp")
    parser.add_argument("--model", choices=MODELS, default=None, help="default: wan21-14b-720p (tiny-wan with --tiny)")
    parser.add_argument("--settings", nargs="+", default=["lse:0.5"], help="PREDICTOR:TOPK, Hilbert order")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=None, help="transformer blocks (default: all)")
    parser.add_argument("--tiny", action="store_true", help="CPU, the tiny Wan config (gloo under torchrun)")
    args = parser.parse_args(argv)
    configs = [(s, parse_setting(s)) for s in args.settings]
    name = args.model or ("tiny-wan" if args.tiny else "wan21-14b-720p")
    world = World("cpu" if args.tiny else "cuda")
    try:
        import diffusers

        bench = _bench_e2e()
        meta = {"gpu": torch.cuda.get_device_name(world.local) if world.cuda else "cpu", "torch": torch.__version__,
                "diffusers": diffusers.__version__}
        if world.rank == 0:
            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        rows = [measure(name, "stock", None, args, bench, world, meta)]
        for setting, config in configs:
            rows.append(measure(name, setting, config, args, bench, world, meta))
        for row in rows[1:]:
            row["speedup_vs_stock"] = round(rows[0]["step_ms"] / row["step_ms"], 3)
        if world.rank == 0:
            compare_to_one_gpu(rows, args.out, world.size)
            write(rows, args.out, world.size)
            for row in rows:
                print({k: row.get(k) for k in ("setting", "world_size", "step_ms", "speedup_vs_stock",
                                               "speedup_vs_1gpu", "peak_gib_per_rank", "rel_l1_vs_1gpu")},
                      flush=True)
    finally:
        world.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
