"""INT8 / FP8 quantization and the predictors' block statistics: `kernel` (Triton, `prepare_fwd`) and
`naive` (its pure-PyTorch ground truth).

The Triton launchers load on first use (``<package>.<name>`` or ``<package>.kernel``), so importing the
references needs neither a GPU nor a working Triton.
"""

from __future__ import annotations

from .._lazy import kernel_attributes
from .naive import *  # noqa: F401,F403
from .naive import __all__ as _naive_all

__getattr__ = kernel_attributes(__name__)

__all__ = list(_naive_all)
