"""Where the pipeline keeps its files, relative to the folder it runs in (the Snakefile's rules
use the same layout). A config's ``results_dir`` and ``reports_dir`` move the results and reports
(``use_folders``, which the Snakefile calls); the prepared data stays in ``data/``."""
from __future__ import annotations

import re
from pathlib import Path

DATA = Path("data")
RUNS = Path("results/runs")
#: tuning (``tune:``): each (task, label)'s trials and the trial selected for its final runs
TUNE = Path("results/tune")
#: self-pretraining (``spt:``): each (task, variant, seed)'s pretraining run, whose weights its fine-tuning starts from
PRETRAIN = Path("results/pretrain")
SUMMARY_CSV = Path("results/summary.csv")
SUMMARY_PARQUET = Path("results/summary.parquet")
REPORTS = Path("reports")
BENCH = Path("results/bench")
BENCH_CSV = Path("results/bench.csv")
BENCH_REPORT = Path("reports/bench")
#: where damaged files go (``attnbench.harness.results.set_aside``): records and sweep JSONs, and prepared data
SET_ASIDE = Path("results/set_aside")
DATA_SET_ASIDE = DATA / "set_aside"


def use_folders(results: str | Path = "results", reports: str | Path = "reports") -> None:
    """Put the results under ``results`` and the reports under ``reports`` (a config's ``results_dir`` and
    ``reports_dir``) for the rest of this process: every path below follows (read them as ``paths.RUNS``)."""
    global RUNS, TUNE, PRETRAIN, SUMMARY_CSV, SUMMARY_PARQUET, REPORTS, BENCH, BENCH_CSV, BENCH_REPORT, SET_ASIDE
    results, reports = Path(results), Path(reports)
    RUNS, TUNE, BENCH, SET_ASIDE = results / "runs", results / "tune", results / "bench", results / "set_aside"
    PRETRAIN = results / "pretrain"
    SUMMARY_CSV, SUMMARY_PARQUET = results / "summary.csv", results / "summary.parquet"
    BENCH_CSV = results / "bench.csv"
    REPORTS, BENCH_REPORT = reports, reports / "bench"


def dataset_file(task: str, key: str) -> Path:
    return DATA / task / key / "dataset.pt"


def dataset_digest_file(dataset: Path) -> Path:
    """Beside a prepared dataset (``dataset.pt`` -> ``dataset.digest.json``): its content digest and its
    modification time when it was prepared (``attnbench prepare`` writes it), so that one prepared again
    with the same content can keep that time."""
    return Path(dataset).with_suffix(".digest.json")


def label_dir(label: str) -> str:
    """A run label as a folder name: brackets and other non-word characters become '-'
    (``distilled[full]`` -> ``distilled-full``)."""
    return re.sub(r"[^\w.-]+", "-", label).strip("-")


def run_dir(task: str, label: str, seed: int) -> Path:
    return RUNS / task / label_dir(label) / f"seed{seed}"


def pretrain_dir(task: str, variant: str, seed: int) -> Path:
    """A self-pretraining run's folder (``results/pretrain/TASK/VARIANT/seedS``)."""
    return PRETRAIN / task / label_dir(variant) / f"seed{seed}"


def trial_dir(task: str, label: str, trial: int) -> Path:
    """A tuning trial's folder (``results/tune/TASK/LABEL/trialN``)."""
    return TUNE / task / label_dir(label) / f"trial{trial}"


def selection_file(task: str, label: str) -> Path:
    """The trial selected for (task, label)'s final runs (``results/tune/TASK/LABEL/selected.json``)."""
    return TUNE / task / label_dir(label) / "selected.json"


def bench_file(variant: str) -> Path:
    return BENCH / f"{variant}.json"
