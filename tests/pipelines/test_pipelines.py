"""Whole tiny pipelines: CFG batches, step counting, dense policies, statistics, the wrapped Sparge pipelines and the
tiny-pipeline helpers the CLI uses."""

import time

import pytest
import torch
from sparge_diffusers.pipelines.tiny import tiny_call_size, tiny_pipeline, tiny_prompt_embeds

from sparge_diffusers import SpargeConfig, apply_sparge, get_sparge_stats, remove_sparge

DENSE = SpargeConfig(topk=1.0, precision="bf16")
ROW_KEYS = {"step", "layer", "sparsity", "attention_ms", "backend"}


def _latents(pipe, call_kwargs, family, steps=2, **extra):
    out = pipe(**call_kwargs, num_inference_steps=steps, output_type="latent", **tiny_call_size(family),
               generator=torch.Generator().manual_seed(0), **extra)
    return out.images if family == "flux" else out.frames


@pytest.mark.parametrize("family", ["cogvideox", "mochi"])
def test_cfg_batch_of_two_equals_stock(family):
    """The default tiny call of CogVideoX and Mochi runs classifier-free guidance as one batch of 2 (Mochi's two
    prompts have different valid text lengths)."""
    pipe, call_kwargs = tiny_pipeline(family)
    ref = _latents(pipe, call_kwargs, family)
    apply_sparge(pipe, DENSE, collect_stats=True)
    out = _latents(pipe, call_kwargs, family)
    rows = get_sparge_stats(pipe).rows
    assert rows and all(r["batch"] == 2 for r in rows)
    assert all(ROW_KEYS <= r.keys() for r in rows)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    remove_sparge(pipe)


def test_dense_steps_and_dense_layers_are_honoured():
    pipe, call_kwargs = tiny_pipeline("cogvideox")
    config = SpargeConfig(topk=0.5, sim_threshold=None, precision="bf16", dense_steps=1, dense_layers=(1,))
    apply_sparge(pipe, config, collect_stats=True)
    _latents(pipe, call_kwargs, "cogvideox", steps=2)
    rows = get_sparge_stats(pipe).rows
    assert [(r["step"], r["layer"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    by_key = {(r["step"], r["layer"]): r for r in rows}
    for key in [(0, 0), (0, 1)]:
        assert by_key[key]["policy"] == "dense_step" and by_key[key]["sparsity"] == 0.0
    assert by_key[(1, 1)]["policy"] == "dense_layer" and by_key[(1, 1)]["sparsity"] == 0.0
    assert by_key[(1, 0)]["policy"] == "sparse" and by_key[(1, 0)]["sparsity"] > 0.3
    assert by_key[(1, 0)]["backend"] == "reference" and by_key[(0, 0)]["backend"] == "dense"
    stats = get_sparge_stats(pipe)
    assert stats.mean_sparsity == pytest.approx(by_key[(1, 0)]["sparsity"] / 4)
    assert stats.by_step()[0] == 0.0 and stats.by_layer()[1] == 0.0
    stats.reset()
    assert stats.rows == [] and stats.mean_sparsity != stats.mean_sparsity  # NaN when empty


def test_step_counter_restarts_per_call_and_ignores_true_cfg_repeats():
    """Flux with true CFG calls the transformer twice per step with the same timestep: one step each; a second
    pipeline call starts again at step 0 (a new generation)."""
    pipe, _ = tiny_pipeline("flux")
    call_kwargs = tiny_prompt_embeds(pipe, "flux", ["a red car"], negative_prompts=["blurry"])
    apply_sparge(pipe, DENSE, collect_stats=True)
    for _ in range(2):
        _latents(pipe, call_kwargs, "flux", steps=2, true_cfg_scale=2.0)
    rows = get_sparge_stats(pipe).rows
    layer0 = [(r["generation"], r["step"]) for r in rows if r["layer"] == 0]
    assert layer0 == [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]
    remove_sparge(pipe)


@pytest.mark.parametrize("family", ["cogvideox", "mochi", "flux"])
def test_wrapped_pipeline_from_pretrained(family, tmp_path):
    """Sparge<Family>Pipeline.from_pretrained(local_path, sparge_config=...) runs the stock call end to end (VAE
    decode, output_type="np") and exposes the statistics of the last call."""
    from sparge_diffusers import pipelines

    wrapped = {"cogvideox": pipelines.SpargeCogVideoXPipeline, "mochi": pipelines.SpargeMochiPipeline,
               "flux": pipelines.SpargeFluxPipeline}[family]
    pipe, call_kwargs = tiny_pipeline(family)
    pipe.save_pretrained(tmp_path)
    config = SpargeConfig(topk=0.5, sim_threshold=None, precision="bf16", dense_steps=1)
    no_text = {name: None for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
               if name in pipe.components}  # the tiny pipelines have no text encoder
    loaded = wrapped.from_pretrained(tmp_path, sparge_config=config, **no_text)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, wrapped) and loaded.sparge_config == config
    start = time.perf_counter()
    out = loaded(**call_kwargs, num_inference_steps=2, output_type="np", **tiny_call_size(family))
    elapsed = time.perf_counter() - start
    media = out.images if family == "flux" else out.frames
    print(f"\n{family}: 2-step Sparge call with VAE decode in {elapsed:.1f} s, output {tuple(media.shape)}")
    assert media.ndim == (4 if family == "flux" else 5) and bool((media >= 0).all() and (media <= 1).all())
    stats = loaded.sparge_stats
    assert {r["step"] for r in stats.rows} == {0, 1} and stats.mean_sparsity > 0.1
    n_rows = len(stats.rows)
    loaded(**call_kwargs, num_inference_steps=2, output_type="latent", **tiny_call_size(family))
    assert len(loaded.sparge_stats.rows) == n_rows  # the stats of the last call only
    loaded.disable_sparge()
    assert not hasattr(loaded.transformer, "_sparge_state")


def test_tiny_prompt_embeds_are_deterministic():
    pipe, _ = tiny_pipeline("mochi")
    a = tiny_prompt_embeds(pipe, "mochi", ["a cat", "a dog running on the beach"])
    b = tiny_prompt_embeds(pipe, "mochi", ["a cat", "a dog running on the beach"])
    c = tiny_prompt_embeds(pipe, "mochi", ["a bat", "a dog running on the beach"])
    assert torch.equal(a["prompt_embeds"], b["prompt_embeds"])
    assert not torch.equal(a["prompt_embeds"][0], c["prompt_embeds"][0])
    assert torch.equal(a["prompt_embeds"][1], c["prompt_embeds"][1])
    assert a["prompt_attention_mask"].sum(dim=1).tolist() == [3, 7]
    flux, _ = tiny_pipeline("flux")
    kwargs = tiny_prompt_embeds(flux, None, "a cat")
    assert set(kwargs) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert kwargs["prompt_embeds"].shape == (1, 16, 32) and kwargs["pooled_prompt_embeds"].shape == (1, 32)
    with pytest.raises(ValueError, match="family"):
        tiny_pipeline("sd3")
