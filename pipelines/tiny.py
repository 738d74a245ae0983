"""Tiny random-weight CogVideoX, Mochi and Flux pipelines that run offline on a CPU in seconds.

Built from configs (no hub, no downloads): a transformer with 2 heads of dim 64 and a few layers, a small VAE of the
family's class, the family's scheduler, and NO text encoder or tokenizer. Prompts are turned into embeddings by
`tiny_prompt_embeds`, which seeds random embeddings with a hash of the prompt text, so the same prompt always gives
the same embeddings (and, for Mochi, a valid-token count that grows with the number of words), but the embeddings
carry no meaning: the embedded default of ``sparge-diffusers generate`` exercises the whole pipeline and the sparse
attention path, not prompt following.

The default sizes (`TINY_SIZES`) give latent grids with several 64-token key blocks per attention row:

==========  =====================  =====================  ==================
family      call size              grid after patching    attention tokens
==========  =====================  =====================  ==================
cogvideox   9 x 128 x 160          (3, 16, 20)            16 text + 960
mochi       13 x 192 x 256         (3, 12, 16)            576 + up to 16 text
flux        128 x 96 (h x w)       (32, 24)               16 text + 768
==========  =====================  =====================  ==================

Example::

    pipe, call_kwargs = tiny_pipeline("cogvideox")
    frames = pipe(**call_kwargs, num_inference_steps=2, **TINY_SIZES["cogvideox"], output_type="np").frames
"""

from __future__ import annotations

import hashlib
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from . import FAMILIES, PIPELINE_FAMILIES

TEXT_LEN = 16
TEXT_DIM = 32
POOLED_DIM = 32
HEADS = 2
HEAD_DIM = 64

# latent grids after patching of the default call sizes (see the table above); the dispatch families have tiny
# transformers only (`tiny_transformer`, `transformer_inputs`)
TINY_GRIDS: Dict[str, Tuple[int, ...]] = {
    "cogvideox": (3, 16, 20), "mochi": (3, 12, 16), "flux": (32, 24),
    "wan": (3, 12, 16), "hunyuan_video": (3, 12, 16), "hunyuan_video15": (3, 12, 16), "ltx": (3, 12, 16),
    "qwenimage": (24, 32), "flux2": (24, 32),
}
# variants of the tiny transformers: Wan "1.3b" (default), "14b" (more heads and a wider MLP, same structure),
# "i2v" (image K/V in the cross-attention, 36 input channels), "ti2v" (Wan 2.2 5B: per-token timesteps)
VARIANTS: Dict[str, Tuple[str, ...]] = {"cogvideox": ("rope", "sincos", "1.5"), "wan": ("1.3b", "14b", "i2v", "ti2v")}

TINY_SIZES: Dict[str, Dict[str, int]] = {
    "cogvideox": {"height": 128, "width": 160, "num_frames": 9},
    "mochi": {"height": 192, "width": 256, "num_frames": 13},
    "flux": {"height": 128, "width": 96},
}

COGVIDEOX_VARIANTS = ("rope", "sincos", "1.5")


def _check_family(family: str, pipelines_only: bool = False) -> str:
    allowed = PIPELINE_FAMILIES if pipelines_only else FAMILIES
    if family not in allowed:
        raise ValueError(f"family must be one of {allowed}, got {family!r}")
    return family


def tiny_call_size(family: str) -> Dict[str, int]:
    """The default ``height`` / ``width`` (/ ``num_frames`` for video) keyword arguments of a tiny pipeline call."""
    return dict(TINY_SIZES[_check_family(family, pipelines_only=True)])


