"""The eager sparse call with Triton's own launch against the cached launcher (`kernels._launch`), in one process,
interleaved three times: do_bench median (back-to-back calls: host-bound where the host is slower than the GPU) and
host time per call of 20 unsynchronized calls, best of three, with cuDNN SDPA at the same shape. GPU only.

    python scripts/bench_launch.py > benchmarks/results/logs/launch_ab_<gpu>.log
"""
import time

import torch
import triton.testing

from sparge_diffusers import SpargeConfig, sparge_attn
from sparge_diffusers.finite import FiniteCheck
from sparge_diffusers.kernels import _launch


def host_us(fn, n=20):
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / n * 1e6


def main():
    for (b, h, s, d) in [(1, 24, 4608, 128), (2, 30, 17776, 64)]:
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
        cud = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                                      return_mode="median")
        for name, cfg in [("lse0.5", SpargeConfig(topk=0.5, predictor="lse", sim_threshold=None, speed_rule="sparse")),
                          ("full", SpargeConfig(topk=1.0, predictor="full", sim_threshold=None, speed_rule="sparse")),
                          ("mixed-eps", SpargeConfig(sim_threshold=None, speed_rule="sparse"))]:
            chk = FiniteCheck()
            def call():
                out = sparge_attn(q, k, v, config=cfg, finite_check=chk)
                if len(chk) >= 64:
                    chk.reset()
                return out
            res = {True: [], False: []}
            for rep in range(3):
                for on in (False, True):
                    _launch._STATE["enabled"] = on
                    call(); call()
                    eager = triton.testing.do_bench(call, warmup=10, rep=60, return_mode="median")
                    res[on].append((eager, host_us(call)))
            def f(xs):
                return f"eager {min(x[0] for x in xs):.4f} ms host {min(x[1] for x in xs):.0f} us"
            print(f"{(b, h, s, d)} {name}: cudnn {cud:.4f} | triton launch: {f(res[False])} | cached: {f(res[True])}",
                  flush=True)
    print("cache entries", _launch.cache_size())


if __name__ == "__main__":
    main()
