"""`sparge-diffusers demo`: a small run gives finite rows; impossible sizes fail in one line naming the flag."""

from __future__ import annotations

import pytest
import torch


def test_demo_small_run(cli):
    code, out, err = cli("demo", "--grid", "1", "4", "4", "--heads", "1", "--text-tokens", "8", "--topk", "0.5",
                         "--precision", "int8-fp16", "--device", "cpu")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith(("dense", "topk"))]
    assert len(rows) == 2 and "nan" not in out.lower()


@pytest.mark.parametrize("args, message", [
    (["--grid", "0", "4", "4"], "--grid takes three sizes T H W, each >= 1, got 0 4 4"),
    (["--grid", "2", "-1", "4"], "--grid takes three sizes T H W, each >= 1"),
    (["--topk", "0"], "--topk values must be in (0, 1], got 0"),
    (["--topk", "0.5", "1.5"], "--topk values must be in (0, 1], got 1.5"),
    (["--heads", "0"], "--heads must be >= 1, got 0"),
    (["--text-tokens", "-1"], "--text-tokens must be >= 0, got -1"),
    (["--device", "cuda"], "--device cuda: CUDA is not available"),
    (["--device", "gpu"], "--device 'gpu' is not a torch device"),
    (["--grid", "64", "64", "64"], "GiB for the dense oracle"),
], ids=["grid-zero", "grid-negative", "topk-zero", "topk-above-one", "heads", "text-tokens", "cuda", "bad-device",
        "too-big"])
def test_demo_bad_arguments_one_line(args, message, cli):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out, err = cli("demo", *args)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert out == ""