def tiny_transformer(family: str, *, variant: Optional[str] = None, seed: int = 0, device="cpu",
                     dtype: torch.dtype = torch.float32, num_layers: Optional[int] = None):
    """A tiny random-weight transformer of ``family``.

    Args:
        variant: CogVideoX only: ``"rope"`` (1.0 with RoPE, like CogVideoX-5b; default), ``"sincos"`` (1.0 with a
            sin-cos positional embedding, like CogVideoX-2b) or ``"1.5"`` (``patch_size_t=2`` and RoPE).
        num_layers: transformer blocks (Flux: double-stream blocks; it also gets 2 single-stream blocks).
    """
    _check_family(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "cogvideox":
            transformer = _cogvideox_transformer(variant or "rope", num_layers or 2)
        elif family == "wan":
            transformer = _wan_transformer(variant or "1.3b", num_layers or 2)
        elif family in _DISPATCH_BUILDERS and variant is None:
            transformer = _DISPATCH_BUILDERS[family](num_layers)
        elif variant is not None:
            raise ValueError(f"variant is for cogvideox only, got variant={variant!r} for {family}")
        elif family == "mochi":
            from diffusers import MochiTransformer3DModel

            transformer = MochiTransformer3DModel(
                patch_size=2, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, num_layers=num_layers or 2,
                pooled_projection_dim=TEXT_DIM, in_channels=12, qk_norm="rms_norm", text_embed_dim=TEXT_DIM,
                time_embed_dim=16, activation_fn="swiglu", max_sequence_length=TEXT_LEN,
            )
            # diffusers initialises the RoPE frequencies to 0 (identity rotation); random ones make RoPE matter.
            with torch.no_grad():
                transformer.pos_frequencies.normal_(0.0, 0.05)
        else:
            from diffusers import FluxTransformer2DModel

            transformer = FluxTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=num_layers or 1, num_single_layers=2,
                attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM,
                pooled_projection_dim=POOLED_DIM, axes_dims_rope=(16, 24, 24),
            )
    return transformer.to(device=device, dtype=dtype).eval()


def _wan_transformer(variant: str, num_layers: int):
    from diffusers import WanTransformer3DModel

    if variant not in VARIANTS["wan"]:
        raise ValueError(f"Wan variant must be one of {VARIANTS['wan']}, got {variant!r}")
    heads = 3 if variant == "14b" else HEADS
    i2v = variant == "i2v"
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=128, in_channels=36 if i2v else 16,
        out_channels=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=256 if variant == "14b" else 128,
        num_layers=num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        image_dim=TEXT_DIM if i2v else None, added_kv_proj_dim=heads * 128 if i2v else None, rope_max_seq_len=256,
    )


def _hunyuan_video(num_layers):
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=HEADS, attention_head_dim=128, num_layers=num_layers or 1,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM, rope_axes_dim=(16, 56, 56),
    )


def _hunyuan_video15(num_layers):
    from diffusers import HunyuanVideo15Transformer3DModel

    return HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=HEADS, attention_head_dim=128, num_layers=num_layers or 2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, text_embed_dim=TEXT_DIM,
        text_embed_2_dim=TEXT_DIM, image_embed_dim=TEXT_DIM, rope_axes_dim=(16, 56, 56), task_type="t2v",
    )


def _ltx(num_layers):
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, num_attention_heads=HEADS, attention_head_dim=64, cross_attention_dim=128,
        num_layers=num_layers or 2, caption_channels=TEXT_DIM,
    )


def _qwenimage(num_layers):
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=num_layers or 2, attention_head_dim=128,
        num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM, axes_dims_rope=(16, 56, 56),
    )


def _flux2(num_layers):
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers or 1, num_single_layers=1, attention_head_dim=128,
        num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM, timestep_guidance_channels=32,
        axes_dims_rope=(32, 32, 32, 32),
    )


_DISPATCH_BUILDERS = {"hunyuan_video": _hunyuan_video, "hunyuan_video15": _hunyuan_video15, "ltx": _ltx,
                      "qwenimage": _qwenimage, "flux2": _flux2}


def _cogvideox_transformer(variant: str, num_layers: int):
    from diffusers import CogVideoXTransformer3DModel

    if variant not in COGVIDEOX_VARIANTS:
        raise ValueError(f"CogVideoX variant must be one of {COGVIDEOX_VARIANTS}, got {variant!r}")
    size = TINY_SIZES["cogvideox"]
    return CogVideoXTransformer3DModel(
        num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=TEXT_DIM, num_layers=num_layers, sample_width=size["width"] // 4,
        sample_height=size["height"] // 4, sample_frames=size["num_frames"], patch_size=2,
        patch_size_t=2 if variant == "1.5" else None, temporal_compression_ratio=4, max_text_seq_length=TEXT_LEN,
        use_rotary_positional_embeddings=variant != "sincos",
    )


