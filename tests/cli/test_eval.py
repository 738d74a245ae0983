"""`sparge-diffusers eval` with tiny CLIP / BLIP folders; missing weights give a one-line message."""

from __future__ import annotations

import json

import pytest

from sparge_diffusers.evaluate import Evaluator, parse_metrics
from sparge_diffusers.errors import UsageError
from sparge_diffusers.media import sidecar_path, write_json, write_media


@pytest.fixture
def rendered(tmp_path, frames):
    """A video with a sidecar naming its prompt and its dense reference (as generate --compare-dense writes)."""
    video, dense = tmp_path / "clip.png", tmp_path / "clip-dense.png"
    info = write_media(video, frames)
    write_media(dense, frames[::-1].copy())
    write_json(sidecar_path(video), {"prompt": "a red ball rolling", "media": info, "dense": {"path": str(dense)}})
    write_json(sidecar_path(dense), {"media": info})
    return video


def test_eval_every_metric(cli, rendered, tiny_clip_dir, tiny_vqa_dir, tmp_path):
    report = tmp_path / "eval.json"
    code, out, err = cli("eval", rendered, "--clip-model", tiny_clip_dir, "--vqa-model", tiny_vqa_dir,
                         "--json", report, "--vqa-frames", "2")
    assert code == 0, err
    row = json.loads(report.read_text())["results"][0]
    assert row["prompt"] == "a red ball rolling" and row["frames"] == 6
    assert 0 <= row["clip_score"] <= 100 and row["clip_t"] <= 100 + 1e-3 and 0 < row["vqa"] < 1
    assert row["psnr"] > 0 and row["ssim"] < 1  # the reference is the reversed video
    assert "clip_score" in out and "LPIPS" in out  # the LPIPS note, one line


def test_eval_env_vars_and_prompt_flag(cli, rendered, tiny_clip_dir, monkeypatch):
    monkeypatch.setenv("SPARGE_CLIP_MODEL", str(tiny_clip_dir))
    code, out, err = cli("eval", rendered, "--prompt", "a cat", "--metrics", "clip,clip-t")
    assert code == 0, err
    assert "clip_t" in out and "vqa" not in out.splitlines()[0]


@pytest.mark.parametrize("args, message", [
    (["--metrics", "clip"], "pass --clip-model PATH or set SPARGE_CLIP_MODEL"),
    (["--metrics", "vqa"], "pass --vqa-model PATH or set SPARGE_VQA_MODEL"),
    (["--metrics", "lpips"], "LPIPS unavailable"),
    (["--metrics", "fid"], "unknown metric"),
    (["--clip-model", "/nowhere/clip"], "does not exist"),
], ids=["clip", "vqa", "lpips", "unknown", "bad-folder"])
def test_eval_missing_weights_one_line(args, message, cli, rendered, monkeypatch, list_files, tmp_path):
    monkeypatch.delenv("SPARGE_CLIP_MODEL", raising=False)
    monkeypatch.delenv("SPARGE_VQA_MODEL", raising=False)
    from sparge_diffusers.metrics import lpips_status

    if "lpips" in args and lpips_status() is None:
        pytest.skip("LPIPS weights are available here")
    before = list_files(tmp_path)
    code, _, err = cli("eval", rendered, "--json", tmp_path / "out.json", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert list_files(tmp_path) == before


def test_eval_missing_file(cli, tmp_path):
    code, _, err = cli("eval", tmp_path / "none.mp4")
    assert code == 2 and "no such media file" in err


def test_parse_metrics_and_auto_evaluator(monkeypatch):
    assert parse_metrics("auto") is None
    assert parse_metrics("CLIP, clip-t,psnr") == ("clip_score", "clip_t", "psnr")
    with pytest.raises(UsageError):
        parse_metrics("fvd")
    monkeypatch.delenv("SPARGE_CLIP_MODEL", raising=False)
    monkeypatch.delenv("SPARGE_VQA_MODEL", raising=False)
    evaluator = Evaluator.create(None)
    assert evaluator.metrics[:2] == ("psnr", "ssim") and evaluator.clip is None
    assert any("SPARGE_CLIP_MODEL" in note for note in evaluator.notes)
