"""Eager launches of the op folders' Triton and Gluon kernels with less host time.

``fn[grid](*args, **kwargs)`` on a ``triton.jit`` function binds every argument, specializes each one (type, 16-byte
alignment, integer divisibility) and hashes the result before it finds the compiled kernel. A sparse call makes 6-12
launches, and at Flux.1-dev's size (0.37 ms of kernels) the eager call is bound by its host time.

Measured on an H200 (`scripts/bench_launch.py`, one process, Triton's launch and this one interleaved): host time per
sparse call at Flux.1-dev's size 417 -> 358 µs with a full mask and 992 -> 899 µs with the default predictor; the eager
call 0.487 -> 0.436 ms at top-k 0.5 (cuDNN 0.405 ms). That is 10-14% of the call's host time; most of the rest is the
call's own Python and PyTorch ops (`benchmarks/results/logs/call_profile_session13_h200.log`). At the video lengths
the call is GPU-bound and the times do not change.

`launch` does the same launch through a cache of compiled kernels keyed more strictly than Triton's own cache: the
exact value of every integer, bool, string and None argument, the dtype and 16-byte alignment of every tensor, the
shape, strides, block shape and layout of every TMA descriptor, every keyword option and the device. A key holds at
least what Triton specializes on, so the kernel found for a key is the one Triton would have chosen. On a miss (and
wherever the fast path does not apply) the launch is Triton's own ``fn[grid](...)``, whose compiled kernel is then
kept; a hit calls the compiled kernel's ``__getitem__(grid)`` runner with the bound arguments in signature order.

The fast path is used only with the Triton versions whose calling convention of a compiled kernel was checked
(`CHECKED_TRITON`), never under ``TRITON_INTERPRET=1``, and never with an argument type it cannot key (the launch is
then Triton's own). ``SPARGE_FAST_LAUNCH=0`` turns it off. Entries are never evicted: their number is bounded by the
shapes a process attends (one per kernel, shape and option set; at most `MAX_ENTRIES`, after which launches take
Triton's path again).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch

# Triton minor versions whose JITFunction.run returns the CompiledKernel and passes every signature argument, constexprs
# included, to its runner: 3.6 (run on the project's H200) and 3.9 (CI's, read from its source)
CHECKED_TRITON = ((3, 6), (3, 9))
MAX_ENTRIES = 4096

_UNKEYED = object()


class _Entry:
    __slots__ = ("kernel", "tail")

    def __init__(self, kernel, tail: Tuple[Tuple[str, Any, bool], ...]) -> None:
        self.kernel = kernel
        self.tail = tail  # (name, default, given as keyword) of the signature arguments after the positional ones


_CACHE: Dict[tuple, _Entry] = {}
_STATE: Dict[str, Any] = {}


def fast_launch_enabled() -> bool:
    """Whether `launch` may take the cached path in this process (Triton version, interpreter, environment)."""
    enabled = _STATE.get("enabled")
    if enabled is None:
        enabled = _STATE["enabled"] = _decide()
    return enabled


def _decide() -> bool:
    if os.environ.get("SPARGE_FAST_LAUNCH", "1") == "0" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return False
    try:
        import triton
    except Exception:  # no usable Triton: nothing launches anyway
        return False
    parts = triton.__version__.split(".")
    try:
        version = (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        return False
    return version in CHECKED_TRITON


def arg_key(value) -> Any:
    """The part of the cache key for one argument, or `_UNKEYED` for a type the cache does not key."""
    if isinstance(value, torch.Tensor):
        return (value.dtype, value.data_ptr() % 16 == 0)
    if value is None or isinstance(value, (bool, int, str)):
        return (type(value), value)
    if isinstance(value, float):
        return float  # Triton does not specialize on a float's value
    if type(value).__name__ == "TensorDescriptor":
        base = value.base
        return ("desc", base.dtype, base.data_ptr() % 16 == 0, tuple(value.shape), tuple(value.strides),
                tuple(value.block_shape), value.layout, value.padding)
    if type(value).__name__ == "dtype":  # a triton.language dtype passed as a constexpr
        return ("tl", str(value))
    return _UNKEYED


def launch(fn, grid: Tuple[int, ...], *args, **kwargs) -> None:
    """``fn[grid](*args, **kwargs)`` with the host cost of a cached launch (module docstring)."""
    if not fast_launch_enabled():
        fn[grid](*args, **kwargs)
        return
    key = _key(fn, args, kwargs)
    if key is None:
        fn[grid](*args, **kwargs)
        return
    entry = _CACHE.get(key)
    if entry is not None:
        values = list(args)
        for name, default, given in entry.tail:
            values.append(kwargs[name] if given else default)
        # the compiled kernel's runner reads three grid dimensions
        entry.kernel[grid if len(grid) == 3 else (*grid, 1, 1)[:3]](*values)
        return
    kernel = fn[grid](*args, **kwargs)
    if hasattr(kernel, "result"):  # an asynchronously compiled kernel
        kernel = kernel.result()
    entry = _entry(fn, kernel, len(args), kwargs)
    if entry is not None and len(_CACHE) < MAX_ENTRIES:
        _CACHE[key] = entry


def _key(fn, args, kwargs) -> Optional[tuple]:
    # the hot path of every launch: ints and tensors inline, the rest through `arg_key`
    parts = [id(fn), torch.cuda.current_device()]
    append = parts.append
    for value in args:
        kind = type(value)
        if kind is int:
            append(value)  # an int never equals the tuples, types and None that stand for the other kinds
        elif kind is torch.Tensor:
            append((value.dtype, value.data_ptr() % 16 == 0))
        else:
            part = arg_key(value)
            if part is _UNKEYED:
                return None
            append(part)
    # keywords in call order: a call site passes them in one order, and their names are in the key, so a site with
    # another order only makes its own (correct) entry
    for name, value in kwargs.items():
        part = value if type(value) is int else arg_key(value)
        if part is _UNKEYED:
            return None
        append(name)
        append(part)
    return tuple(parts)


def _entry(fn, kernel, positional: int, kwargs) -> Optional[_Entry]:
    """How a hit rebuilds the signature-ordered arguments, or None when ``fn`` / ``kernel`` look unfamiliar."""
    params = getattr(fn, "params", None)
    if params is None or not hasattr(kernel, "__getitem__") or not hasattr(kernel, "function"):
        return None
    tail = []
    for param in params[positional:]:
        name = param.name
        if name in kwargs:
            tail.append((name, None, True))
        elif getattr(param, "has_default", False):
            tail.append((name, param.default, False))
        else:
            return None
    return _Entry(kernel, tuple(tail))


def clear_cache() -> None:
    """Forget every cached kernel (tests; the next launches take Triton's path once)."""
    _CACHE.clear()
    _STATE.clear()


def cache_size() -> int:
    return len(_CACHE)


__all__ = ["CHECKED_TRITON", "arg_key", "cache_size", "clear_cache", "fast_launch_enabled", "launch"]