def tiny_pipeline(family: str, *, device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                  variant: Optional[str] = None, prompt: str = "a tiny test video") -> Tuple[object, dict]:
    """A tiny random-weight pipeline of ``family`` and the keyword arguments that replace its text encoder.

    Returns:
        ``(pipe, call_kwargs)``: ``call_kwargs`` holds the prompt embeddings of ``prompt`` (and, for the families
        whose default guidance uses classifier-free guidance, CogVideoX and Mochi, those of the empty negative
        prompt, so the default call runs a CFG batch of 2; Mochi's two prompts have different valid lengths). Call
        ``pipe(**call_kwargs, num_inference_steps=2, **tiny_call_size(family), output_type="np")``.
    """
    _check_family(family, pipelines_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        if family == "cogvideox":
            from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline

            vae = AutoencoderKLCogVideoX(
                in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 3,
                up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(8, 8, 8), latent_channels=4,
                layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
            )
            transformer = tiny_transformer(family, variant=variant, seed=seed)
            pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                     scheduler=CogVideoXDDIMScheduler())
        elif family == "mochi":
            from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline

            vae = AutoencoderKLMochi(
                latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
            )
            transformer = tiny_transformer(family, variant=variant, seed=seed)
            pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                 tokenizer=None, transformer=transformer)
        else:
            from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

            vae = AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                latent_channels=4, norm_num_groups=2, sample_size=32, use_quant_conv=False,
                use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
            )
            transformer = tiny_transformer(family, variant=variant, seed=seed)
            pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe, tiny_call_kwargs(pipe, family, prompt)


