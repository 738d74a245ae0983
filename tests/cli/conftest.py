"""Fixtures for the CLI and metric tests: tiny random CLIP and BLIP VQA models built from configs, saved to local
folders (exercising the "load a local model folder" path), and a runner for the console command."""

from __future__ import annotations

import string
import warnings

import pytest
import torch


def _quiet():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="transformers")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A 2-layer random CLIP (32-pixel images, byte-level character tokenizer) saved with save_pretrained."""
    _quiet()
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):  # every byte, alone and as a word end: no merges
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, **layers),
        vision_config=dict(image_size=32, patch_size=8, **layers),
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vqa_dir(tmp_path_factory):
    """A 2-layer random BLIP VQA model (WordPiece tokenizer with "yes"/"no" words) saved with save_pretrained."""
    _quiet()
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "yes", "no", "does", "this", "figure", "show",
             "please", "answer", "or", "a", "red", "ball", "rolling", '"', "?", "."]
    words += list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    vocab = {word: index for index, word in enumerate(words)}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), encoder_hidden_size=32, max_position_embeddings=128,
                         bos_token_id=vocab["[DEC]"], sep_token_id=vocab["[SEP]"], pad_token_id=0, **layers),
        vision_config=dict(image_size=32, patch_size=8, **layers),
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-blip-vqa")
    BlipForQuestionAnswering(config).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture
def frames():
    """A smooth 6-frame 40×48 RGB video (a bright square moving right) as uint8 [T, H, W, 3]."""
    import numpy as np

    video = np.zeros((6, 40, 48, 3), dtype=np.uint8)
    video[..., 2] = 60
    for t in range(6):
        video[t, 12:28, 4 + 5 * t:20 + 5 * t, 0] = 220
    return video


@pytest.fixture
def cli(capsys):
    """Run ``sparge-diffusers ARGS...`` in-process; returns ``(exit code, stdout, stderr)``."""
    from sparge_diffusers.cli import main

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


# small, fast settings for the embedded tiny CogVideoX (64×64, 9 frames = 3 latent frames, 1 step)
FAST = ("--steps", "1", "--height", "64", "--width", "64", "--frames", "9", "--no-progress")


def files_under(folder):
    """Every file below ``folder`` (hidden ones included), as sorted relative paths."""
    from pathlib import Path

    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


@pytest.fixture
def list_files():
    return files_under


@pytest.fixture
def fast():
    return FAST


@pytest.fixture(scope="session")
def tiny_cogvideox_dir(tmp_path_factory):
    """The embedded tiny CogVideoX saved with save_pretrained (no text encoder or tokenizer: saved as null)."""
    from sparge_diffusers.pipelines.tiny import tiny_pipeline

    pipe, _ = tiny_pipeline("cogvideox")
    folder = tmp_path_factory.mktemp("tiny-cogvideox-folder")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_cogvideox_t5_dir(tmp_path_factory):
    """A complete CogVideoXPipeline folder: the tiny CogVideoX with its own 1-layer T5 text encoder (d_model 32 =
    the transformer's text_embed_dim) and a word-level tokenizer saved by `tokenizers`."""
    _quiet()
    from diffusers import CogVideoXPipeline
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from sparge_diffusers.pipelines.tiny import tiny_pipeline

    words = ["<pad>", "</s>", "<unk>", "a", "red", "blue", "ball", "cube", "rolling", "bouncing"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=16)
    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    tiny, _ = tiny_pipeline("cogvideox")
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=tiny.vae, transformer=tiny.transformer,
                             scheduler=tiny.scheduler)
    folder = tmp_path_factory.mktemp("tiny-cogvideox-t5")
    pipe.save_pretrained(folder)
    return folder
