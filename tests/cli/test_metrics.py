"""Every metric on tiny random CLIP / BLIP models built from configs (no weights, no network)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparge_diffusers.errors import MissingWeightsError, UsageError
from sparge_diffusers.metrics import (CLIP_ENV, VQA_ENV, clip_score, clip_t_consistency, load_clip, load_vqa,
                                      lpips, lpips_status, psnr, ssim, vqa_question, vqa_score)


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_clip(tiny_clip_dir)


@pytest.fixture(scope="module")
def vqa(tiny_vqa_dir):
    return load_vqa(tiny_vqa_dir)


def test_clip_score_in_range_and_deterministic(clip, frames):
    score = clip_score(frames, "a red ball rolling", clip)
    assert 0.0 <= score <= 100.0
    assert clip_score(frames, "a red ball rolling", clip) == pytest.approx(score)


def test_clip_score_matches_direct_cosine(clip, frames):
    # torchmetrics' CLIPScore (through the callable) equals max(100 cos, 0) averaged over frames
    cos = (clip.image_embeddings(frames) @ clip.text_embeddings(["a red ball"]).T).squeeze(-1)
    expected = float((100 * cos).clamp_min(0).mean())
    assert clip_score(frames, "a red ball", clip) == pytest.approx(expected, abs=1e-3)


def test_clip_t_consistency(clip, frames):
    static = np.repeat(frames[:1], 4, axis=0)
    assert clip_t_consistency(static, clip) == pytest.approx(100.0, abs=1e-3)
    moving = clip_t_consistency(frames, clip)
    assert -100.0 <= moving <= 100.0 + 1e-3
    assert clip_t_consistency(frames[:1], clip) is None


def test_vqa_score_is_a_probability(vqa, frames):
    score = vqa_score(frames, "a red ball rolling", vqa, max_frames=3)
    assert 0.0 < score < 1.0
    yes = vqa.answer_probability(frames[:2], vqa_question("a red ball"), "yes")
    no = vqa.answer_probability(frames[:2], vqa_question("a red ball"), "no")
    assert yes.shape == (2,) and float((yes + no).max()) <= 1.0 + 1e-5


def test_vqa_question_template():
    assert vqa_question("a red ball rolling.") == 'Does this figure show "a red ball rolling"? Please answer yes or no.'


def test_psnr_ssim(frames):
    assert psnr(frames, frames) == math.inf
    assert ssim(frames, frames) == pytest.approx(1.0, abs=1e-4)
    noise = np.random.default_rng(0).integers(-8, 9, frames.shape)
    noisy = np.clip(frames.astype(int) + noise, 0, 255).astype(np.uint8)
    assert 20.0 < psnr(noisy, frames) < 50.0
    assert 0.0 < ssim(noisy, frames) < 1.0
    with pytest.raises(UsageError, match="shapes"):
        psnr(frames[:2], frames)


def test_ssim_skimage_fallback_agrees(monkeypatch):
    # textured frames: on flat, clipped content the two libraries' border handling differs by a few hundredths
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 256, (3, 40, 48, 3)).astype(np.uint8)
    noisy = np.clip(clean.astype(int) + rng.integers(-20, 21, clean.shape), 0, 255).astype(np.uint8)
    expected = ssim(noisy, clean)
    import sys

    monkeypatch.setitem(sys.modules, "torchmetrics.functional.image", None)  # import fails -> scikit-image
    assert ssim(noisy, clean) == pytest.approx(expected, abs=1e-3)


def test_lpips_gives_a_one_line_reason_when_unavailable(frames):
    reason = lpips_status()
    if reason is None:
        pytest.skip("LPIPS weights are available on this machine")
    assert "\n" not in reason and reason.startswith("LPIPS skipped")
    with pytest.raises(UsageError):
        lpips(frames, frames)


@pytest.mark.parametrize("loader, env", [(load_clip, CLIP_ENV), (load_vqa, VQA_ENV)], ids=["clip", "vqa"])
def test_missing_weights_message(loader, env, monkeypatch, tmp_path):
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(MissingWeightsError, match=env) as error:
        loader()
    assert "\n" not in str(error.value)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        loader(tmp_path / "nowhere")
    with pytest.raises(MissingWeightsError, match="no config.json"):
        loader(tmp_path)


def test_env_var_and_wrong_model_kind(tiny_clip_dir, tiny_vqa_dir, monkeypatch):
    monkeypatch.setenv(CLIP_ENV, str(tiny_clip_dir))
    assert load_clip().path == str(tiny_clip_dir)
    with pytest.raises(MissingWeightsError, match="CLIPModel"):
        load_vqa(tiny_clip_dir)
    with pytest.raises(MissingWeightsError, match="not a CLIP model"):
        load_clip(tiny_vqa_dir)
