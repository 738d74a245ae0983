"""Glue between `sparge_attn` and the Triton kernels: availability check and the fused launch sequence."""

from __future__ import annotations

from typing import Optional

import torch


def triton_unavailable_reason(q: torch.Tensor) -> Optional[str]:
    """None when the Triton path can run on ``q``'s device, else a short reason."""
    return "the Triton kernels are not part of this build yet"
