"""Lazy loading of an op folder's Triton launchers (``<op>/kernel.py``): importing the references needs neither a
GPU nor a working Triton."""

from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch


def triton_device_reason(device: torch.device, load: Callable[[], object]) -> Optional[str]:
    """None when Triton kernels can run on ``device`` (``load()`` imports them), else a short reason."""
    if device.type != "cuda":
        return f"tensors are on {device.type}, the Triton kernels need a CUDA device"
    if torch.version.hip is not None:
        return "ROCm is not supported by these kernels"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "the kernels need compute capability 8.0 (Ampere) or newer"
    try:
        load()
    except Exception as error:  # an unusable Triton install must not break attention
        return f"Triton failed to load: {error}"
    return None


def kernel_attributes(package: str):
    """A module ``__getattr__`` for the op folder ``package``: ``<package>.kernel`` and its names on first use."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        kernel = importlib.import_module(f"{package}.kernel")
        if name == "kernel":
            return kernel
        try:
            return getattr(kernel, name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
