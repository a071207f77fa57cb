"""The machine's matmul rate (harness/measure/matmul_peak.py): the probe itself, the share of it, and
the efficiency sweep's rows, table and report reading every case against it."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from attnbench.harness.bench import sweep as bench_sweep
from attnbench.harness.bench.files import aggregate_bench, run_sweep, sweep_file
from attnbench.harness.config import validate_config
from attnbench.harness.measure import matmul_peak
from attnbench.harness.measure.matmul_peak import matmul_rate, share_of_peak
from attnbench.harness.report.bench_tables import matmul_peak_line, peak_share_table
from conftest import tiny_config

CPU = torch.device("cpu")
FAST = 0.05  # seconds of timed samples: enough for a rate, short on a shared machine


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_the_probe_returns_positive_rates_and_what_it_measured(keep_threads):
    probe = matmul_rate(CPU, torch.float32, threads=1, size=256, min_seconds=FAST)
    assert probe["gflops"] > 0 and probe["gflops_max"] >= probe["gflops"]
    assert (probe["size"], probe["dtype"], probe["threads"], probe["device"]) == (256, "float32", 1, "cpu")
    assert "torch.mm" in probe["method"] and "2*size^3" in probe["method"]
    assert probe["repeats"] >= matmul_peak.MIN_REPEATS
    json.dumps(probe)  # goes into the sweep's JSON as it is


def test_the_probe_restores_torchs_thread_count(keep_threads, monkeypatch):
    other = 1 if keep_threads != 1 else 2
    probe = matmul_rate(CPU, torch.float32, threads=other, size=128, min_seconds=FAST)
    assert probe["threads"] == other and torch.get_num_threads() == keep_threads
    assert matmul_rate(CPU, size=128, min_seconds=FAST)["threads"] == keep_threads  # None: torch's current count

    seen = []

    def boom(a, b, out, inner):
        seen.append(torch.get_num_threads())
        raise RuntimeError("boom")

    monkeypatch.setattr(matmul_peak, "_timed_sample", boom)
    with pytest.raises(RuntimeError, match="boom"):
        matmul_rate(CPU, threads=other, size=64)
    assert seen == [other] and torch.get_num_threads() == keep_threads  # restored when it fails too


def test_one_thread_rate_is_within_a_sane_factor_of_a_directly_timed_mm(keep_threads):
    """Not a timing test: the probe must count FLOPs and time as a plain loop around torch.mm does."""
    size = 512
    probe = matmul_rate(CPU, torch.float32, threads=1, size=size, min_seconds=0.1)
    torch.set_num_threads(1)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    direct = 2 * size ** 3 / statistics.median(times) / 1e9
    assert 0.2 < probe["gflops"] / direct < 5


@pytest.mark.parametrize(("gflops", "peak", "share"), [
    (50.0, 100.0, 0.5), (150.0, 100.0, 1.5), (0.0, 10.0, 0.0),
    (None, 100.0, None), (50.0, None, None), (50.0, 0.0, None), (50.0, -3.0, None),
    (float("nan"), 100.0, None), (50.0, float("nan"), None),
])
def test_share_of_peak(gflops, peak, share):
    assert share_of_peak(gflops, peak) == share


@pytest.mark.slow
def test_the_command_line_prints_the_probe_as_json():
    out = subprocess.run([sys.executable, "-m", "attnbench.harness.measure.matmul_peak", "--threads", "1",
                          "--dtype", "float32", "--size", "128", "--min-seconds", str(FAST)],
                         capture_output=True, text=True, timeout=120, check=True)
    probe = json.loads(out.stdout)
    assert probe["gflops"] > 0 and probe["threads"] == 1 and probe["dtype"] == "float32"


def test_a_failed_probe_leaves_the_rows_without_a_share(monkeypatch, tmp_path):
    from attnbench.harness.measure import fresh_process

    monkeypatch.setattr(fresh_process, "run_fresh", lambda *a, **k: {"failure": "crash", "error": "worker exit 1"})
    env = bench_sweep.SweepEnv(bench_sweep.BenchConfig(), "cpu", 1, tmp_path)
    peaks = bench_sweep.probe_matmul(env, ["float32", "float32"])
    assert list(peaks) == ["float32"] and peaks["float32"]["gflops"] is None
    assert "worker exit 1" in peaks["float32"]["error"]
    assert bench_sweep.probe_matmul(env, []) == {}


def _df(**extra) -> pd.DataFrame:
    rows = [{"impl": impl, "variant": "full", "backend": "default", "scope": "layer", "mode": "forward",
             "dtype": "float32", "batch": 1, "n": n, "status": "ok" if n < 128 or impl == "window" else "oom",
             "gflops_per_s": 10.0 * n, "device": "cpu", "threads": 1, "source": f"{impl}.json", **extra}
            for impl in ("full", "window") for n in (64, 128)]
    return pd.DataFrame(rows)


def test_report_helpers_read_the_peak_and_do_without_it():
    df = _df(matmul_peak_gflops=1280.0, matmul_peak_method="torch.mm probe")
    df["peak_share"] = df["gflops_per_s"] / df["matmul_peak_gflops"]
    table = peak_share_table(df, "layer", "forward", "float32", 1).set_index("impl")
    assert table.loc["full", "n=64"] == "640 (50%)" and table.loc["full", "n=128"] == "OOM"
    assert table.loc["window", "n=128"] == "1.28e+03 (100%)"
    line = matmul_peak_line(df)
    assert "torch.mm probe" in line and "float32 on cpu, 1 threads: 1.28e+03 GFLOP/s" in line
    assert "median of 2 sweeps" in line  # one probe per variant's sweep
    bare = _df()  # a table from before the probe
    assert "not measured" in matmul_peak_line(bare)
    assert peak_share_table(bare, "layer", "forward", "float32", 1).set_index("impl").loc["full", "n=64"] == "640 (–)"


@pytest.mark.slow
def test_a_tiny_sweep_reads_every_case_against_its_matmul_peak(tmp_path):
    from attnbench.harness.report.render import render_report

    cfg = validate_config(tiny_config(bench={"lengths": [32, 64], "modes": ["forward"], "scopes": ["layer"],
                                             "warmup": 1, "repeats": 2, "backends": {"full": ["default"]}}))
    out = tmp_path / "bench" / "full.json"
    assert run_sweep(sweep_file(cfg, "full", 1, tmp_path / "work"), out) == 0
    probes = json.loads(out.read_text())["machine_info"]["attnbench"]["matmul_peak"]
    assert list(probes) == ["float32"] and probes["float32"]["gflops"] > 0 and probes["float32"]["threads"] == 1
    df = aggregate_bench([out], tmp_path / "bench.csv")
    ok = df[df["status"] == "ok"]
    assert len(ok) == 2
    for _, r in ok.iterrows():
        assert r["matmul_peak_gflops"] == probes["float32"]["gflops"] > 0
        assert math.isclose(r["peak_share"], r["gflops_per_s"] / r["matmul_peak_gflops"], rel_tol=1e-9)
    assert pd.read_csv(tmp_path / "bench.csv")["peak_share"].notna().all()
    render_report(None, tmp_path / "report", tmp_path / "bench.csv")
    for page in ("summary.md", "index.html"):
        text = (tmp_path / "report" / page).read_text()
        assert "matmul peak" in text and "% of matmul peak" in text
