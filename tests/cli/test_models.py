"""Model discovery and loading (`sparge_diffusers.models`): the family table, the frame-count rule against real
renders, local folders with and without a text encoder, and the shared negative-prompt rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparge_diffusers.errors import UsageError
from sparge_diffusers.models import (DEFAULT_MODEL, EMBEDDED_MODELS, PIPELINE_FAMILIES, default_model, detect_family,
                                     load_model, model_family, null_components, uses_negative_prompt)
from sparge_diffusers.rendering import RenderSettings, render


def test_family_table_and_default(tmp_path):
    from sparge_diffusers.models import TRAINED_MODEL

    assert default_model() == DEFAULT_MODEL == TRAINED_MODEL  # the shipped trained pipeline
    assert model_family(None) == "cogvideox" and model_family("tiny-mochi") == "mochi"
    for class_name, family in PIPELINE_FAMILIES.items():
        for name in (class_name, "Sparge" + class_name):  # a Sparge wrapper's saved folder is its stock family
            folder = tmp_path / name
            folder.mkdir()
            (folder / "model_index.json").write_text(json.dumps({"_class_name": name}))
            assert detect_family(folder) == family
    with pytest.raises(UsageError, match="not valid JSON"):
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "model_index.json").write_text("[1, 2")
        detect_family(bad)
    assert [uses_negative_prompt(f) for f in ("cogvideox", "mochi", "flux")] == [True, True, False]


@pytest.mark.parametrize("family, counts", [("cogvideox", (2, 5, 9)), ("mochi", (2, 7))])
def test_decoded_frames_rule_matches_renders(family, counts):
    """`LoadedModel.decoded_frames` predicts the frames the pipeline really renders (16×16, 1-2 steps): fewer
    (2 -> 1), more (CogVideoX 5 -> 8) or exactly as asked."""
    model = load_model(f"tiny-{family}")
    for count in counts:
        settings = RenderSettings(steps=model.spec.min_steps, height=16, width=16, frames=count)
        rendered = render(model, "p", settings, None).frames.shape[0]
        assert model.decoded_frames(count) == rendered, count
    assert model.allowed_frames(4) == ([1, 8, 9, 16] if family == "cogvideox" else [1, 7, 13, 19])


def test_saved_tiny_folder_loads_without_passing_null_components(tiny_cogvideox_dir):
    # diffusers' from_pretrained refuses a folder whose text encoder / tokenizer were saved as null unless they are
    # passed as None; the loader passes them
    assert null_components(tiny_cogvideox_dir) == {"text_encoder": None, "tokenizer": None}
    model = load_model(str(tiny_cogvideox_dir))
    assert model.family == "cogvideox" and not model.embedded and not model.encodes_prompts
    kwargs = model.prompt_kwargs("a red ball")
    assert set(kwargs) == {"prompt_embeds", "negative_prompt_embeds"}  # the same rule as the embedded model


def test_folder_with_text_encoder_encodes_prompts(cli, tiny_cogvideox_t5_dir, tmp_path):
    model = load_model(str(tiny_cogvideox_t5_dir))
    assert model.encodes_prompts and not model.embedded
    assert model.prompt_kwargs("a red ball") == {"prompt": "a red ball", "negative_prompt": "",
                                                 "max_sequence_length": 16}
    code, _, err = cli("generate", "a red ball", "a blue cube", "--model", tiny_cogvideox_t5_dir, "-o", tmp_path,
                       "--steps", "1", "--height", "32", "--width", "32", "--frames", "1", "--dense", "--format",
                       "png", "--no-progress")
    assert code == 0, err
    sidecar = json.loads((tmp_path / "a-red-ball-seed0.png.json").read_text())
    assert sidecar["model"]["prompt_encoding"] == "text encoder"
    assert sidecar["settings"]["call"]["max_sequence_length"] == 16
    from sparge_diffusers.media import read_media

    red, blue = (read_media(tmp_path / f"{stem}-seed0.png") for stem in ("a-red-ball", "a-blue-cube"))
    assert not np.array_equal(red, blue)  # the text encoder's embeddings differ per prompt


@pytest.mark.parametrize("class_name, family", [("WanPipeline", "wan"), ("SpargeWanPipeline", "wan"),
                                                ("HunyuanVideoPipeline", "hunyuan_video"), ("LTXPipeline", "ltx"),
                                                ("QwenImagePipeline", "qwenimage"), ("Flux2Pipeline", "flux2")])
def test_dispatch_families_are_discovered_from_model_index(tmp_path, class_name, family):
    import json

    from sparge_diffusers.models import FAMILY_SPECS, detect_family

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    assert detect_family(tmp_path) == family and family in FAMILY_SPECS


def test_one_plus_frame_rules():
    from sparge_diffusers.models import FAMILY_SPECS

    wan, ltx = FAMILY_SPECS["wan"].decoded_frames, FAMILY_SPECS["ltx"].decoded_frames
    assert [wan(None, n) for n in (1, 2, 5, 81, 83)] == [1, 1, 5, 81, 81]
    assert [ltx(None, n) for n in (1, 9, 12, 161)] == [1, 9, 9, 161]
