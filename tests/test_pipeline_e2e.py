"""The pipeline end to end: a tiny config through snakemake in a temporary folder."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.records import read_record

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

TINY = {
    "seeds": [0, 1],
    "variants": {"full": {}},
    "model": {"layers": 1, "dim": 16, "heads": 2, "mlp_dim": 32},
    "train": {"steps": 30, "batch_size": 16, "eval_every": 10, "warmup_steps": 5},
    "tasks": {
        "listops": {"data": {"n_train": 300, "n_val": 60, "n_test": 60, "min_length": 2,
                             "max_length": 24, "max_depth": 3, "max_args": 4}},
        "image": {"data": {"source": "digits", "max_train": 300}, "train": {"steps": 20}},
    },
}


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    (work / "config.yaml").write_text(yaml.safe_dump(TINY))
    result = snakemake(work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


@pytest.mark.slow
def test_pipeline_writes_records_summary_and_report(pipeline):
    work = pipeline
    records = sorted((work / "results" / "runs").rglob("record.json"))
    assert len(records) == 4  # 2 tasks x 1 variant x 2 seeds
    for path in records:
        rec = read_record(path)
        assert rec["status"] == "ok", rec["message"]
        assert 0.0 <= rec["accuracy"]["test"] <= 1.0
        assert (path.parent / "curve.csv").exists() and (path.parent / "best.pt").exists()
    df = pd.read_csv(work / "results" / "summary.csv")
    assert sorted(zip(df["task"], df["seed"])) == [("image", 0), ("image", 1), ("listops", 0), ("listops", 1)]
    assert (work / "results" / "summary.parquet").exists()

    html = (work / "reports" / "index.html").read_text()
    assert "<table" in html and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html.replace("https://json", "")  # self-contained
    md = (work / "reports" / "summary.md").read_text()
    # accuracy table: one row per task, 'mean ± std (n=2)' per variant, baselines beside
    for task in ("image", "listops"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {task} |"))
        mean = df[df["task"] == task]["test_acc"].mean() * 100
        assert f"{mean:.1f} ± " in row and "(n=2)" in row
    assert (work / "reports" / "figures" / "accuracy_vs_throughput.png").stat().st_size > 1000
    assert "## Environment" in md and "2.13.0" in md


@pytest.mark.slow
def test_rerun_does_nothing_and_deleting_a_record_reruns_only_that_job(pipeline):
    work = pipeline
    assert planned_jobs(snakemake(work, "-n")) == {}
    (work / "results" / "runs" / "listops" / "full" / "seed1" / "record.json").unlink()
    jobs = planned_jobs(snakemake(work, "-n"))
    assert jobs == {"train": 1, "aggregate": 1, "report": 1, "all": 1}
    result = snakemake(work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_record(work / "results" / "runs" / "listops" / "full" / "seed1" / "record.json")["status"] == "ok"
    assert planned_jobs(snakemake(work, "-n")) == {}


@pytest.mark.slow
def test_changing_one_tasks_settings_reruns_only_that_tasks_jobs(pipeline, tmp_path):
    work = pipeline
    cfg = json.loads(json.dumps(TINY))
    cfg["tasks"]["image"]["train"]["steps"] = 25
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    try:
        jobs = planned_jobs(snakemake(work, "-n"))
        assert jobs.get("train") == 2 and "prepare_data" not in jobs  # image x 2 seeds, same data
    finally:
        (work / "config.yaml").write_text(yaml.safe_dump(TINY))


def test_invalid_config_stops_before_any_job(tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["variants"] = {"fulll": {}}
    bad["train"]["lr"] = "fast"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    result = snakemake(tmp_path, "-n", timeout=120)
    assert result.returncode != 0
    err = result.stdout + result.stderr
    assert "unknown variant 'fulll'" in err and "known variants: full" in err
    assert "'train.lr' is 'fast'" in err and "expected number" in err
    assert not (tmp_path / "results").exists()


def test_snakemake_lint_is_clean():
    result = subprocess.run([str(SNAKEMAKE), "--lint", "--snakefile", str(REPO / "Snakefile")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
