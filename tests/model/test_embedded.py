"""The shipped pipeline folder: loads with no extra argument, renders on the CPU, and capture.py sees its attention."""

import json
import os

import numpy as np
import pytest
import torch

from sparge_diffusers.embedded import DEFAULT_CALL, LARGE_CALL, TEXT_LEN, default_call_kwargs, embedded_model_path

SMALL = {"height": 64, "width": 64, "num_frames": 9}  # 3 x 8 x 8 = 192 video tokens + 226 text


@pytest.fixture(scope="module")
def pipe():
    from diffusers import CogVideoXPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    pipe = CogVideoXPipeline.from_pretrained(embedded_model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_folder_is_complete_and_small():
    path = embedded_model_path()
    with open(os.path.join(path, "model_index.json")) as f:
        index = json.load(f)
    assert index["_class_name"] == "CogVideoXPipeline"
    assert {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    total = sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(path) for name in files)
    assert total <= 40 * 1024 * 1024
    assert default_call_kwargs() == DEFAULT_CALL and default_call_kwargs("large") == LARGE_CALL
    with pytest.raises(ValueError, match="size"):
        default_call_kwargs("huge")


def test_loads_with_no_arguments(pipe):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel

    assert isinstance(pipe.transformer, CogVideoXTransformer3DModel)
    assert pipe.transformer.config.use_rotary_positional_embeddings
    assert isinstance(pipe.vae, AutoencoderKLCogVideoX) and isinstance(pipe.scheduler, CogVideoXDPMScheduler)
    assert pipe.transformer.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    # the tokenizer call of CogVideoXPipeline._get_t5_prompt_embeds
    ids = pipe.tokenizer(["a red ball rolling", ""], padding="max_length", max_length=226, truncation=True,
                         add_special_tokens=True, return_tensors="pt").input_ids
    assert ids.shape == (2, 226)
    unk = pipe.tokenizer.unk_token_id
    assert unk not in ids[0, :5].tolist() and ids[0, 4] == pipe.tokenizer.eos_token_id
    assert ids[1, 0] == pipe.tokenizer.eos_token_id and int(ids[1, 1:].max()) == pipe.tokenizer.pad_token_id


def test_text_length_is_the_trained_one_everywhere(pipe):
    # the model was trained on captions padded to TEXT_LEN tokens: the calls and the CLI (which reads the
    # transformer config) must pad to the same length, and the longest caption must fit
    from sparge_diffusers.embedded.build import TRANSFORMER_CONFIG
    from sparge_diffusers.models import load_model

    assert TEXT_LEN == 16 < 226
    assert DEFAULT_CALL["max_sequence_length"] == LARGE_CALL["max_sequence_length"] == TEXT_LEN
    assert pipe.transformer.config.max_text_seq_length == TRANSFORMER_CONFIG["max_text_seq_length"] == TEXT_LEN
    ids = pipe.tokenizer(["a magenta triangle rolling right"], padding="max_length", max_length=TEXT_LEN,
                         truncation=True, add_special_tokens=True, return_tensors="pt").input_ids
    assert ids.shape == (1, TEXT_LEN) and ids[0, 5] == pipe.tokenizer.eos_token_id
    assert load_model().prompt_kwargs("a red ball")["max_sequence_length"] == TEXT_LEN


def test_tiny_cpu_render(pipe):
    out = pipe("a red ball rolling", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np", **SMALL)
    frames = np.asarray(out.frames[0])
    assert frames.shape == (9, 64, 64, 3) and np.isfinite(frames).all()
    assert 0.0 <= frames.min() and frames.max() <= 1.0 and frames.std() > 0.0


def test_capture_shapes_and_stock_output(pipe):
    from sparge_diffusers.capture import AttentionRecord, capture_attention

    kwargs = dict(num_inference_steps=2, guidance_scale=1.0, output_type="latent", **SMALL)  # no CFG: batch 1
    stock = pipe("a blue square falling", generator=torch.Generator().manual_seed(1), **kwargs).frames
    records, out = capture_attention(pipe, "a blue square falling", steps=[1], layers=[0, 5], return_output=True,
                                     generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(out.frames, stock)  # the capturing processor computes what the stock one does
    assert [(r.step, r.layer) for r in records] == [(1, 0), (1, 5)]
    r = records[0]
    assert isinstance(r, AttentionRecord) and r.text_len == 226 and r.grid == (3, 8, 8)
    assert r.q.shape == r.k.shape == r.v.shape == (1, 4, 226 + 192, 64) and r.q.dtype == torch.float16
    assert r.timestep is not None and r.timestep < 999  # the second step
    # the processors were restored
    assert all(type(p).__name__ == "CogVideoXAttnProcessor2_0" for p in pipe.transformer.attn_processors.values())
    # SDPA of the recorded q, k, v is the layer's attention: recompute layer 0's output projection input
    attn = pipe.transformer.transformer_blocks[0].attn1
    o = torch.nn.functional.scaled_dot_product_attention(r.q.float(), r.k.float(), r.v.float())
    assert torch.isfinite(o).all() and o.shape == r.q.shape
    assert attn.heads == r.q.shape[1]
    with pytest.raises(ValueError, match="layers"):
        capture_attention(pipe, "a red ball", layers=[99], **kwargs)


def test_vae_keeps_the_objects(pipe):
    # The first shipped VAE (240 training steps, no object weight) reconstructed the backgrounds and erased every
    # object; the diffusion model trained on its latents then drew flat grey frames. The VAE must keep the object:
    # PSNR on the object's pixels (measured 23.7 / 24.0 dB at 128 x 128 on the CPU), and the checker must read the
    # caption's colour and motion from the reconstruction.
    from sparge_diffusers.checker import check_video
    from sparge_diffusers.procedural import procedural_batch

    data = procedural_batch(4, frames=9, height=64, width=64, seed=1)
    x = data.frames.permute(0, 4, 1, 2, 3) * 2 - 1  # [B, 3, T, H, W] in [-1, 1]
    with torch.no_grad():
        recon = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    ys = torch.arange(64, dtype=torch.float32).view(1, 1, 64, 1) + 0.5
    xs = ys.view(1, 1, 1, 64)
    cx, cy = data.centroids[..., 0][..., None, None], data.centroids[..., 1][..., None, None]
    inside = (((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() <= data.radius[..., None, None] * 1.2 + 2).float()[:, None]
    err = (recon - x) ** 2
    object_psnr = float(10 * torch.log10(4.0 / ((err * inside).sum() / (3 * inside.sum()))))
    assert object_psnr >= 20.0, object_psnr
    frames = ((recon + 1) / 2).permute(0, 2, 3, 4, 1).numpy()  # [B, T, H, W, 3]
    results = [check_video(f, c) for f, c in zip(frames, data.captions)]
    assert sum(r.colour_ok and r.motion_ok for r in results) >= 3, [(r.prompt, r.colour, r.motion) for r in results]
