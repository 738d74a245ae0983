"""sparge-diffusers: training-free sparse + quantized attention for diffusers pipelines.

After SpargeAttn (Zhang et al., "SpargeAttn: Accurate Sparse Attention Accelerating Any Model Inference",
ICML 2025, arXiv 2502.18137).
"""

from .attention import SpargeStats, sparge_attn
from .block_map import BlockMap
from .config import SpargeConfig
from .integration import (
    SpargeGeometry,
    SpargeProcessor,
    SpargeRunStats,
    apply_sparge,
    get_sparge_stats,
    remove_sparge,
)

__all__ = [
    "BlockMap",
    "SpargeConfig",
    "SpargeGeometry",
    "SpargeProcessor",
    "SpargeRunStats",
    "SpargeStats",
    "apply_sparge",
    "get_sparge_stats",
    "remove_sparge",
    "sparge_attn",
]
__version__ = "0.1.0"
