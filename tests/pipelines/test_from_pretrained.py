"""`Sparge*Pipeline.from_pretrained` of a folder saved from a tiny pipeline (text encoder and tokenizer saved as
null) loads without passing ``text_encoder=None, tokenizer=None``."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("family", ["cogvideox", "flux"])
def test_from_pretrained_of_a_saved_tiny_folder(family, tmp_path):
    from sparge_diffusers import SpargeConfig
    from sparge_diffusers.pipelines import SpargeCogVideoXPipeline, SpargeFluxPipeline
    from sparge_diffusers.pipelines.tiny import tiny_pipeline

    pipe, call_kwargs = tiny_pipeline(family)
    pipe.save_pretrained(tmp_path)
    cls = {"cogvideox": SpargeCogVideoXPipeline, "flux": SpargeFluxPipeline}[family]
    loaded = cls.from_pretrained(tmp_path, sparge_config=SpargeConfig(topk=0.5))
    assert loaded.text_encoder is None and loaded.tokenizer is None
    assert loaded.sparge_config.topk == 0.5
    for name, parameter in pipe.transformer.state_dict().items():
        torch.testing.assert_close(loaded.transformer.state_dict()[name], parameter, rtol=0, atol=0)
    # an explicit component still wins over the null of the folder
    again = cls.from_pretrained(tmp_path, text_encoder=None, tokenizer=None)
    assert again.text_encoder is None
