"""scripts/bench_e2e.py --tiny: the end-to-end benchmark runs on the CPU with a tiny config and writes its CSV."""

import csv

import pytest


def test_bench_e2e_tiny(tmp_path, load_script):
    bench = load_script("bench_e2e")
    out = tmp_path / "e2e"
    assert bench.main(["--tiny", "--models", "tiny-wan", "--repeats", "1", "--settings", "lse:0.5",
                       "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert [(r["mode"], r["setting"]) for r in rows] == [
        ("eager", "stock"), ("eager", "topk=1 (exactness)"), ("eager", "lse topk=0.5 hilbert")]
    assert float(rows[1]["rel_l1_vs_stock"]) < 1e-3  # topk = 1: the fp32 reference path, rounding only
    assert float(rows[2]["sparsity"]) > 0.3
    text = (tmp_path / "e2e.md").read_text()
    assert sum(line.startswith("| tiny-wan |") for line in text.splitlines()) == 3
    assert "Never slower" in text


def test_never_slower_check_flags_rows_below_stock(load_script):
    bench = load_script("bench_e2e")
    rows = [dict(model="m", mode="eager", setting="stock", speedup=""),
            dict(model="m", mode="eager", setting="lse topk=0.5 hilbert", speedup=1.2, note=""),
            dict(model="m", mode="compiled", setting="stock", speedup=""),
            dict(model="m", mode="compiled", setting="lse topk=0.5 hilbert", speedup=0.995, note="x"),
            dict(model="n", setting="failed", note="boom")]
    slower = bench.slower_than_stock(rows)
    assert [(r["mode"], r["speedup"]) for r in slower] == [("compiled", 0.995)]
    assert rows[3]["note"] == "slower than stock; x" and rows[1]["note"] == ""
    assert bench.slower_than_stock(rows) == slower and rows[3]["note"] == "slower than stock; x"  # idempotent
    # within stock's own spread in the run (timed before and after the Sparge rows): not flagged
    noisy = [dict(model="m", mode="compiled", setting="lse topk=0.5 hilbert", speedup=0.992, stock_spread=0.009,
                  note=""),
             dict(model="m", mode="compiled", setting="lse topk=0.3 hilbert", speedup=0.99, stock_spread=0.009,
                  note="")]
    assert [r["speedup"] for r in bench.slower_than_stock(noisy)] == [0.99]


@pytest.mark.slow  # 24 s on the shared 2-core machine: two torch.compile runs (eager backend)
def test_bench_e2e_tiny_compile_reports_compile_time_breaks_and_peak(tmp_path, load_script):
    """--tiny --compile: eager and compiled, stock and Sparge in one run, with compile time, graph breaks (0) and
    the eager peak memory against stock (CPU: LiveBytes)."""
    bench = load_script("bench_e2e")
    out = tmp_path / "e2e"
    assert bench.main(["--tiny", "--compile", "--compile-last-only", "--models", "tiny-ltx", "--repeats", "1",
                       "--settings", "lse:0.5", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert [(r["mode"], r["setting"]) for r in rows] == [
        ("eager", "stock"), ("eager", "topk=1 (exactness)"), ("eager", "lse topk=0.5 hilbert"),
        ("compiled", "stock"), ("compiled", "lse topk=0.5 hilbert")]
    compiled = rows[3:]
    assert all(r["compile_s"] != "" and r["graph_breaks"] == "0" for r in compiled)
    assert all(float(r["peak_gib"]) > 0 and 0.5 < float(r["peak_vs_stock"]) < 2.0 for r in rows[1:3])
    # the compiled Sparge model computes what the eager one does
    assert abs(float(compiled[1]["rel_l1_vs_stock"]) - float(rows[2]["rel_l1_vs_stock"])) < 1e-3


def test_speed_ups_are_against_stock_timed_before_and_after(load_script):
    bench = load_script("bench_e2e")
    rows = [dict(model="m", mode="eager", setting="stock", step_ms=100.0, speedup="", note=""),
            dict(model="m", mode="eager", setting="lse topk=0.5 hilbert", step_ms=90.0, speedup=1.111, note=""),
            dict(model="m", mode="compiled", setting="lse topk=0.5 hilbert", step_ms=50.0, speedup=2.0, note=""),
            dict(model="n", mode="eager", setting="lse topk=0.5 hilbert", step_ms=90.0, speedup=1.5, note="")]
    bench.rebase(rows, "m", "eager", 100.0, 104.0)
    assert rows[1]["speedup"] == round(102.0 / 90.0, 3)
    assert rows[2]["speedup"] == 2.0 and rows[3]["speedup"] == 1.5  # other modes and models untouched
    assert "104.00 ms (1.04x)" in rows[0]["note"] and rows[0]["speedup"] == ""
    assert rows[1]["stock_spread"] == rows[0]["stock_spread"] == round(4.0 / 102.0, 4) and "stock_spread" not in rows[3]
