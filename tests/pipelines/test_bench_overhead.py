"""scripts/bench_overhead.py --tiny: the overhead benchmark runs every code path on the CPU (counts need CUDA)."""

import csv
import importlib.util
from pathlib import Path


def test_bench_overhead_tiny(tmp_path):
    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_overhead.py"
    spec = importlib.util.spec_from_file_location("bench_overhead", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "overhead.csv"
    assert bench.main(["--tiny", "--shapes", "tiny-64", "--settings", "lse topk=0.5", "--finite", "immediate",
                       "deferred", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["finite_check"] for r in rows] == ["immediate", "deferred"]
    assert all(r["shape"] == "tiny-64" and float(r["eager_ms"]) > 0 and r["kernels"] == "" for r in rows)
    # the op counter sees the reference path's aten ops on any device
    assert all(float(r["aten_ops"]) > 10 for r in rows)