def tiny_call_kwargs(pipe, family: str, prompt: Union[str, Sequence[str]], negative_prompt: str = "") -> dict:
    """The call keyword arguments `tiny_pipeline` returns, for another prompt: its embeddings, plus those of
    ``negative_prompt`` for CogVideoX and Mochi, whose default guidance scale runs classifier-free guidance (their
    pipelines would otherwise call the missing text encoder for the empty negative prompt)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negative = [negative_prompt] * len(prompts) if family in ("cogvideox", "mochi") else None
    return tiny_prompt_embeds(pipe, family, prompts, negative_prompts=negative)


def _prompt_generator(prompt: str, salt: str) -> torch.Generator:
    digest = hashlib.sha256(f"{salt}\x00{prompt}".encode("utf-8")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _valid_len(prompt: str, max_len: int) -> int:
    """Tokens a prompt 'has': one per word plus an end token, clipped to ``[1, max_len]``."""
    return max(1, min(max_len, len(prompt.split()) + 1))


def _embed(prompts: Sequence[str], family: str, length: int, dim: int, pooled_dim: Optional[int], masked: bool,
           device, dtype) -> Dict[str, torch.Tensor]:
    embeds, pooled, masks = [], [], []
    for prompt in prompts:
        gen = _prompt_generator(prompt, family)
        x = torch.randn(length, dim, generator=gen)
        if masked:
            mask = torch.arange(length) < _valid_len(prompt, length)
            x = x * mask[:, None]
            masks.append(mask)
        embeds.append(x)
        if pooled_dim is not None:
            pooled.append(torch.randn(pooled_dim, generator=gen))
    out = {"embeds": torch.stack(embeds).to(device=device, dtype=dtype)}
    if masked:
        out["mask"] = torch.stack(masks).to(device=device)
    if pooled_dim is not None:
        out["pooled"] = torch.stack(pooled).to(device=device, dtype=dtype)
    return out


def tiny_prompt_embeds(pipe, family: Optional[str], prompts: Union[str, Sequence[str]], *,
                       negative_prompts: Optional[Union[str, Sequence[str]]] = None, device=None,
                       dtype: Optional[torch.dtype] = None) -> dict:
    """Deterministic stand-in for a text encoder: call keyword arguments for ``prompts``.

    Each prompt seeds a generator with a SHA-256 hash of its text (and the family), which draws its embeddings
    (``[len(prompts), L, D]`` with ``L``, ``D`` from the transformer config), Flux's pooled embedding, and, for Mochi,
    an attention mask whose valid length is the word count + 1 (padding positions are zero). The embeddings mean
    nothing; they only make a tiny pipeline runnable without a text encoder.

    Returns:
        CogVideoX: ``prompt_embeds`` (+ ``negative_prompt_embeds``); Mochi: ``prompt_embeds``,
        ``prompt_attention_mask`` (+ the negative pair); Flux: ``prompt_embeds``, ``pooled_prompt_embeds`` (+
        ``negative_prompt_embeds``, ``negative_pooled_prompt_embeds``, used with ``true_cfg_scale > 1``).
    """
    transformer = getattr(pipe, "transformer", pipe)
    family = family or _family_of(transformer)
    if family != "wan":  # Wan: the folders of `tiny_wan_pipeline` (no embedded Wan model)
        _check_family(family, pipelines_only=True)
    config = transformer.config
    param = next(transformer.parameters())
    device = param.device if device is None else device
    dtype = param.dtype if dtype is None else dtype
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if isinstance(negative_prompts, str):
        negative_prompts = [negative_prompts] * len(prompts)

    if family == "cogvideox":
        spec = dict(length=config.max_text_seq_length, dim=config.text_embed_dim, pooled_dim=None, masked=False)
    elif family == "mochi":
        spec = dict(length=config.max_sequence_length, dim=config.text_embed_dim, pooled_dim=None, masked=True)
    elif family == "wan":
        spec = dict(length=TEXT_LEN, dim=config.text_dim, pooled_dim=None, masked=False)
    else:
        spec = dict(length=TEXT_LEN, dim=config.joint_attention_dim, pooled_dim=config.pooled_projection_dim,
                    masked=False)

    kwargs = {}
    for prefix, texts in (("", prompts), ("negative_", negative_prompts)):
        if texts is None:
            continue
        if len(texts) != len(prompts):
            raise ValueError(f"negative_prompts must have {len(prompts)} entries, got {len(texts)}")
        parts = _embed(texts, family, device=device, dtype=dtype, **spec)
        kwargs[f"{prefix}prompt_embeds"] = parts["embeds"]
        if "mask" in parts:
            kwargs[f"{prefix}prompt_attention_mask"] = parts["mask"]
        if "pooled" in parts:
            kwargs[f"{prefix}pooled_prompt_embeds"] = parts["pooled"]
    return kwargs


def tiny_wan_pipeline(*, device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0, num_layers: int = 1):
    """A tiny random-weight ``WanPipeline`` (no text encoder: `tiny_prompt_embeds` stands in), for the CLI tests of
    dispatch-based models (``save_pretrained`` it and pass the folder as ``--model``). Its VAE compresses 8x in space
    and 4x in time like Wan's: 9 frames of 128 x 256 become a (3, 8, 16) grid after patching, 384 tokens."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
    transformer = tiny_transformer("wan", seed=seed, num_layers=num_layers)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    return pipe.to(device=device, dtype=dtype)


