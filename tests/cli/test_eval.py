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


def test_eval_long_prompt_is_cut_for_vqa(cli, rendered, tiny_vqa_dir, tmp_path):
    """A prompt longer than BLIP's 128 question positions used to crash in its embeddings (raw traceback)."""
    from sparge_diffusers.metrics import load_vqa

    long_prompt = " ".join(["a red ball rolling"] * 60)  # ~240 words, far beyond 128 tokens
    vqa = load_vqa(tiny_vqa_dir)
    question = vqa.fit_question(long_prompt)
    assert vqa.question_tokens(question) <= vqa.max_question_tokens == 128
    assert question.endswith('"? Please answer yes or no.') and "a red ball rolling a red" in question
    report = tmp_path / "eval.json"
    code, _, err = cli("eval", rendered, "--prompt", long_prompt, "--vqa-model", tiny_vqa_dir, "--metrics", "vqa",
                       "--vqa-frames", "2", "--json", report)
    assert code == 0, err
    assert 0 < json.loads(report.read_text())["results"][0]["vqa"] < 1


def test_eval_several_files_reports_each_failure(cli, rendered, frames, tiny_clip_dir, tmp_path):
    """A file without a prompt no longer aborts the run: the others are scored, failures listed, exit 1."""
    bare = tmp_path / "bare.gif"
    write_media(bare, frames)  # no sidecar: no prompt
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    report = tmp_path / "eval.json"
    code, out, err = cli("eval", bare, rendered, broken, "--clip-model", tiny_clip_dir, "--metrics", "clip",
                         "--json", report)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "bare.gif: no prompt" in lines[0] and "broken.mp4" in lines[1]
    assert "2 of 3 file(s) failed; 1 evaluated" in lines[2]
    written = json.loads(report.read_text())
    assert [row["file"] for row in written["results"]] == [str(rendered)]
    assert 0 <= written["results"][0]["clip_score"] <= 100
    assert [f["file"] for f in written["failures"]] == [str(bare), str(broken)]
    assert "clip.png" in out


def test_eval_reads_a_dense_sheet_without_sidecar(cli, tmp_path, frames):
    """A reference png contact sheet without its sidecar is split like the file it is compared with."""
    video, dense = tmp_path / "clip.png", tmp_path / "clip-dense.png"
    info = write_media(video, frames)
    write_media(dense, frames)  # no sidecar
    write_json(sidecar_path(video), {"prompt": "p", "media": info, "dense": {"path": str(dense)}})
    report = tmp_path / "eval.json"
    code, _, err = cli("eval", video, "--metrics", "psnr", "--json", report)
    assert code == 0, err
    assert json.loads(report.read_text())["results"][0]["psnr"] is None  # identical: inf, written as null
