"""Configs and constructors of the embedded tiny CogVideoX pipeline (`sparge_diffusers.embedded`).

One place holds the architecture, so that `scripts/train_tiny.py` (which trains it) and the tests (which build
random-weight copies of it) agree on every size:

- tokenizer: word level over `procedural.vocabulary()` (``<pad>`` = 0, ``</s>`` appended as T5 does), saved with
  the `tokenizers` library and loaded as a `transformers.PreTrainedTokenizerFast`;
- text encoder: a 2-layer `T5EncoderModel` (d_model 128);
- VAE: `AutoencoderKLCogVideoX`, 4x spatial and 4x temporal compression to 8 latent channels (CogVideoX's
  own 8x / 4x / 16 at a smaller scale);
- transformer: `CogVideoXTransformer3DModel` with rotary positions (CogVideoX 1.0 RoPE, so a render at another size
  interpolates positions over the 128 x 128 base grid), patch 2, 4 heads of 64;
- scheduler: `CogVideoXDPMScheduler` with the CogVideoX-5b settings (v-prediction, zero terminal SNR, trailing
  spacing), which is also what the training loss uses.
"""

from __future__ import annotations

import logging
import os
from typing import Dict

import torch

from ..procedural import vocabulary
from . import TEXT_LEN

logger = logging.getLogger(__name__)

STOCK_TEXT_LEN = 226  # CogVideoXPipeline's default max_sequence_length (a plain pipe(prompt) call pads to it)
TEXT_DIM = 128

TOKENIZER_SPECIALS = ("<pad>", "</s>", "<unk>")

TEXT_ENCODER_CONFIG = dict(
    vocab_size=64, d_model=TEXT_DIM, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
    relative_attention_num_buckets=16, relative_attention_max_distance=32, dropout_rate=0.0,
    feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
    decoder_start_token_id=0,
)

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 3,
    up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(32, 64, 64), latent_channels=8,
    layers_per_block=1, norm_num_groups=8, temporal_compression_ratio=4, sample_height=128, sample_width=128,
    scaling_factor=1.0,
)

TRANSFORMER_CONFIG = dict(
    num_attention_heads=4, attention_head_dim=64, in_channels=8, out_channels=8, time_embed_dim=128,
    text_embed_dim=TEXT_DIM, num_layers=6, sample_width=32, sample_height=32, sample_frames=9, patch_size=2,
    patch_size_t=None, temporal_compression_ratio=4, max_text_seq_length=TEXT_LEN,
    use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
    rescale_betas_zero_snr=True, timestep_spacing="trailing", snr_shift_scale=1.0,
)


def build_tokenizer():
    """Word-level tokenizer over the procedural vocabulary, as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(TOKENIZER_SPECIALS) + vocabulary()
    if len(words) > TEXT_ENCODER_CONFIG["vocab_size"]:
        raise ValueError(f"vocabulary of {len(words)} words exceeds the text encoder's vocab_size")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=TEXT_LEN, padding_side="right")


def build_text_encoder():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**TEXT_ENCODER_CONFIG))


def build_vae():
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(**VAE_CONFIG)


def build_transformer():
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(**TRANSFORMER_CONFIG)


def build_scheduler():
    from diffusers import CogVideoXDPMScheduler

    return CogVideoXDPMScheduler(**SCHEDULER_CONFIG)


def build_pipeline(seed: int = 0, *, vae=None, transformer=None, text_encoder=None):
    """A `CogVideoXPipeline` of the embedded architecture (random weights from ``seed`` where not given)."""
    from diffusers import CogVideoXPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = text_encoder if text_encoder is not None else build_text_encoder()
        vae = vae if vae is not None else build_vae()
        transformer = transformer if transformer is not None else build_transformer()
    return CogVideoXPipeline(tokenizer=build_tokenizer(), text_encoder=text_encoder.eval(), vae=vae.eval(),
                             transformer=transformer.eval(), scheduler=build_scheduler())


def save_pipeline(pipe, path: str, *, dtype: torch.dtype = torch.float16) -> Dict[str, int]:
    """Save ``pipe`` as a diffusers folder with its weights in ``dtype`` (safetensors); returns bytes per file."""
    pipe = pipe.to(dtype=dtype)  # noqa: F841 - to() moves in place and returns the pipeline
    pipe.save_pretrained(path, safe_serialization=True)
    # transformers writes dtype into the config; keep float32 loading the default for the CPU
    sizes = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            sizes[os.path.relpath(full, path)] = os.path.getsize(full)
    return sizes


def parameter_counts(pipe) -> Dict[str, int]:
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters())
            for name in ("transformer", "vae", "text_encoder")}


__all__ = ["SCHEDULER_CONFIG", "TEXT_ENCODER_CONFIG", "STOCK_TEXT_LEN", "TEXT_LEN", "TRANSFORMER_CONFIG", "VAE_CONFIG",
           "build_pipeline", "build_scheduler", "build_text_encoder", "build_tokenizer", "build_transformer",
           "build_vae", "parameter_counts", "save_pipeline"]
