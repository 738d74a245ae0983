"""Rendering and timing: one prompt through a `LoadedModel`, dense (``config=None``) or with Sparge attention.

`RenderSettings` holds the call settings shared by the dense and the sparse render of a prompt and checks them
against the model's family (step counts, frame counts its VAE renders exactly, image families take no frames).
`render` times the pipeline call (per step through ``callback_on_step_end``, synchronising CUDA), optionally after
an untimed warm-up call, and returns a `Render`: frames ``[T, H, W, 3]`` uint8, timings and, for sparse renders,
the measured sparsity of `sparge_diffusers.get_sparge_stats`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .config import SpargeConfig
from .errors import UsageError
from .media import to_uint8_frames
from .models import FAMILY_SPECS, LoadedModel

logger = logging.getLogger(__name__)

SPATIAL_MULTIPLE = 16  # VAE factor 8 × patch size 2, for all three families


@dataclass(frozen=True)
class RenderSettings:
    """Call settings shared by the dense and the sparse render of a prompt (None = the model's default)."""

    steps: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    frames: Optional[int] = None
    seed: int = 0
    guidance_scale: Optional[float] = None

    def validate(self, model: Optional[LoadedModel] = None, *, family: Optional[str] = None) -> "RenderSettings":
        """Check the settings (against ``model`` or ``family`` when given); returns ``self``.

        Raises:
            UsageError: naming the flag and what is allowed.
        """
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {self.steps}")
        if self.frames is not None and self.frames < 1:
            raise UsageError(f"--frames must be >= 1, got {self.frames}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < SPATIAL_MULTIPLE or value % SPATIAL_MULTIPLE):
                raise UsageError(f"--{name} must be a positive multiple of {SPATIAL_MULTIPLE}, got {value}")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise UsageError(f"--guidance-scale must be >= 0, got {self.guidance_scale}")
        family = model.family if model is not None else family
        if family is not None:
            spec = FAMILY_SPECS[family]
            if not spec.video and self.frames not in (None, 1):
                raise UsageError(f"{family} renders images: --frames does not apply")
            if self.steps is not None and self.steps < spec.min_steps:
                raise UsageError(f"--steps must be >= {spec.min_steps} for {family} ({spec.min_steps_reason}), "
                                 f"got {self.steps}")
        if model is not None and model.is_video and self.frames is not None:
            rendered = model.decoded_frames(self.frames)
            if rendered is not None and rendered != self.frames:
                allowed = model.allowed_frames()
                raise UsageError(f"--frames {self.frames}: the {model.family} VAE would render {rendered} frame(s); "
                                 f"frame counts it renders exactly: {', '.join(map(str, allowed))}, ...")
        return self

    def call_kwargs(self, model: LoadedModel) -> dict:
        kwargs = dict(model.default_call())
        for key, value in (("height", self.height), ("width", self.width), ("num_frames", self.frames),
                           ("num_inference_steps", self.steps), ("guidance_scale", self.guidance_scale)):
            if value is not None and not (key == "num_frames" and not model.is_video):
                kwargs[key] = value
        return kwargs

    def with_seed(self, seed: int) -> "RenderSettings":
        return RenderSettings(**{**self.to_dict(), "seed": seed})

    def to_dict(self) -> dict:
        return {"steps": self.steps, "height": self.height, "width": self.width, "frames": self.frames,
                "seed": self.seed, "guidance_scale": self.guidance_scale}


@dataclass
class Render:
    """One rendered prompt: frames ``[T, H, W, 3]`` uint8, wall time and (sparse renders) measured sparsity."""

    frames: np.ndarray
    seconds: float
    step_seconds: List[float]
    call_kwargs: dict
    config: Optional[SpargeConfig] = None
    sparsity: Optional[float] = None
    sparsity_by_step: Dict[int, float] = field(default_factory=dict)
    attention_ms: Optional[float] = None
    backends: Dict[str, int] = field(default_factory=dict)
    policies: Dict[str, int] = field(default_factory=dict)
    map_reuse_share: Optional[float] = None  # sparse calls that attended an earlier call's block map

    @property
    def mode(self) -> str:
        return "dense" if self.config is None else "sparse"

    def summary(self) -> dict:
        """JSON-ready view (no frames)."""
        out = {"mode": self.mode, "seconds": self.seconds, "step_seconds": self.step_seconds,
               "frames": int(self.frames.shape[0]), "height": int(self.frames.shape[1]),
               "width": int(self.frames.shape[2])}
        if self.config is not None:
            out.update({"sparsity": self.sparsity, "sparsity_by_step": self.sparsity_by_step,
                        "attention_ms": self.attention_ms, "backends": self.backends, "policies": self.policies,
                        "map_reuse_share": self.map_reuse_share})
        return out


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _raised_in(error: BaseException, function: str) -> bool:
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name == function:
            return True
        frame = frame.tb_next
    return False


def _call(model: LoadedModel, kwargs: dict, seed: int, step_times: Optional[list] = None) -> np.ndarray:
    def on_step_end(pipe, step, timestep, callback_kwargs):
        if step_times is not None:
            _sync(model.device)
            step_times.append(time.perf_counter())
        return callback_kwargs

    generator = torch.Generator(device="cpu").manual_seed(seed)
    try:
        with torch.no_grad():  # not inference_mode: hooks may read tensor version counters
            output = model.pipe(**kwargs, generator=generator, output_type="np", callback_on_step_end=on_step_end)
    except ValueError as error:
        if not _raised_in(error, "check_inputs"):  # only the pipeline's own input checks are usage errors
            raise
        text = str(error).strip().splitlines()[0] if str(error).strip() else "ValueError"
        raise UsageError(f"the {model.family} pipeline rejected the settings: {text}") from None
    media = output.frames if hasattr(output, "frames") else output.images
    return to_uint8_frames(np.asarray(media[0]))


def render(model: LoadedModel, prompt: str, settings: RenderSettings, config: Optional[SpargeConfig], *,
           warmup: bool = False, label: Optional[str] = None,
           prepare: Optional[Callable[[object], None]] = None) -> Render:
    """Render ``prompt`` dense (``config=None``) or with Sparge attention, timing the pipeline call.

    Args:
        warmup: first run an untimed call of ``config.dense_steps + 1`` steps (at most the full count, and at least
            the family's smallest step count), so one-time costs (kernel compilation, allocator growth, lazy imports)
            stay out of the measured time.
        label: progress bar description (bars are shown when the model was loaded with ``progress=True``).
        prepare: called with the pipeline once Sparge is applied (e.g. to attach a calibration recorder).
    """
    from . import apply_sparge, get_sparge_stats, remove_sparge
    from .integration import begin_sparge_call

    pipe = model.pipe
    kwargs = {**settings.call_kwargs(model), **model.prompt_kwargs(prompt)}
    if config is not None:
        apply_sparge(pipe, config, collect_stats=True)
        if prepare is not None:
            prepare(pipe)
    try:
        if warmup:
            steps = kwargs.get("num_inference_steps")
            warm_steps = max((config.dense_steps if config is not None else 0) + 1, model.spec.min_steps)
            pipe.set_progress_bar_config(disable=True)
            _call(model, {**kwargs, "num_inference_steps": min(warm_steps, steps) if steps else warm_steps},
                  settings.seed)
        pipe.set_progress_bar_config(disable=not model.progress, leave=False, desc=label or prompt[:40])
        if config is not None:
            begin_sparge_call(pipe, reset_stats=True)
        marks: List[float] = []
        _sync(model.device)
        start = time.perf_counter()
        frames = _call(model, kwargs, settings.seed, marks)
        _sync(model.device)
        seconds = time.perf_counter() - start
        step_seconds = [b - a for a, b in zip([start] + marks[:-1], marks)]
        result = Render(frames=frames, seconds=seconds, step_seconds=step_seconds,
                        call_kwargs={k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)},
                        config=config)
        if config is not None:
            stats = get_sparge_stats(pipe)
            rows = stats.rows
            result.sparsity = stats.mean_sparsity if rows else None
            result.sparsity_by_step = stats.by_step()
            result.attention_ms = stats.total_attention_ms
            share = stats.map_reuse_share if rows else float("nan")
            result.map_reuse_share = None if math.isnan(share) else share  # NaN: no sparse call (not JSON)
            for row in rows:
                result.backends[row["backend"]] = result.backends.get(row["backend"], 0) + 1
                result.policies[row["policy"]] = result.policies.get(row["policy"], 0) + 1
        return result
    finally:
        if config is not None:
            remove_sparge(pipe)


__all__ = ["Render", "RenderSettings", "SPATIAL_MULTIPLE", "render"]
