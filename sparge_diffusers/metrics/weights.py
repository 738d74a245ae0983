"""Where metric weights come from: a flag, else an environment variable, else a one-line `MissingWeightsError`.

Weights are never downloaded. A metric model is a local folder saved with ``save_pretrained`` (a transformers model
and its processor), or, for CLIP only, an open_clip folder (``open_clip_config.json``) when open_clip is importable.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional

from ..errors import MissingWeightsError

CLIP_ENV = "SPARGE_CLIP_MODEL"
VQA_ENV = "SPARGE_VQA_MODEL"
CLIP_FLAG = "--clip-model"
VQA_FLAG = "--vqa-model"


def resolve_model_dir(value: Optional[os.PathLike], *, env: str, flag: str, what: str) -> Path:
    """The local model folder for ``what``: ``value`` when given, else ``$env``.

    Raises:
        MissingWeightsError: neither is set, the folder does not exist, or it holds no model config; the message
            says which flag or environment variable to set.
    """
    raw = value if value not in (None, "") else os.environ.get(env)
    if not raw:
        raise MissingWeightsError(f"{what} needs a local model folder: pass {flag} PATH or set {env}=PATH")
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise MissingWeightsError(f"{what}: model folder {str(path)!r} does not exist; pass {flag} PATH or set {env}")
    if not (path / "config.json").is_file() and not (path / "open_clip_config.json").is_file():
        raise MissingWeightsError(f"{what}: {str(path)!r} is not a saved model folder (no config.json); "
                                  f"pass {flag} PATH or set {env}")
    return path


def read_architectures(path: Path) -> tuple:
    """``architectures`` of a transformers ``config.json`` (empty when absent or unreadable)."""
    try:
        return tuple(json.loads((path / "config.json").read_text()).get("architectures") or ())
    except (OSError, ValueError, AttributeError):
        return ()


def load_model_and_processor(folder: Path, model_class, processor_class, *, what: str, kind: str, flag: str,
                             env: str):
    """``(model, processor)`` from a local transformers folder, quietly; `MissingWeightsError` (one line) if not."""
    try:
        with warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")
            return model_class.from_pretrained(folder), processor_class.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MissingWeightsError(f"{what}: cannot load {kind} from {str(folder)!r} ({_first_line(error)}); "
                                  f"pass {flag} PATH or set {env}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _quiet_transformers:
    """Silence transformers' loading chatter (progress bars, the torchvision fallback notice) for one block."""

    def __enter__(self):
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:  # pragma: no cover
            self._restore = None
            return self
        self._hf = hf_logging
        self._level = hf_logging.get_verbosity()
        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        if getattr(self, "_hf", None) is not None:
            self._hf.set_verbosity(self._level)
            if self._bars:
                self._hf.enable_progress_bar()
        return False
