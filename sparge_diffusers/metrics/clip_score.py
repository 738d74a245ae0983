"""CLIPScore (Hessel et al., 2021) through torchmetrics, with a local CLIP loaded by transformers or open_clip.

``CLIPScore(I, C) = max(100 · cos(E_I, E_C), 0)`` per frame, averaged over the frames of a video.

torchmetrics 1.9 calls ``model.get_image_features`` / ``get_text_features`` and divides their results by their norms;
with transformers >= 5 those methods return a ``BaseModelOutputWithPooling``, not a tensor. `LocalClip` wraps the
model so both return plain projected-embedding tensors, and torchmetrics receives it through the callable form of
``model_name_or_path`` (no hub name is ever resolved, so nothing is downloaded).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..errors import MissingWeightsError, UsageError
from .weights import CLIP_ENV, CLIP_FLAG, load_model_and_processor, read_architectures, resolve_model_dir

logger = logging.getLogger(__name__)


def _feature_tensor(output) -> torch.Tensor:
    """Projected embeddings from whatever a ``get_*_features`` returned (tensor, or a model output)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot read CLIP features from a {type(output).__name__}")


class LocalClip(torch.nn.Module):
    """A CLIP whose ``get_image_features`` / ``get_text_features`` return ``[N, D]`` tensors, plus its processor.

    Attributes:
        model: the wrapped transformers ``CLIPModel`` (or open_clip model).
        processor: callable ``processor(images=..., text=..., return_tensors="pt", padding=True)`` → dict with
            ``pixel_values`` and/or ``input_ids`` / ``attention_mask`` (what torchmetrics calls).
        source: ``"transformers"`` or ``"open_clip"``.
        path: the folder it was loaded from.
    """

    def __init__(self, model: torch.nn.Module, processor, *, source: str = "transformers", path: str = "") -> None:
        super().__init__()
        self.model = model.eval()
        self.processor = processor
        self.source = source
        self.path = path
        if getattr(model, "config", None) is not None:
            self.config = model.config  # torchmetrics reads config.text_config.max_position_embeddings

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.source == "open_clip":
            return self.model.encode_image(pixel_values)
        return _feature_tensor(self.model.get_image_features(pixel_values=pixel_values, **kwargs))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                          **kwargs) -> torch.Tensor:
        if self.source == "open_clip":
            return self.model.encode_text(input_ids)
        return _feature_tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask,
                                                            **kwargs))

    @torch.no_grad()
    def image_embeddings(self, frames: np.ndarray, batch_size: int = 16) -> torch.Tensor:
        """L2-normalized image embeddings ``[T, D]`` of uint8 frames ``[T, H, W, 3]``."""
        chunks = []
        for start in range(0, len(frames), batch_size):
            chunk = frames[start:start + batch_size]
            images = [torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1) for f in chunk]
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
            chunks.append(self.get_image_features(pixels).float())
        features = torch.cat(chunks)
        return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalized text embeddings ``[N, D]``."""
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True)
        features = self.get_text_features(tokens["input_ids"].to(self.device),
                                          tokens.get("attention_mask", None)).float()
        return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def load_clip(path: Optional[Union[str, os.PathLike]] = None, *, device: Union[str, torch.device] = "cpu") -> LocalClip:
    """Load a local CLIP folder (``path``, else ``$SPARGE_CLIP_MODEL``).

    A transformers folder (``config.json`` of a ``CLIPModel``, plus its processor files) is loaded with transformers;
    an open_clip folder (``open_clip_config.json``) with open_clip, when it is importable.

    Raises:
        MissingWeightsError: no folder given, or the folder cannot be loaded (one-line message).
    """
    folder = resolve_model_dir(path, env=CLIP_ENV, flag=CLIP_FLAG, what="CLIPScore")
    if (folder / "open_clip_config.json").is_file() and not (folder / "config.json").is_file():
        return _load_open_clip(folder, device)
    architectures = read_architectures(folder)
    if architectures and not any("CLIP" in name for name in architectures):
        raise MissingWeightsError(f"CLIPScore: {str(folder)!r} holds a {architectures[0]}, not a CLIP model; "
                                  f"pass {CLIP_FLAG} PATH or set {CLIP_ENV}")
    from transformers import CLIPModel, CLIPProcessor

    model, processor = load_model_and_processor(folder, CLIPModel, CLIPProcessor, what="CLIPScore",
                                                kind="a CLIP model and processor", flag=CLIP_FLAG, env=CLIP_ENV)
    return LocalClip(model.to(device), processor, source="transformers", path=str(folder))


def _load_open_clip(folder: Path, device) -> LocalClip:  # pragma: no cover - open_clip needs torchvision
    try:
        import open_clip
    except Exception:
        raise MissingWeightsError(f"CLIPScore: {str(folder)!r} is an open_clip folder but open_clip cannot be "
                                  "imported (it needs torchvision); pass a transformers CLIP folder with "
                                  f"{CLIP_FLAG}") from None
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")

    def processor(images=None, text=None, **_):
        from PIL import Image

        out = {}
        if images is not None:
            pil = [Image.fromarray(i.permute(1, 2, 0).numpy()) if isinstance(i, torch.Tensor) else i for i in images]
            out["pixel_values"] = torch.stack([preprocess(image) for image in pil])
        if text is not None:
            out["input_ids"] = tokenizer(list(text))
            out["attention_mask"] = torch.ones_like(out["input_ids"])
        return out

    return LocalClip(model.to(device), processor, source="open_clip", path=str(folder))


def clip_score(frames: np.ndarray, prompt: str, clip: LocalClip) -> float:
    """Mean CLIPScore (0–100) of the frames ``[T, H, W, 3]`` uint8 against ``prompt``, via torchmetrics.

    Raises:
        UsageError: torchmetrics is not installed.
    """
    try:
        from torchmetrics.multimodal.clip_score import CLIPScore
    except ImportError:
        raise UsageError("CLIPScore needs torchmetrics: pip install torchmetrics") from None
    metric = CLIPScore(model_name_or_path=lambda: (clip, clip.processor))
    images = [torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).to(clip.device) for frame in frames]
    with torch.no_grad():
        metric.update(images, [prompt] * len(images))
        return float(metric.compute())
