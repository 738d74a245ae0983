"""A toy Triton kernel for the launcher tests (Triton needs its kernels in a file)."""

import triton
import triton.language as tl


@triton.jit
def scaled_add_kernel(X, Y, OUT, n, alpha, BLOCK: tl.constexpr, NEGATE: tl.constexpr = False):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    x = tl.load(X + offs, mask=keep, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=keep, other=0.0).to(tl.float32)
    z = x + alpha * y
    if NEGATE:
        z = -z
    tl.store(OUT + offs, z.to(OUT.dtype.element_ty), mask=keep)
