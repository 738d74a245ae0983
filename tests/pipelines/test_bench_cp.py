"""scripts/bench_cp.py --tiny: the context-parallel benchmark runs on the CPU, one process and two gloo ranks, and
the 2-rank outputs match the 1-process outputs (so a typo cannot wait for the GPU run to show)."""

import csv
import os
import socket

import pytest
import torch.multiprocessing as mp

# fp32 on the CPU, the same block maps per head: measured 0.0 (bitwise) for stock and lse:0.5
REL_L1_2_VS_1 = 1e-5


def _rank(rank, port, argv, load_script):
    import torch

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    assert load_script("bench_cp").main(argv) == 0  # each rank loads its own copy


@pytest.mark.slow
def test_bench_cp_tiny_one_and_two_ranks(tmp_path, monkeypatch, load_script):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    out = str(tmp_path / "cp")
    argv = ["--tiny", "--repeats", "1", "--settings", "lse:0.5", "--out", out]
    assert load_script("bench_cp").main(argv) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, argv, load_script), nprocs=2, join=True, start_method="fork")
    one = list(csv.DictReader(open(f"{out}-w1.csv")))
    two = list(csv.DictReader(open(f"{out}-w2.csv")))
    assert [r["setting"] for r in one] == [r["setting"] for r in two] == ["stock", "lse:0.5"]
    assert {r["world_size"] for r in two} == {"2"} and len(two[0]["peak_gib_per_rank"].split()) == 2
    for row in two:
        assert float(row["rel_l1_vs_1gpu"]) < REL_L1_2_VS_1, row
        assert float(row["scaling_efficiency"]) > 0
    assert float(two[1]["sparsity"]) > 0.3
    assert (tmp_path / "cp.md").read_text().count("tiny-wan") == 4