def transformer_inputs(transformer, grid: Sequence[int], *, batch_size: int = 1,
                       text_lens: Optional[Sequence[int]] = None, timestep: float = 500.0, seed: int = 0,
                       device=None, dtype: Optional[torch.dtype] = None) -> dict:
    """Random forward arguments for a CogVideoX, Mochi or Flux transformer, shaped as its diffusers 0.42 pipeline
    shapes them (the tests and the device benchmarks call transformers directly with these).

    Args:
        grid: latent grid AFTER patching: ``(t, h, w)`` for CogVideoX and Mochi (``t`` counts patches along time for
            CogVideoX 1.5), ``(h, w)`` packed tokens for Flux.
        text_lens: Mochi only: valid text tokens per sample (padded batch); default all valid.
        timestep: in the pipeline's convention (0..1000; Flux gets ``timestep / 1000``).
    Returns:
        keyword arguments for ``transformer(**inputs)`` (``return_dict=False``). CogVideoX gets the pipeline's RoPE
        (``image_rotary_emb``) when the config uses it; Flux gets ``img_ids`` / ``txt_ids``.
    """
    transformer = getattr(transformer, "_orig_mod", transformer)
    family = _family_of(transformer)
    config = transformer.config
    param = next(transformer.parameters())
    device = param.device if device is None else device
    dtype = param.dtype if dtype is None else dtype
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    if family in _DISPATCH_INPUTS:
        return _DISPATCH_INPUTS[family](transformer, tuple(grid), batch_size, text_lens, timestep, randn, device,
                                        dtype)
    if family == "flux":
        h, w = grid
        from diffusers import FluxPipeline

        return {
            "hidden_states": randn(batch_size, h * w, config.in_channels),
            "encoder_hidden_states": randn(batch_size, TEXT_LEN, config.joint_attention_dim),
            "pooled_projections": randn(batch_size, config.pooled_projection_dim),
            "timestep": torch.full((batch_size,), timestep / 1000.0, device=device, dtype=dtype),
            "img_ids": FluxPipeline._prepare_latent_image_ids(batch_size, h, w, device, dtype),
            "txt_ids": torch.zeros(TEXT_LEN, 3, device=device, dtype=dtype),
            "guidance": (torch.full((batch_size,), 3.5, device=device, dtype=dtype)
                         if config.guidance_embeds else None),
            "return_dict": False,
        }
    t, h, w = grid
    p = config.patch_size
    if family == "mochi":
        text_len = config.max_sequence_length
        lens = [text_len] * batch_size if text_lens is None else list(text_lens)
        if len(lens) != batch_size:
            raise ValueError(f"text_lens must have batch_size={batch_size} entries, got {lens}")
        mask = torch.arange(text_len)[None, :] < torch.tensor(lens)[:, None]
        return {
            "hidden_states": randn(batch_size, config.in_channels, t, h * p, w * p),
            "encoder_hidden_states": randn(batch_size, text_len, config.text_embed_dim),
            "timestep": torch.full((batch_size,), timestep, device=device, dtype=dtype),
            "encoder_attention_mask": mask.to(device),
            "return_dict": False,
        }
    from types import SimpleNamespace

    from diffusers import CogVideoXPipeline

    p_t = config.patch_size_t or 1
    frames = t * p_t
    rotary = None
    if config.use_rotary_positional_embeddings:
        shim = SimpleNamespace(vae_scale_factor_spatial=1, transformer=transformer)
        rotary = CogVideoXPipeline._prepare_rotary_positional_embeddings(shim, h * p, w * p, frames, device)
    return {
        "hidden_states": randn(batch_size, frames, config.in_channels, h * p, w * p),
        "encoder_hidden_states": randn(batch_size, config.max_text_seq_length, config.text_embed_dim),
        "timestep": torch.full((batch_size,), int(timestep), device=device, dtype=torch.long),
        "image_rotary_emb": rotary,
        "return_dict": False,
    }


def _text_mask(batch_size: int, length: int, text_lens, device) -> torch.Tensor:
    lens = [length] * batch_size if text_lens is None else list(text_lens)
    if len(lens) != batch_size:
        raise ValueError(f"text_lens must have batch_size={batch_size} entries, got {lens}")
    return (torch.arange(length)[None, :] < torch.tensor(lens)[:, None]).to(device)


def _wan_inputs(transformer, grid, batch_size, text_lens, timestep, randn, device, dtype):
    config = transformer.config
    t, h, w = grid
    p_t, p_h, p_w = config.patch_size
    i2v = config.image_dim is not None
    text_len = 512 if i2v else TEXT_LEN  # Wan's I2V processor takes the last 512 context tokens as the text
    inputs = {
        "hidden_states": randn(batch_size, config.in_channels, t * p_t, h * p_h, w * p_w),
        "encoder_hidden_states": randn(batch_size, text_len, config.text_dim),
        "timestep": torch.full((batch_size,), timestep, device=device, dtype=dtype),
        "return_dict": False,
    }
    if i2v:
        inputs["encoder_hidden_states_image"] = randn(batch_size, 17, config.image_dim)
    return inputs


