"""Where metric weights come from: a flag, else an environment variable, else a one-line `MissingWeightsError`.

Weights are never downloaded. A metric model is a local folder saved with ``save_pretrained`` (a transformers model
and its processor), or, for CLIP only, an open_clip folder (``open_clip_config.json``) when open_clip is importable.
"""

from __future__ import annotations

import json
import os
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
