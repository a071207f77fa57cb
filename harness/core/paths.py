"""Where the pipeline keeps its files, relative to the folder it runs in (the Snakefile's rules
use the same layout)."""
from __future__ import annotations

import re
from pathlib import Path

DATA = Path("data")
RUNS = Path("results/runs")
SUMMARY_CSV = Path("results/summary.csv")
SUMMARY_PARQUET = Path("results/summary.parquet")
REPORTS = Path("reports")
BENCH = Path("results/bench")
BENCH_CSV = Path("results/bench.csv")
BENCH_REPORT = Path("reports/bench")


def dataset_file(task: str, key: str) -> Path:
    return DATA / task / key / "dataset.pt"


def label_dir(label: str) -> str:
    """A run label as a folder name: brackets and other non-word characters become '-'
    (``distilled[full]`` -> ``distilled-full``)."""
    return re.sub(r"[^\w.-]+", "-", label).strip("-")


def run_dir(task: str, label: str, seed: int) -> Path:
    return RUNS / task / label_dir(label) / f"seed{seed}"


def bench_file(variant: str) -> Path:
    return BENCH / f"{variant}.json"