def _hunyuan_inputs(transformer, grid, batch_size, text_lens, timestep, randn, device, dtype):
    config = transformer.config
    t, h, w = grid
    p, p_t = config.patch_size, config.patch_size_t
    mask = _text_mask(batch_size, TEXT_LEN, text_lens, device)
    inputs = {
        "hidden_states": randn(batch_size, config.in_channels, t * p_t, h * p, w * p),
        "timestep": torch.full((batch_size,), timestep, device=device, dtype=dtype),
        "encoder_hidden_states": randn(batch_size, TEXT_LEN, config.text_embed_dim),
        "encoder_attention_mask": mask,
        "return_dict": False,
    }
    if "pooled_projection_dim" in config:
        inputs["pooled_projections"] = randn(batch_size, config.pooled_projection_dim)
        inputs["guidance"] = torch.full((batch_size,), 6000.0, device=device, dtype=dtype)
    else:  # HunyuanVideo 1.5: ByT5 text (8 tokens, all valid) and image tokens (zeros: text-to-video)
        inputs["encoder_hidden_states_2"] = randn(batch_size, 8, config.text_embed_2_dim)
        inputs["encoder_attention_mask_2"] = torch.ones(batch_size, 8, dtype=torch.bool, device=device)
        inputs["image_embeds"] = torch.zeros(batch_size, 4, config.image_embed_dim, device=device, dtype=dtype)
    return inputs


def _ltx_inputs(transformer, grid, batch_size, text_lens, timestep, randn, device, dtype):
    config = transformer.config
    t, h, w = grid
    return {
        "hidden_states": randn(batch_size, t * h * w, config.in_channels),
        "encoder_hidden_states": randn(batch_size, TEXT_LEN, config.caption_channels),
        "timestep": torch.full((batch_size,), timestep, device=device, dtype=dtype),
        "encoder_attention_mask": _text_mask(batch_size, TEXT_LEN, text_lens, device).to(dtype),
        "num_frames": t, "height": h, "width": w,
        "return_dict": False,
    }


def _qwen_inputs(transformer, grid, batch_size, text_lens, timestep, randn, device, dtype):
    config = transformer.config
    h, w = grid
    return {
        "hidden_states": randn(batch_size, h * w, config.in_channels),
        "encoder_hidden_states": randn(batch_size, TEXT_LEN, config.joint_attention_dim),
        "encoder_hidden_states_mask": _text_mask(batch_size, TEXT_LEN, text_lens, device).to(dtype),
        "timestep": torch.full((batch_size,), timestep / 1000.0, device=device, dtype=dtype),
        "img_shapes": [[(1, h, w)]] * batch_size,
        "return_dict": False,
    }


def _flux2_inputs(transformer, grid, batch_size, text_lens, timestep, randn, device, dtype):
    config = transformer.config
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    zeros = torch.zeros_like(rows)
    img_ids = torch.stack([zeros, rows, cols, zeros], -1).reshape(-1, 4)
    txt_ids = torch.stack([torch.zeros(TEXT_LEN), torch.zeros(TEXT_LEN), torch.zeros(TEXT_LEN),
                           torch.arange(TEXT_LEN)], -1)
    return {
        "hidden_states": randn(batch_size, h * w, config.in_channels),
        "encoder_hidden_states": randn(batch_size, TEXT_LEN, config.joint_attention_dim),
        "timestep": torch.full((batch_size,), timestep / 1000.0, device=device, dtype=dtype),
        "img_ids": img_ids.to(device=device, dtype=dtype), "txt_ids": txt_ids.to(device=device, dtype=dtype),
        "guidance": torch.full((batch_size,), 3.5, device=device, dtype=dtype),
        "return_dict": False,
    }


_DISPATCH_INPUTS = {"wan": _wan_inputs, "hunyuan_video": _hunyuan_inputs, "hunyuan_video15": _hunyuan_inputs,
                    "ltx": _ltx_inputs, "qwenimage": _qwen_inputs, "flux2": _flux2_inputs}


def _family_of(transformer) -> str:
    from sparge_diffusers.family import family_for

    return family_for(getattr(transformer, "_orig_mod", transformer)).name


__all__ = [
    "TINY_GRIDS",
    "TINY_SIZES",
    "tiny_call_kwargs",
    "tiny_call_size",
    "tiny_pipeline",
    "tiny_wan_pipeline",
    "tiny_prompt_embeds",
    "tiny_transformer",
    "transformer_inputs",
]
