"""Where a Sparge step's time goes: one Flux.1-dev transformer step (random weights, full width, few blocks) profiled
stock against Sparge, eager and under ``torch.compile``, in one run on the GPU.

For each row it prints the step's wall time, the summed CUDA kernel time, the number of kernels and the kernels whose
summed time differs most from stock, so that a Sparge row slower than stock shows where it loses (host time: wall
minus kernel time; device time: the kernel list).

    python scripts/profile_step.py --double 2 --single 4 --settings lse:0.5 dense --out /tmp/profile.txt
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import torch

from sparge_diffusers import SpargeConfig, apply_sparge, remove_sparge


def flux(double: int, single: int):
    """bench_e2e's Flux.1-dev 1024² transformer with fewer blocks, in bf16 on the GPU, and its batch-1 inputs."""
    import bench_e2e  # scripts/ is on the path when this script runs

    with torch.device("cuda"):
        model, make_inputs, _ = bench_e2e.flux(double, single)
    inputs = make_inputs(1, torch.Generator(device="cuda").manual_seed(0))
    return model.bfloat16().eval(), bench_e2e.cast_inputs(inputs, torch.bfloat16)


def config_of(setting: str) -> SpargeConfig:
    if setting == "dense":  # every call to dense SDPA through Sparge's own fallback
        return SpargeConfig(topk=1.0, precision="bf16", check_finite=False, sim_threshold=None)
    predictor, value, *rule = setting.split(":")  # PREDICTOR:TOPK[:SPEED_RULE], speed rule "sparse" by default
    return SpargeConfig(topk=float(value), predictor=predictor, check_finite=False, sim_threshold=None,
                        reorder="hilbert", speed_rule=rule[0] if rule else "sparse")


def wall_ms(fn, repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def kernels(fn) -> collections.Counter:
    """Summed CUDA time (µs) per kernel name over one call, and the call count under key ``(name, 'n')``."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    totals = collections.Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name[:90]] += event.device_time
            totals[(event.name[:90], "n")] += 1
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=4)
    parser.add_argument("--settings", nargs="+", default=["dense", "lse:0.5"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, kwargs = flux(args.double, args.single)
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    results = {}
    with torch.no_grad():
        for mode in args.modes:
            for setting in ["stock"] + args.settings:
                if setting != "stock":
                    apply_sparge(model, config_of(setting))
                torch._dynamo.reset()
                runner = torch.compile(model) if mode == "compiled" else model
                call = lambda: runner(**kwargs, return_dict=False)  # noqa: E731
                ms = wall_ms(call)
                totals = kernels(call)
                if setting != "stock":
                    remove_sparge(model)
                names = [k for k in totals if not isinstance(k, tuple)]
                device_ms = sum(totals[k] for k in names) / 1e3
                count = sum(totals[(k, "n")] for k in names)
                results[(mode, setting)] = totals
                print(f"{mode:8s} {setting:10s} wall {ms:8.3f} ms  kernels {device_ms:8.3f} ms  launches {count}",
                      flush=True)
                if setting == "stock":
                    continue
                stock = results[(mode, "stock")]
                keys = {k for k in list(totals) + list(stock) if not isinstance(k, tuple)}
                diffs = sorted(keys, key=lambda k: -abs(totals[k] - stock[k]))[:args.top]
                for k in diffs:
                    print(f"    {(totals[k] - stock[k]) / 1e3:+8.3f} ms  n {totals[(k, 'n')]:4d} vs "
                          f"{stock[(k, 'n')]:4d}  {k}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
