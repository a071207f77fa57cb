"""The efficiency sweep as pytest-benchmark benchmarks: one per case (variant x backend x scope x
mode x dtype x batch x length). Run through `attnbench bench` or `snakemake bench`; see conftest.py."""
from harness.bench_sweep import describe, run_case


def test_case(benchmark, case, sweep_env, rows):
    row = run_case(case, sweep_env, benchmark)
    rows.append(row)
    print(describe(row), flush=True)
