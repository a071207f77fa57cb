"""The efficiency sweep as pytest-benchmark benchmarks: one per case (variant x backend x scope x
mode x dtype x batch x length) and round. Run through `attnbench bench` or `snakemake bench`; see conftest.py."""
from attnbench.harness.bench.sweep import describe, run_case


def test_case(benchmark, round_index, case, sweep_env, probes, matmul_peaks, rows):
    row = run_case(case, sweep_env, benchmark, round_index, probes, matmul_peaks)
    rows.append(row)
    print(describe(row), flush=True)
