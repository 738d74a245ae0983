"""The embedded model: a small trained CogVideoX pipeline shipped with the package (``tiny-cogvideox/``).

Trained by `scripts/train_tiny.py` on the procedural clips of `sparge_diffusers.procedural` (coloured balls,
squares, rings and triangles rolling, falling, rising, bouncing, growing or orbiting); see the model card
``tiny-cogvideox/README.md``. Load it with::

    from diffusers import CogVideoXPipeline
    from sparge_diffusers.embedded import DEFAULT_CALL, embedded_model_path

    pipe = CogVideoXPipeline.from_pretrained(embedded_model_path())
    video = pipe("a red ball rolling", **DEFAULT_CALL, output_type="np").frames[0]  # [9, 128, 128, 3]

Two call sizes (both trained; CogVideoX 1.0 rotary positions interpolate over the 128 x 128 base grid):

=========  ==================  ===========================  =====================================
size       frames x H x W      tokens (video + text)        use
=========  ==================  ===========================  =====================================
default    9 x 128 x 128       3 x 16 x 16 = 768 + 16       CPU renders, the CLI default, CPU tests
large      17 x 256 x 256      5 x 32 x 32 = 5,120 + 16     GPU: sparsity and quality measurements
=========  ==================  ===========================  =====================================
"""

from __future__ import annotations

import os
from typing import Dict

MODEL_NAME = "tiny-cogvideox"
# T5 tokens per prompt (the pipeline's ``max_sequence_length``). Captions hold at most 7 tokens; padding them to the
# stock 226 without an attention mask buried them among ~220 identical pad tokens, and the first trained model
# ignored the text. Training pads to 16 (and to 226 on every 6th step, so a plain ``pipe(prompt)`` still works); the
# exported transformer config stores it as ``max_text_seq_length``, which the CLI passes as ``max_sequence_length``.
TEXT_LEN = 16

# keyword arguments of a CogVideoXPipeline call
DEFAULT_CALL: Dict[str, float] = {"height": 128, "width": 128, "num_frames": 9, "num_inference_steps": 20,
                                  "guidance_scale": 6.0, "max_sequence_length": TEXT_LEN}
LARGE_CALL: Dict[str, float] = {"height": 256, "width": 256, "num_frames": 17, "num_inference_steps": 20,
                                "guidance_scale": 6.0, "max_sequence_length": TEXT_LEN}


def embedded_model_path() -> str:
    """Folder of the shipped pipeline (``CogVideoXPipeline.from_pretrained`` loads it with no other argument)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), MODEL_NAME)
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(f"the embedded model is missing at {path} (train it with scripts/train_tiny.py)")
    return path


def default_call_kwargs(size: str = "default") -> Dict[str, float]:
    """A copy of the call keyword arguments of ``size``: ``"default"`` (CPU) or ``"large"`` (GPU, >= 4,096 tokens)."""
    if size not in ("default", "large"):
        raise ValueError(f"size must be 'default' or 'large', got {size!r}")
    return dict(DEFAULT_CALL if size == "default" else LARGE_CALL)


__all__ = ["DEFAULT_CALL", "LARGE_CALL", "MODEL_NAME", "TEXT_LEN", "default_call_kwargs", "embedded_model_path"]
