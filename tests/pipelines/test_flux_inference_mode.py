"""Flux under torch.inference_mode(): the geometry cache must not touch the ids' version counter."""

import torch

from sparge_diffusers import SpargeConfig, apply_sparge, remove_sparge
from sparge_diffusers.pipelines.tiny import tiny_pipeline


def test_flux_runs_under_inference_mode():
    pipe, call_kwargs = tiny_pipeline("flux")
    apply_sparge(pipe, SpargeConfig(topk=0.5, sim_threshold=None, precision="bf16"))
    with torch.inference_mode():
        image = pipe(**call_kwargs, num_inference_steps=1, height=64, width=64, output_type="np").images
    remove_sparge(pipe)
    assert image.shape[-1] == 3 and not (image != image).any()
