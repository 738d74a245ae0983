"""Fidelity of a sparse render to its dense reference: PSNR, SSIM and (where its weights are local) LPIPS.

All take uint8 frames ``[T, H, W, 3]`` of equal shape (the same prompt, seed and settings rendered with dense and
with sparse attention) and compare them frame by frame on [0, 1] pixel values.

    PSNR: ``10 · log10(1 / MSE)`` over all pixels of the video, in dB; ``inf`` for identical videos.
    SSIM: mean structural similarity of corresponding frames (Gaussian window 11, σ = 1.5; smaller windows for
        frames under 11 pixels); torchmetrics when installed, else scikit-image.
    LPIPS: mean learned perceptual distance (AlexNet), torchmetrics' implementation; it needs torchvision and the
        backbone weights in the torch hub cache (never downloaded here). `lpips_status` says why it is unavailable.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import numpy as np
import torch

from ..errors import UsageError

LPIPS_NETS = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"),
              "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}


def _pair(frames: np.ndarray, reference: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both videos as fp32 ``[T, 3, H, W]`` in [0, 1]."""
    if frames.shape != reference.shape:
        raise UsageError(f"cannot compare videos of shapes {tuple(frames.shape)} and {tuple(reference.shape)}")

    def convert(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)

    return convert(frames), convert(reference)


def psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of ``frames`` against ``reference`` (uint8 ``[T, H, W, 3]``); ``inf`` when identical."""
    x, y = _pair(frames, reference)
    mse = float((x.double() - y.double()).pow(2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _ssim_window(height: int, width: int) -> int:
    size = min(11, height, width)
    return size if size % 2 == 1 else size - 1


def ssim(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM over corresponding frames (1 = identical)."""
    x, y = _pair(frames, reference)
    window = _ssim_window(x.shape[-2], x.shape[-1])
    if window < 3:
        raise UsageError(f"SSIM needs frames of at least 3×3 pixels, got {x.shape[-2]}×{x.shape[-1]}")
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError:
        structural_similarity_index_measure = None
    if structural_similarity_index_measure is not None:
        return float(structural_similarity_index_measure(x, y, data_range=1.0, kernel_size=window, sigma=1.5))
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        raise UsageError("SSIM needs torchmetrics or scikit-image: pip install torchmetrics") from None
    scores = [structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=window, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
              for a, b in zip(frames, reference, strict=True)]
    return float(np.mean(scores))


def ssim_status() -> Optional[str]:
    """None when SSIM can be computed (torchmetrics or scikit-image importable); otherwise a one-line reason."""
    for module in ("torchmetrics.functional.image", "skimage.metrics"):
        try:
            __import__(module)
            return None
        except ImportError:
            continue
    return "SSIM skipped: it needs torchmetrics or scikit-image (pip install torchmetrics)"


def lpips_status(net: str = "alex") -> Optional[str]:
    """None when LPIPS can run offline; otherwise a one-line reason."""
    try:
        import torchvision
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # noqa: F401
    except Exception:
        return "LPIPS skipped: it needs torchvision and torchmetrics (pip install torchvision torchmetrics)"
    architecture, weights_enum = LPIPS_NETS[net]
    url = getattr(torchvision.models, weights_enum).DEFAULT.url
    checkpoint = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.isfile(checkpoint):
        return (f"LPIPS skipped: {architecture} weights are not in the torch hub cache (put "
                f"{os.path.basename(url)} in {os.path.dirname(checkpoint)} or set TORCH_HOME)")
    return None


def lpips_available(net: str = "alex") -> bool:
    return lpips_status(net) is None


_LPIPS_CACHE: dict = {}


def lpips(frames: np.ndarray, reference: np.ndarray, *, net: str = "alex") -> float:  # pragma: no cover - weights
    """Mean LPIPS distance (0 = identical) over corresponding frames.

    Raises:
        UsageError: LPIPS cannot run offline here (`lpips_status` gives the reason).
    """
    reason = lpips_status(net)
    if reason is not None:
        raise UsageError(reason)
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    if net not in _LPIPS_CACHE:
        _LPIPS_CACHE[net] = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True).eval()
    metric = _LPIPS_CACHE[net]
    x, y = _pair(frames, reference)
    metric.reset()
    with torch.no_grad():
        metric.update(x.clamp(0, 1), y.clamp(0, 1))
        return float(metric.compute())
