"""Compile the Gluon kernel of `kernel_sm90` for sm90 on a machine without a GPU and write its PTX.

Run by `test_sm90_route.py` in a fresh process (outside Triton's interpreter):
    python tests/kernels/sm90_compile.py HEAD_DIM STAGES,CONSUMER_REGS,PRODUCER_REGS OUT.ptx
"""

import sys
import types

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver


class Sm90Target:
    """A stand-in for Triton's active driver that names an sm90 target, so that ``warmup`` compiles without a GPU."""

    utils = types.SimpleNamespace()

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def is_active(self):
        return True


def main(head_dim: int, schedule: str, out_path: str) -> None:
    from triton.experimental.gluon import language as gl

    from sparge_diffusers.kernels.block_sparse_attn import kernel_sm90 as sm90

    stages, consumer_regs, producer_regs = (int(x) for x in schedule.split(","))
    seq, pad = 1000, 1024
    q = torch.zeros(2 * pad, head_dim, dtype=torch.int8)
    v = torch.zeros(2 * head_dim, pad, dtype=torch.float8_e4m3fn)

    def desc(t, block, dtype):
        return sm90.TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, dtype))

    out = torch.zeros(1, 2, seq, head_dim, dtype=torch.bfloat16)
    args = (desc(q, [64, head_dim], gl.int8), desc(q, [128, head_dim], gl.int8),
            desc(v, [head_dim, 128], gl.float8e4nv), torch.zeros(16), torch.zeros(16), torch.zeros(2 * head_dim),
            torch.zeros(64, dtype=torch.int32), torch.zeros(8, dtype=torch.int32), out,
            *out.stride(), 2, seq, seq, 8, 8, pad, pad)
    driver.set_active(Sm90Target())
    compiled = sm90._sm90_ws_kernel.warmup(*args, grid=(1,), BLOCK_M=128, BLOCK_N=128, D=head_dim, STAGES=stages,
                                           CONSUMER_REGS=consumer_regs, PRODUCER_REGS=producer_regs, num_warps=4)
    with open(out_path, "w") as handle:
        handle.write(compiled.asm["ptx"])


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
    sys.stdout.flush()
    # skip interpreter teardown: Triton's bindings report leaked objects at exit
    import os

    os._exit(0)
