"""Where the pipeline's files live, relative to the working directory (one place for the layout)."""
from __future__ import annotations

from pathlib import Path

DATA = Path("data")
RUNS = Path("results/runs")
SUMMARY_CSV = Path("results/summary.csv")
SUMMARY_PARQUET = Path("results/summary.parquet")
REPORTS = Path("reports")


def dataset_file(task: str, key: str) -> Path:
    return DATA / task / key / "dataset.pt"


def run_dir(task: str, variant: str, seed: int) -> Path:
    return RUNS / task / variant / f"seed{seed}"
BENCH = Path("results/bench")
BENCH_CSV = Path("results/bench.csv")
BENCH_REPORT = Path("reports/bench")


def bench_file(variant: str) -> Path:
    return BENCH / f"{variant}.json"
