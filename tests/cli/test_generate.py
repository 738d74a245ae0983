"""`sparge-diffusers generate` on the embedded tiny pipelines and on a local folder; bad inputs fail in one line."""

from __future__ import annotations

import json

import pytest

from sparge_diffusers.media import read_media
from sparge_diffusers.models import EMBEDDED_MODELS, detect_family
from sparge_diffusers.outputs import slugify


def test_generate_default_model_writes_video_and_sidecar(cli, fast, tmp_path, list_files):
    code, out, err = cli("generate", "a red ball rolling", "-o", tmp_path, *fast)
    assert code == 0, err
    assert list_files(tmp_path) == ["a-red-ball-rolling-seed0.mp4", "a-red-ball-rolling-seed0.mp4.json"]
    sidecar = json.loads((tmp_path / "a-red-ball-rolling-seed0.mp4.json").read_text())
    assert sidecar["prompt"] == "a red ball rolling"
    assert sidecar["model"] == {"source": "embedded:toy-cogvideox", "family": "cogvideox", "embedded": True,
                                "prompt_encoding": "text encoder"}  # the shipped trained pipeline, its own T5
    # the default rule, the error budget; 64-key blocks: short sequences
    assert sidecar["sparge"]["target_error"] == 0.05 and sidecar["sparge"]["topk"] is None
    assert sidecar["sparge"]["block_n"] == 64
    assert sidecar["settings"]["call"]["num_inference_steps"] == 1
    assert sidecar["settings"]["call"]["max_sequence_length"] == 16  # the text length the model was trained on
    assert sidecar["timings"]["render_s"] > 0 and len(sidecar["timings"]["step_s"]) == 1
    assert 0.0 < sidecar["sparsity"]["mean"] < 1.0
    assert set(sidecar["sparsity"]["by_step"]) == {"0"}
    # map reuse: the default (None: 2 with the budget); one forward, whose calls each measure their budget
    assert sidecar["sparge"]["map_reuse"] is None and sidecar["sparsity"]["map_reuse_share"] == 0.0
    frames = read_media(tmp_path / "a-red-ball-rolling-seed0.mp4")
    assert frames.shape == (9, 64, 64, 3) and sidecar["media"]["frames"] == 9  # --frames 9: 9 frames
    assert "sparsity" in out


def test_compare_dense_gif_and_knobs(cli, fast, tmp_path, list_files):
    target = tmp_path / "clip.gif"
    code, out, err = cli("generate", "a blue cube", "-o", target, "--compare-dense", "--no-warmup", "--topk", "0.3",
                         "--pv-threshold", "-20", "--precision", "int8-fp16", "--reorder", "none", "--seed", "3", *fast)
    assert code == 0, err
    assert list_files(tmp_path) == ["clip-dense.gif", "clip-dense.gif.json", "clip.gif", "clip.gif.json"]
    sidecar = json.loads((tmp_path / "clip.gif.json").read_text())
    assert sidecar["sparge"]["precision"] == "int8-fp16" and sidecar["sparge"]["pv_threshold"] == -20
    dense = sidecar["dense"]
    raw, encoded = dense["fidelity"]["raw_frames"], dense["fidelity"]["encoded_files"]
    assert dense["speedup"] > 0 and 0.0 < raw["ssim"] <= 1.0
    assert raw["psnr"] is None or raw["psnr"] > 10.0  # None: identical renders (inf PSNR)
    assert encoded["format"] == "gif" and 0.0 < encoded["ssim"] <= 1.0  # gif is lossy (256-colour palette)
    assert json.loads((tmp_path / "clip-dense.gif.json").read_text())["mode"] == "dense"
    assert "speed-up" in out and "PSNR" in out and "(gif files)" in out


