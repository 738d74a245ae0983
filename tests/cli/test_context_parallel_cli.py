"""``generate`` / ``sweep`` with ``--context-parallel`` (sparge_diffusers.launch): refusals in one line, and a
two-rank gloo render of a tiny Wan pipeline folder that equals the single-process render, written by rank 0 only
with the world size in its sidecar."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch.multiprocessing as mp

from sparge_diffusers.media import read_media

# 1 frame of 128 x 256: a (1, 8, 16) grid, 128 tokens (two 64-token key blocks), one step
# (--device cpu: the forked ranks must not touch CUDA on a GPU machine)
WAN_FAST = ("--device", "cpu", "--steps", "1", "--height", "128", "--width", "256", "--frames", "1",
            "--no-progress", "--topk", "0.5", "--block-n", "64", "--sim-threshold", "none", "--precision", "bf16")


@pytest.fixture(scope="module")
def tiny_wan_dir(tmp_path_factory):
    from sparge_diffusers.pipelines.tiny import tiny_wan_pipeline

    folder = tmp_path_factory.mktemp("tiny-wan")
    tiny_wan_pipeline().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("flags, message", [
    (("--context-parallel", "ring"), "does not support ring attention .* use Ulysses"),
    (("--context-parallel", "ulysses"), "needs several ranks: launch with torchrun"),
    (("--ulysses-anything",), "--ulysses-anything needs --context-parallel ulysses"),
], ids=["ring", "one-rank", "anything-alone"])
@pytest.mark.parametrize("command", ["generate", "sweep"])
def test_bad_context_parallel_flags_fail_in_one_line(cli, tmp_path, monkeypatch, command, flags, message):
    import re

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    target = ("-o", tmp_path / "x.gif") if command == "generate" else ("--out-dir", tmp_path / "sweep")
    code, _, err = cli(command, "a cat", "--model", "tiny-flux", *target, *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def test_world_size_that_does_not_divide_the_heads_is_refused(tmp_path):
    from sparge_diffusers.errors import UsageError
    from sparge_diffusers.launch import Launch
    from sparge_diffusers.models import LoadedModel
    from sparge_diffusers.pipelines.tiny import tiny_transformer

    class Pipe:
        transformer = tiny_transformer("wan", variant="14b", num_layers=1)  # 3 heads

    model = LoadedModel(pipe=Pipe(), family="wan", source="test", embedded=False, device="cpu", dtype=None)
    with pytest.raises(UsageError, match="--context-parallel ulysses: the world size=2 does not divide the 3 "
                                         "attention heads"):
        Launch("ulysses", 0, 2, 0).enable(model)
    with pytest.raises(UsageError, match="not supported for ltx"):
        class LtxPipe:
            transformer = tiny_transformer("ltx", num_layers=1)

        Launch("ulysses", 0, 2, 0).enable(LoadedModel(pipe=LtxPipe(), family="ltx", source="test",
                                                      embedded=False, device="cpu", dtype=None))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, port, argv):
    import torch

    from sparge_diffusers.cli import main

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    code = main(argv)
    assert code == 0, code


@pytest.mark.slow
def test_two_rank_generate_equals_one_process_and_rank0_writes(cli, tiny_wan_dir, tmp_path):
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    args = ["generate", "a cat", "--model", str(tiny_wan_dir), "--format", "gif", *WAN_FAST]
    code, _, err = cli(*args, "-o", single)
    assert code == 0, err
    # fork: the ranks inherit the imported modules (torchrun would import torch and diffusers twice more)
    mp.start_processes(_rank, args=(_free_port(), [*args, "-o", str(parallel), "--context-parallel", "ulysses"]),
                       nprocs=2, join=True, start_method="fork")
    assert sorted(p.name for p in parallel.iterdir()) == ["a-cat-seed0.gif", "a-cat-seed0.gif.json"]
    sidecar = json.loads((parallel / "a-cat-seed0.gif.json").read_text())
    assert sidecar["parallel"] == {"context_parallel": "ulysses", "world_size": 2, "ulysses_anything": False}
    assert sidecar["sparsity"]["policies"] == {"sparse": 2}  # CFG: two forwards of the one sparse layer
    assert json.loads((single / "a-cat-seed0.gif.json").read_text())["parallel"]["world_size"] == 1
    one = read_media(single / "a-cat-seed0.gif").astype(np.float32)
    two = read_media(parallel / "a-cat-seed0.gif").astype(np.float32)
    assert one.shape == two.shape and np.abs(one - two).mean() < 0.5  # uint8 frames: rounding only


@pytest.mark.slow
def test_two_rank_sweep_writes_one_results_file_with_the_world_size(tiny_wan_dir, tmp_path):
    import csv

    out = tmp_path / "sweep"
    argv = ["sweep", "a cat", "--model", str(tiny_wan_dir), "--out-dir", str(out), "--no-warmup", "--metrics",
            "psnr", *[a for a in WAN_FAST if a not in ("--precision", "bf16")], "--precision", "bf16",
            "--context-parallel", "ulysses"]
    mp.start_processes(_rank, args=(_free_port(), argv), nprocs=2, join=True, start_method="fork")
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["config"].split()[0], r["rank"]) for r in rows] == [("dense", "0"), ("topk=0.5", "0")]
    assert float(rows[1]["sparsity"]) > 0.3
    assert json.loads((out / "sweep.json").read_text())["parallel"] == {"context_parallel": "ulysses",
                                                                         "world_size": 2}
    assert not (out / "shards").exists()  # one stream of work, not data-parallel shards
