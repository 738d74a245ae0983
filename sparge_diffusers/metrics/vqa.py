"""VQA score: text alignment as the probability that a visual question answering model answers "yes".

After VQAScore (Lin et al., "Evaluating Text-to-Visual Generation with Image-to-Text Generation", 2024): the prompt
becomes a question (`DEFAULT_QUESTION`), and the score of an image is P("yes" | image, question) under a local
generative VQA model (transformers ``BlipForQuestionAnswering``); a video scores the mean over up to ``max_frames``
evenly spaced frames. Scores lie in [0, 1].

The probability is computed by teacher forcing: the answer's tokens are fed to the answer decoder after its start
token and their conditional probabilities multiplied, so multi-token answers are scored exactly.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

import numpy as np
import torch

from .._logging import log_once
from ..errors import MissingWeightsError
from .weights import VQA_ENV, VQA_FLAG, load_model_and_processor, read_architectures, resolve_model_dir

DEFAULT_QUESTION = 'Does this figure show "{prompt}"? Please answer yes or no.'
SUPPORTED_ARCHITECTURES = ("BlipForQuestionAnswering",)
UNBOUNDED_LENGTH = 1_000_000  # tokenizers without a limit report model_max_length as ~1e30

logger = logging.getLogger(__name__)


def vqa_question(prompt: str, template: str = DEFAULT_QUESTION) -> str:
    """The yes/no question asked about an image generated from ``prompt``."""
    return template.format(prompt=prompt.strip().rstrip("."))


class LocalVqa:
    """A local BLIP VQA model and its processor, scoring P(answer | image, question)."""

    def __init__(self, model: torch.nn.Module, processor, *, path: str = "") -> None:
        self.model = model.eval()
        self.processor = processor
        self.path = path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_question_tokens(self) -> int:
        """The longest question (in tokens, special tokens included) the model takes: the smaller of the
        tokenizer's ``model_max_length`` and the text model's position embeddings."""
        limits = [getattr(self.processor.tokenizer, "model_max_length", None),
                  getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", None)]
        limits = [int(limit) for limit in limits if limit and limit < UNBOUNDED_LENGTH]
        return min(limits) if limits else 512

    def question_tokens(self, question: str) -> int:
        return len(self.processor.tokenizer(question, add_special_tokens=True)["input_ids"])

    def fit_question(self, prompt: str, template: str = DEFAULT_QUESTION) -> str:
        """`vqa_question` of ``prompt``, with the prompt cut (at a word boundary where one is near) so that the
        whole question, template included, fits `max_question_tokens`."""
        question = vqa_question(prompt, template)
        limit = self.max_question_tokens
        if self.question_tokens(question) <= limit:
            return question
        text = prompt.strip()
        low, high = 0, len(text)  # the longest prefix whose question fits
        while low < high:
            middle = (low + high + 1) // 2
            if self.question_tokens(vqa_question(text[:middle], template)) <= limit:
                low = middle
            else:
                high = middle - 1
        prefix = text[:low]
        if low < len(text) and not text[low].isspace() and " " in prefix.strip():
            prefix = prefix[:prefix.rstrip().rfind(" ")]  # do not end on half a word
        log_once(logger, "vqa-truncated", "VQA score: prompts longer than the VQA model's %d question tokens are cut "
                 "(first: %d of %d characters kept)", limit, len(prefix.rstrip()), len(text))
        return vqa_question(prefix.rstrip(), template)

    @torch.no_grad()
    def answer_probability(self, frames: np.ndarray, question: str, answer: str = "yes") -> torch.Tensor:
        """P(``answer``) per frame, fp32 ``[T]``, for uint8 frames ``[T, H, W, 3]``."""
        model = self.model
        images = [torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1) for frame in frames]
        inputs = self.processor(images=images, text=[question] * len(images), return_tensors="pt", padding=True,
                                truncation=True, max_length=self.max_question_tokens)
        pixel_values = inputs["pixel_values"].to(self.device, dtype=next(model.parameters()).dtype)
        input_ids = inputs["input_ids"].to(self.device)
        attention_mask = inputs.get("attention_mask")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)

        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        question_embeds = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                             encoder_hidden_states=image_embeds,
                                             encoder_attention_mask=image_mask).last_hidden_state
        answer_ids = self.processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
        answer_ids = answer_ids.to(self.device).expand(len(images), -1)
        start = torch.full((len(images), 1), model.decoder_start_token_id, dtype=torch.long, device=self.device)
        decoder_ids = torch.cat([start, answer_ids], dim=1)
        logits = model.text_decoder(input_ids=decoder_ids, encoder_hidden_states=question_embeds,
                                    encoder_attention_mask=attention_mask).logits.float()
        log_probs = logits[:, :-1].log_softmax(dim=-1)  # position i predicts token i + 1
        token_log_probs = log_probs.gather(-1, answer_ids.unsqueeze(-1)).squeeze(-1)  # [T, answer tokens]
        return token_log_probs.sum(dim=-1).exp()


def load_vqa(path: Optional[Union[str, os.PathLike]] = None, *, device: Union[str, torch.device] = "cpu") -> LocalVqa:
    """Load a local BLIP VQA folder (``path``, else ``$SPARGE_VQA_MODEL``) saved with ``save_pretrained``.

    Raises:
        MissingWeightsError: no folder given, not a supported VQA model, or it cannot be loaded (one line).
    """
    folder = resolve_model_dir(path, env=VQA_ENV, flag=VQA_FLAG, what="VQA score")
    architectures = read_architectures(folder)
    if not any(name in SUPPORTED_ARCHITECTURES for name in architectures):
        found = architectures[0] if architectures else "no architecture"
        raise MissingWeightsError(f"VQA score: {str(folder)!r} holds {found}; supported: "
                                  f"{', '.join(SUPPORTED_ARCHITECTURES)}; pass {VQA_FLAG} PATH or set {VQA_ENV}")
    from transformers import BlipForQuestionAnswering, BlipProcessor

    model, processor = load_model_and_processor(folder, BlipForQuestionAnswering, BlipProcessor, what="VQA score",
                                                kind="a BLIP VQA model and processor", flag=VQA_FLAG, env=VQA_ENV)
    return LocalVqa(model.to(device), processor, path=str(folder))


def sample_frames(frames: np.ndarray, max_frames: int) -> np.ndarray:
    """Up to ``max_frames`` evenly spaced frames (first and last included)."""
    if max_frames <= 0 or len(frames) <= max_frames:
        return frames
    index = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
    return frames[index]


def vqa_score(frames: np.ndarray, prompt: str, vqa: LocalVqa, *, max_frames: int = 8,
              template: str = DEFAULT_QUESTION, answer: str = "yes") -> float:
    """Mean P("yes") over up to ``max_frames`` frames for the question built from ``prompt``; in [0, 1].

    A prompt too long for the model's questions is cut to fit (`LocalVqa.fit_question`)."""
    chosen = sample_frames(frames, max_frames)
    return float(vqa.answer_probability(chosen, vqa.fit_question(prompt, template), answer).mean())
