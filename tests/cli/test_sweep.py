"""`sparge-diffusers sweep` end to end on the embedded tiny pipeline: CSV + PNG + report, resume, ranks."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from sparge_diffusers.config import SpargeConfig
from sparge_diffusers.errors import UsageError
from sparge_diffusers.sweep import (DENSE_LABEL, config_label, expand_grid, merge_rows, rank_info, read_rows,
                                    split_work, summarize)

GRID = ("--topk", "0.5", "0.25", "--no-warmup")


def _rows(folder):
    with open(folder / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_sweep_end_to_end_and_resume(cli, fast, tmp_path, tiny_clip_dir, tiny_vqa_dir):
    out = tmp_path / "sweep"
    args = ("sweep", "a red ball rolling", "a blue cube", "--out-dir", out, *GRID, *fast, "--model", "tiny",
            "--clip-model", tiny_clip_dir, "--vqa-model", tiny_vqa_dir, "--vqa-frames", "2")
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "6 render(s), 0 already done" in stdout
    rows = _rows(out)
    assert len(rows) == 6
    labels = [DENSE_LABEL] + [f"topk={k} sim=off pv=off dense_steps=0 hilbert int8-fp8 mixed kblock=64"
                              for k in ("0.25", "0.5")]
    assert sorted({r["config"] for r in rows}) == sorted(labels)
    sparse = [r for r in rows if r["mode"] == "sparse"]
    for row in sparse:
        assert float(row["seconds"]) > 0 and float(row["speedup"]) > 0
        assert 0.0 < float(row["sparsity"]) < 1.0 and row["backend"]
        assert row["psnr"] and 0.0 < float(row["ssim"]) <= 1.0
        assert row["clip_score"] and row["clip_t"] and 0.0 < float(row["vqa"]) < 1.0
    by_topk = {r["topk"]: float(r["sparsity"]) for r in sparse if r["prompt"] == "a blue cube"}
    assert by_topk["0.25"] > by_topk["0.5"]
    assert (out / "quality_vs_speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "quality_vs_speed.png" in report and "CLIPScore" in report and "| `dense` |" in report

    # second run: every row is done; a new grid value renders only its own rows (the dense frames are cached)
    code, stdout, err = cli(*args)
    assert code == 0 and "0 render(s), 6 already done" in stdout, err
    code, stdout, err = cli(*args, "--topk", "0.5", "0.25", "0.1")
    assert code == 0 and "2 render(s), 6 already done" in stdout, err
    assert len(_rows(out)) == 8
    assert all(r["psnr"] and r["clip_score"] for r in _rows(out) if r["mode"] == "sparse")


def test_sweep_refuses_other_settings_and_overwrites(cli, fast, tmp_path, list_files):
    out = tmp_path / "sweep"
    assert cli("sweep", "p", "--out-dir", out, "--topk", "0.5", "--no-warmup", *fast)[0] == 0
    before = list_files(out)
    code, _, err = cli("sweep", "p", "--out-dir", out, "--topk", "0.5", "--no-warmup", "--steps", "2", *fast[2:])
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1
    assert list_files(out) == before
    code, stdout, err = cli("sweep", "p", "--out-dir", out, "--topk", "0.5", "--no-warmup", "--steps", "2",
                            *fast[2:], "--overwrite")
    assert code == 0 and "2 render(s), 0 already done" in stdout, err


def test_sweep_split_across_ranks(cli, fast, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    prompts = ("p one", "p two")  # round robin: rank 0 renders the first, rank 1 the second
    for rank in (1, 0):  # rank 0 merges once every rank left its done-marker
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        code, stdout, err = cli("sweep", *prompts, "--out-dir", out, "--topk", "0.5", "--no-warmup", *fast,
                                "--merge-timeout", "5")
        assert code == 0, err
        assert f"rank {rank}/2" in stdout
    rows = _rows(out)
    assert len(rows) == 4
    assert {r["prompt"]: r["rank"] for r in rows} == {"p one": "0", "p two": "1"}
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "rank0-of-2.done", "rank1-of-2.done", "results.rank0-of-2.csv", "results.rank1-of-2.csv"]
    assert (out / "report.md").is_file() and (out / "quality_vs_speed.png").is_file()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    code, stdout, _ = cli("sweep", "--out-dir", out, "--merge-only")
    assert code == 0 and "merged" in stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "nowhere"], "no such folder"),
    (["--topk", "0"], "topk must be in (0, 1]"),
    (["--frames", "0"], "--frames must be >= 1"),
    (["--steps", "-1"], "--steps must be >= 1"),
    (["--pv-threshold", "3"], "pv_threshold"),
    (["--metrics", "vqa"], "SPARGE_VQA_MODEL"),
    (["--prompts-file", "/nowhere.txt"], "cannot read --prompts-file"),
], ids=["model", "topk", "frames", "steps", "lambda", "vqa-weights", "prompts-file"])
def test_sweep_bad_inputs(args, message, cli, tmp_path, list_files, monkeypatch):
    monkeypatch.delenv("SPARGE_VQA_MODEL", raising=False)
    code, _, err = cli("sweep", "p", "--out-dir", tmp_path / "sweep", "--no-progress", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert list_files(tmp_path) == []


def test_sweep_unwritable_out_dir(cli, tmp_path, list_files):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = cli("sweep", "p", "--out-dir", blocker / "sweep")
    assert code == 2 and "not a directory" in err
    assert list_files(tmp_path) == ["a-file"]


def test_grid_and_ranks():
    configs = expand_grid([0.5, 0.3], [0.9], [None], [None, -10.0], [0, 1], ["hilbert", "none"], ["int8-fp8"])
    assert len(configs) == 3 * 2 * 2 * 2
    assert configs[0] == SpargeConfig(topk=0.5, sim_threshold=None)
    tau = [c for c in configs if c.topk is None]
    assert tau and all(c.cdf_threshold == 0.9 for c in tau)
    assert config_label(configs[0]) == "topk=0.5 sim=off pv=off dense_steps=0 hilbert int8-fp8 mixed"
    # map_reuse 1 (every call predicts, as before map_reuse existed) is not in the label; it is an axis of the grid,
    # and by default 2 for ε and 1 for top-k
    reuse = expand_grid([0.5], [], [None], target_error=[0.05], map_reuse=[None, 1, 4])
    assert [(c.selection.rule, c.map_reuse_calls) for c in reuse] == [("topk", 1), ("topk", 4), ("budget", 2),
                                                                      ("budget", 1), ("budget", 4)]
    assert [config_label(c).split("mixed")[1] for c in reuse] == ["", " map_reuse=4", " map_reuse=2", "",
                                                                  " map_reuse=4"]
    with pytest.raises(UsageError):
        expand_grid([], [])
    budgets = expand_grid([], [], [None], target_error=[0.05, 0.02], calibration=[None, "cal.json"])
    assert [config_label(c).split(" sim")[0] for c in budgets] == ["eps=0.05", "eps=0.05 calibrated", "eps=0.02",
                                                                    "eps=0.02 calibrated"]
    assert all(c.selection.rule == "budget" for c in budgets) and budgets[1].calibration == "cal.json"
    predictors = expand_grid([0.5], [], [None], target_error=[0.05], predictor=["lse", "mixed"])
    assert [(c.selection.rule, c.predictor) for c in predictors] == [("topk", "lse"), ("topk", "mixed"),
                                                                     ("budget", "lse"), ("budget", "mixed")]
    # lse, the default when labels were introduced, is not in the label (older results folders keep their keys)
    assert [" mixed" in config_label(c) for c in predictors] == [False, True, False, True]
    assert rank_info({}) == (0, 1, 0)
    assert rank_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(UsageError):
        rank_info({"RANK": "4", "WORLD_SIZE": "4"})
    assert split_work(list(range(7)), 1, 3) == [1, 4]


def test_merge_and_summary(tmp_path):
    dense = {"prompt": "p", "seed": "0", "config": DENSE_LABEL, "mode": "dense", "seconds": "2.0"}
    sparse = {"prompt": "p", "seed": "0", "config": "c", "mode": "sparse", "seconds": "1.0", "speedup": "2.0",
              "sparsity": "0.5", "psnr": "inf", "ssim": "1"}
    newer = dict(sparse, seconds="0.5", speedup="4.0")
    rows = merge_rows([sparse, dense], [newer])
    assert [r["config"] for r in rows] == [DENSE_LABEL, "c"] and rows[1]["seconds"] == "0.5"
    summary = {e["config"]: e for e in summarize(rows)}
    assert summary[DENSE_LABEL]["speedup"] == 1.0 and summary["c"]["speedup"] == 4.0
    assert summary["c"]["psnr"] == float("inf")
    assert read_rows(tmp_path / "missing.csv") == []


def test_sweep_refuses_other_metric_models(cli, fast, tmp_path, tiny_clip_dir, list_files):
    """Resuming with another CLIP folder would put two models' CLIPScores in one column: refused."""
    import json
    import shutil

    other_clip = tmp_path / "other-clip"
    shutil.copytree(tiny_clip_dir, other_clip)
    out = tmp_path / "sweep"
    base = ("sweep", "p", "--out-dir", out, "--topk", "0.5", "--no-warmup", *fast, "--metrics", "clip,psnr")
    code, _, err = cli(*base, "--clip-model", tiny_clip_dir)
    assert code == 0, err
    meta = json.loads((out / "sweep.json").read_text())["metrics"]
    assert meta["clip_model"] == str(tiny_clip_dir.resolve()) and meta["metrics"] == ["clip_score", "psnr"]
    before = list_files(out)
    for extra, flag in ((["--clip-model", other_clip], "--clip-model"),
                        (["--clip-model", tiny_clip_dir, "--metrics", "clip,clip-t,psnr"], "--metrics")):
        code, _, err = cli(*base, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "other settings" in err and flag in err
    assert list_files(out) == before
    code, stdout, err = cli(*base, "--clip-model", tiny_clip_dir)  # the same models resume
    assert code == 0 and "0 render(s), 2 already done" in stdout, err
    assert f"CLIP `{tiny_clip_dir.resolve()}`" in (out / "report.md").read_text()


def test_plot_one_style_per_config_in_every_panel():
    """24 configs, one of them without a PSNR: every config keeps its colour and marker in every panel, the pairs
    are unique, and the configs are explained once, in a legend beside the panels (no per-point long labels)."""
    from matplotlib.colors import to_rgba

    from sparge_diffusers.sweep import quality_figure

    configs = expand_grid([0.7, 0.5, 0.3], [], [None], [None, -20.0], [0, 2], ["hilbert", "none"], ["int8-fp8"])
    assert len(configs) == 24
    summary = [{"config": DENSE_LABEL, "speedup": 1.0, "psnr": float("inf"), "ssim": 1.0, "clip_score": 25.0}]
    for index, config in enumerate(configs):
        summary.append({"config": config_label(config), "speedup": 1.0 + index / 20, "sparsity": index / 30,
                        "psnr": None if index == 0 else 30.0 + index, "ssim": 0.9, "clip_score": 20.0 + index})
    figure = quality_figure(summary)
    panels = [axes for axes in figure.axes if axes.collections]
    assert len(panels) == 3  # psnr, ssim, clip_score
    styles = {}
    for axes in panels:
        for collection in axes.collections:
            label = collection.get_label()
            style = (tuple(np.round(collection.get_facecolor()[0], 4)), collection.get_paths()[0].vertices.tobytes())
            assert styles.setdefault(label, style) == style, label  # the same style in every panel
        assert all(len(text.get_text()) <= 3 for text in axes.texts)  # numbers, not long labels
    assert len(styles) == 25 and len(set(styles.values())) == 25
    assert tuple(np.round(to_rgba("black"), 4)) == styles[DENSE_LABEL][0]
    legends = [axes.get_legend() for axes in figure.axes if axes.get_legend() is not None]
    assert len(legends) == 1 and len(legends[0].get_texts()) == 25
    assert "all: sim=off int8-fp8" in legends[0].get_title().get_text()  # shared parts said once
    assert not any(axes.collections for axes in figure.axes if axes.get_legend() is not None)  # legend outside
