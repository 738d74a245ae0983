"""Calibrated error budgets: per layer and head drop masses that met ε on a few steps of a real pipeline.

``sparge-diffusers calibrate`` runs a few denoising steps with ``target_error=ε`` and every call measuring its
drop masses (`kernels.budget.budget_drop_mass`), and records, per attention layer and head, the smallest drop mass
that any call measured (the most cautious one). `SpargeConfig(calibration=path)` then uses those drop masses for
the layers in the file instead of measuring them in every call; a layer or a head count the file does not know is
measured as usual, and a file made for another ε is not used (logged once).

File format (JSON)::

    {"format": "sparge-calibration", "version": 1, "target_error": 0.05, "predictor": "lse",
     "block_m": 128, "block_n": 128, "calls": 96, "meta": {...},
     "layers": {"0": [0.0625, 0.125, ...], ...}}      # one drop mass per head; -1 keeps every block
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from ._logging import log_once

logger = logging.getLogger(__name__)

FORMAT = "sparge-calibration"
VERSION = 1


@dataclass(frozen=True)
class Calibration:
    """Per layer and head drop masses for one ε (see the module docstring)."""

    target_error: float
    layers: Dict[int, Tuple[float, ...]]
    predictor: str = "lse"
    block_m: int = 128
    block_n: int = 128
    calls: int = 0
    meta: dict = field(default_factory=dict)
    # (layer, device) -> fp32 [heads] on that device: one copy per layer, not a host-to-device copy per call
    _on_device: dict = field(default_factory=dict, compare=False, repr=False)

    def drop_mass(self, layer: int, target_error: float, batch: int, heads: int,
                  device="cpu") -> Optional[torch.Tensor]:
        """fp32 ``[batch, heads]`` drop masses of a layer on ``device``, or None when the file cannot answer (other
        ε, unknown layer, other head count)."""
        if not math.isclose(float(target_error), self.target_error, rel_tol=1e-6):
            log_once(logger, f"calibration-eps:{self.target_error}:{target_error}", "calibration made for "
                     "target_error=%g is not used with target_error=%g; measuring the budget instead",
                     self.target_error, target_error)
            return None
        values = self.layers.get(int(layer))
        if values is None or len(values) != heads:
            return None
        key = (int(layer), str(torch.device(device)))
        if key not in self._on_device:
            self._on_device[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return self._on_device[key].expand(batch, heads)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "target_error": self.target_error, "predictor": self.predictor,
                "block_m": self.block_m, "block_n": self.block_n, "calls": self.calls, "meta": self.meta,
                "layers": {str(k): list(v) for k, v in sorted(self.layers.items())}}

    def save(self, path: str) -> str:
        """Write the JSON atomically (a temporary name, then renamed)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w") as handle:
            json.dump(self.to_dict(), handle, indent=1)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: dict, source: str = "calibration") -> "Calibration":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{source} is not a sparge-diffusers calibration file (format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"{source} has calibration version {data.get('version')!r}; this version reads {VERSION}")
        try:
            layers = {int(k): tuple(float(x) for x in v) for k, v in data["layers"].items()}
            return cls(float(data["target_error"]), layers, data.get("predictor", "lse"), int(data.get("block_m", 128)),
                       int(data.get("block_n", 128)), int(data.get("calls", 0)), dict(data.get("meta", {})))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source} is a malformed calibration file ({error})") from None


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime: float) -> Calibration:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except OSError as error:
        raise ValueError(f"calibration file {path!r} cannot be read ({error.strerror})") from None
    except json.JSONDecodeError:
        raise ValueError(f"calibration file {path!r} is not JSON") from None
    return Calibration.from_dict(data, source=f"calibration file {path!r}")


def load_calibration(path: str) -> Calibration:
    """The calibration in ``path`` (cached until the file changes).

    Raises:
        ValueError: the file is missing, not JSON, or not a calibration of this version.
    """
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        raise ValueError(f"calibration file {path!r} does not exist") from None
    return _load(os.path.abspath(path), mtime)


class CalibrationRecorder:
    """Collects measured drop masses per layer: per head, the smallest over calls and batch entries."""

    def __init__(self) -> None:
        self._layers: Dict[int, torch.Tensor] = {}
        self.calls = 0

    def add(self, layer: int, drop_mass: torch.Tensor) -> None:
        """One call's drop masses ``[B, H]`` of ``layer`` (NaN entries, from other rules, are ignored)."""
        drop = drop_mass.detach().float().cpu()
        if drop.isnan().all():
            return
        per_head = drop.nan_to_num(float("inf")).amin(dim=0)  # [H]
        old = self._layers.get(int(layer))
        self._layers[int(layer)] = per_head if old is None or old.shape != per_head.shape else torch.minimum(old,
                                                                                                       per_head)
        self.calls += 1

    def __len__(self) -> int:
        return len(self._layers)

    def calibration(self, target_error: float, *, predictor: str, block_m: int, block_n: int,
                    meta: Optional[dict] = None) -> Calibration:
        layers = {layer: tuple(round(float(x), 8) for x in values) for layer, values in self._layers.items()}
        return Calibration(float(target_error), layers, predictor, block_m, block_n, self.calls, dict(meta or {}))


__all__ = ["Calibration", "CalibrationRecorder", "load_calibration"]