def test_dense_only_two_prompts_png(cli, fast, tmp_path, list_files):
    code, _, err = cli("generate", "one", "two", "-o", tmp_path, "--format", "png", "--dense", *fast)
    assert code == 0, err
    names = list_files(tmp_path)
    assert names == ["one-seed0.png", "one-seed0.png.json", "two-seed0.png", "two-seed0.png.json"]
    sidecar = json.loads((tmp_path / "one-seed0.png.json").read_text())
    assert sidecar["sparge"] is None and sidecar["sparsity"] is None
    assert read_media(tmp_path / "one-seed0.png").shape[0] == sidecar["media"]["frames"]  # contact sheet split


def test_local_folder_and_flux(cli, tmp_path, list_files):
    from sparge_diffusers.pipelines.tiny import tiny_pipeline

    pipe, _ = tiny_pipeline("flux")
    folder = tmp_path / "tiny-flux-folder"
    pipe.save_pretrained(folder)  # no text encoder: the family comes from model_index.json
    assert detect_family(folder) == "flux"
    out_dir = tmp_path / "out"
    code, out, err = cli("generate", "a cat", "--model", folder, "-o", out_dir, "--steps", "1", "--height", "32",
                         "--width", "48", "--no-progress")
    assert code == 0, err
    assert list_files(out_dir) == ["a-cat-seed0.png", "a-cat-seed0.png.json"]
    sidecar = json.loads((out_dir / "a-cat-seed0.png.json").read_text())
    assert sidecar["model"]["family"] == "flux" and not sidecar["model"]["embedded"]
    assert read_media(out_dir / "a-cat-seed0.png").shape == (1, 32, 48, 3)


