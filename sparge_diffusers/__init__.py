"""sparge-diffusers: training-free sparse + quantized attention for diffusers pipelines.

After SpargeAttn (Zhang et al., "SpargeAttn: Accurate Sparse Attention Accelerating Any Model Inference",
ICML 2025, arXiv 2502.18137).

Importing the package registers the built-in model families (`sparge_diffusers.pipelines`, which does not import
diffusers) and, when a supported diffusers is installed, the ``"sparge"`` attention backend with diffusers' attention
dispatch (`sparge_diffusers.backend`; skipped with one log line otherwise).
"""

from . import pipelines as _pipelines  # noqa: F401  (registers the built-in families)
from .attention import SpargeStats, sparge_attn
from .backend import register_sparge_backend
from .block_map import BlockMap
from .budget_guard import BudgetGuard
from .config import SpargeConfig
from .integration import (
    SpargeGeometry,
    SpargeProcessor,
    SpargeRunStats,
    apply_sparge,
    get_sparge_stats,
    remove_sparge,
)

register_sparge_backend()

__all__ = [
    "BlockMap",
    "BudgetGuard",
    "SpargeConfig",
    "SpargeGeometry",
    "SpargeProcessor",
    "SpargeRunStats",
    "SpargeStats",
    "apply_sparge",
    "get_sparge_stats",
    "register_sparge_backend",
    "remove_sparge",
    "sparge_attn",
]
__version__ = "0.1.0"
