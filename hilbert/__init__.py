"""Generalized Hilbert token order for video (t, h, w) and image (h, w) latent grids of any size.

``hilbert_order(shape)`` lists row-major token indices along a generalized Hilbert ("gilbert") curve
(J. Červený, 2019), so that consecutive blocks of tokens are spatially compact, which the block-wise prediction of
SpargeAttn (Zhang et al., ICML 2025, arXiv 2502.18137) relies on. ``TokenPermutation`` applies and reverts that
order along one tensor dimension, leaving text tokens in place; ``block_locality`` measures block compactness.
"""

from .curve import hilbert_order
from .permutation import BlockLocality, TokenPermutation, block_locality

__all__ = ["BlockLocality", "TokenPermutation", "block_locality", "hilbert_order"]