def _bad_model_folders(tmp_path):
    no_index = tmp_path / "no-index"
    no_index.mkdir()
    (no_index / "config.json").write_text("{}")
    unsupported = tmp_path / "sd"
    unsupported.mkdir()
    (unsupported / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return no_index, unsupported


@pytest.mark.parametrize("case", [
    "not-a-pipeline", "unsupported-family", "missing-folder", "zero-frames", "negative-steps", "unwritable-output",
    "bad-suffix", "bad-topk", "topk-and-tau", "odd-height", "frames-for-images", "not-a-number", "two-frames",
    "five-frames", "mochi-one-step", "cuda-on-cpu",
])
def test_bad_inputs_fail_in_one_line_and_write_nothing(case, cli, tmp_path, list_files):
    no_index, unsupported = _bad_model_folders(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = tmp_path / "out"
    args = {
        "not-a-pipeline": ["--model", no_index],
        "unsupported-family": ["--model", unsupported],
        "missing-folder": ["--model", tmp_path / "nowhere"],
        "zero-frames": ["--frames", "0"],
        "negative-steps": ["--steps", "-2"],
        "unwritable-output": ["-o", blocker / "clip.mp4"],
        "bad-suffix": ["-o", out / "clip.avi"],
        "bad-topk": ["--topk", "1.5"],
        "topk-and-tau": ["--topk", "0.5", "--cdf-threshold", "0.9"],
        "odd-height": ["--height", "50"],
        "frames-for-images": ["--model", "tiny-flux", "--frames", "9"],
        "not-a-number": ["--steps", "many"],
        "two-frames": ["--frames", "2"],
        "five-frames": ["--frames", "5"],
        "mochi-one-step": ["--model", "tiny-mochi", "--steps", "1"],
        "cuda-on-cpu": ["--device", "cuda"],
    }[case]
    if case == "cuda-on-cpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    before = list_files(tmp_path)
    if "-o" not in args:
        args = args + ["-o", out]
    code, stdout, stderr = cli("generate", "a red ball", "--no-progress", *args)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], stderr
    assert "Traceback" not in stderr
    assert list_files(tmp_path) == before


def test_messages_name_the_problem(cli, tmp_path):
    no_index, unsupported = _bad_model_folders(tmp_path)
    assert "no model_index.json" in cli("generate", "x", "--model", no_index)[2]
    assert "StableDiffusionPipeline is not supported" in cli("generate", "x", "--model", unsupported)[2]
    assert "--frames must be >= 1" in cli("generate", "x", "--frames", "0")[2]
    assert "--steps must be >= 1" in cli("generate", "x", "--steps", "-1")[2]
    assert "map_reuse must be an integer >= 1" in cli("generate", "x", "--map-reuse", "0")[2]


def test_frame_counts_the_vae_cannot_render_are_refused(cli, tmp_path):
    # the CogVideoX VAE renders 1, 8, 9, 16, 17, ... frames exactly; --frames 2 used to render 1 frame silently
    code, _, err = cli("generate", "x", "--frames", "2", "--steps", "1", "-o", tmp_path, "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--frames 2" in err and "would render 1 frame(s)" in err and "1, 8, 9, 16, 17" in err


def test_mochi_steps(cli, tmp_path, list_files):
    code, _, err = cli("generate", "x", "--model", "tiny-mochi", "--steps", "1", "-o", tmp_path)
    assert code == 2 and "--steps must be >= 2 for mochi" in err and "Traceback" not in err
    # two steps with a warm-up: the warm-up call used to take one step and divide by zero in Mochi's schedule
    code, out, err = cli("generate", "x", "--model", "tiny-mochi", "--steps", "2", "--height", "32", "--width", "32",
                         "--frames", "7", "--warmup", "-o", tmp_path / "m.gif", "--no-progress")
    assert code == 0, err
    assert read_media(tmp_path / "m.gif").shape == (7, 32, 32, 3)


@pytest.mark.parametrize("fmt", ["png", "mp4"])
def test_compare_dense_sidecar_psnr_and_eval_agree(fmt, cli, fast, tmp_path):
    """The sidecar labels raw-frame and encoded-file PSNR; eval reads the dense file back (a png contact sheet
    too) and gets the encoded figure (png: lossless, the raw one)."""
    target = tmp_path / f"clip.{fmt}"
    code, _, err = cli("generate", "a red ball", "-o", target, "--compare-dense", "--no-warmup", "--topk", "0.3", *fast)
    assert code == 0, err
    fidelity = json.loads((tmp_path / f"clip.{fmt}.json").read_text())["dense"]["fidelity"]
    assert read_media(tmp_path / f"clip-dense.{fmt}").shape == (9, 64, 64, 3)
    code, _, err = cli("eval", target, "--metrics", "psnr,ssim", "--json", tmp_path / "eval.json")
    assert code == 0, err
    row = json.loads((tmp_path / "eval.json").read_text())["results"][0]
    expected = fidelity["raw_frames"] if fmt == "png" else fidelity["encoded_files"]
    assert fidelity["encoded_files"] is None if fmt == "png" else fidelity["encoded_files"]["format"] == "mp4"
    assert row["psnr"] == pytest.approx(expected["psnr"], rel=1e-9)
    assert row["ssim"] == pytest.approx(expected["ssim"], rel=1e-6)
    if fmt == "mp4":  # two measurements: H.264 changes the figure (which one is lower depends on the model's
        # frames: run 3's flat grey renders encode almost losslessly, 26.36 against 26.33 dB raw at topk 0.3, 1 step)
        assert fidelity["encoded_files"]["psnr"] != pytest.approx(fidelity["raw_frames"]["psnr"], abs=1e-6)


def test_helpers():
    assert slugify("A Red Ball, rolling!") == "a-red-ball-rolling"
    assert slugify("???") == "prompt"
    assert EMBEDDED_MODELS["tiny"] == "cogvideox"


def test_map_reuse_in_a_denoising_loop(cli, tmp_path):
    # the default reuses each layer's map for the next call while its drop masses are reused; --map-reuse 1 never
    shares = {}
    for reuse in ("default", "1"):
        extra = [] if reuse == "default" else ["--map-reuse", reuse]
        out = tmp_path / f"{reuse}.mp4"
        code, _, err = cli("generate", "a red ball rolling", "-o", out, "--steps", "6", "--height", "64", "--width",
                           "64", "--frames", "9", "--no-warmup", "--no-progress", *extra)
        assert code == 0, err
        shares[reuse] = json.loads(out.with_name(out.name + ".json").read_text())["sparsity"]["map_reuse_share"]
    assert 0.0 < shares["default"] <= 0.5 and shares["1"] == 0.0
