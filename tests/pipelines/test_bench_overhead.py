"""scripts/bench_overhead.py --tiny: the overhead benchmark runs every code path on the CPU (counts need CUDA)."""

import csv


def test_bench_overhead_tiny(tmp_path, load_script):
    bench = load_script("bench_overhead")
    out = tmp_path / "overhead.csv"
    assert bench.main(["--tiny", "--shapes", "tiny-64", "--settings", "lse topk=0.5", "--finite", "immediate",
                       "deferred", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["finite_check"] for r in rows] == ["immediate", "deferred"]
    assert all(r["shape"] == "tiny-64" and float(r["eager_ms"]) > 0 and r["kernels"] == "" for r in rows)
    # the op counter sees the reference path's aten ops on any device
    assert all(float(r["aten_ops"]) > 10 for r in rows)
