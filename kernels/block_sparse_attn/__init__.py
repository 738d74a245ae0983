"""Stage-2 block-sparse attention: `kernel` (Triton, `block_sparse_attn_fwd`) and `naive` (its ground truth,
and the dense fp32 oracle).

The Triton launchers load on first use (``<package>.<name>`` or ``<package>.kernel``), so importing the
references needs neither a GPU nor a working Triton.
"""

from __future__ import annotations

from .naive import *  # noqa: F401,F403
from .naive import __all__ as _naive_all


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib

    kernel = importlib.import_module(f"{__name__}.kernel")
    if name == "kernel":
        return kernel
    try:
        return getattr(kernel, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


__all__ = list(_naive_all)
