"""Stage-2 block-sparse attention: `kernel` (Triton, `block_sparse_attn_fwd`) and `naive` (its ground truth,
and the dense fp32 oracle).

The Triton launchers load on first use (``<package>.<name>`` or ``<package>.kernel``), so importing the
references needs neither a GPU nor a working Triton.
"""

from __future__ import annotations

from .._lazy import kernel_attributes
from .naive import *  # noqa: F401,F403
from .naive import __all__ as _naive_all

__getattr__ = kernel_attributes(__name__)

__all__ = list(_naive_all)
