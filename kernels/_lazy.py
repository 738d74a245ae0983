"""Lazy loading of an op folder's Triton launchers (``<op>/kernel.py``): importing the references needs neither a
GPU nor a working Triton."""

from __future__ import annotations

import importlib


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
