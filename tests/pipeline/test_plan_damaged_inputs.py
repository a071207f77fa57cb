"""Planning repairs damaged inputs without losing finished runs: a damaged prepared dataset is prepared
again and the records built on it are kept, a finished run of a killed snakemake keeps its record, a
damaged teacher checkpoint re-trains the teacher (and its student), a damaged sweep JSON is swept again."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from snakemake.persistence.file import FilePersistence
from test_pipeline_e2e import SNAKEMAKE, planned_jobs

from attnbench.harness import cli
from attnbench.harness.core import locks
from attnbench.harness.results.records import read_record
from attnbench.harness.run.distill import TeacherError, load_teacher
from attnbench.tasks.base import load_prepared
from conftest import REPO, TINY_CONFIG, tiny_config

RUNS = Path("results/runs/listops")
TEACHER, STUDENT = RUNS / "full" / "seed0", RUNS / "distilled-full" / "seed0"
RECORDS = [str(TEACHER / "record.json"), str(STUDENT / "record.json")]
# listops/full and its distilled student; no sweep (the sweep check is a dry run)
CONFIG = tiny_config(distill={"students": {"full": {}}}, bench={"enabled": False})


def snakemake(work: Path, *args: str, config: str = "config.yaml") -> subprocess.CompletedProcess:
    """Snakemake on the run records of CONFIG (the repository's profiles/default applies: --rerun-incomplete)."""
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / config), "--cores", "2", *args]
    if not any(a.startswith("results/") or a == "bench" for a in args):
        cmd += RECORDS
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})


def planned(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts of a dry run that succeeded (empty: nothing to do)."""
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return planned_jobs(result)


def state(work: Path) -> dict[str, tuple[int, bytes]]:
    """Each record's modification time and bytes."""
    return {r: ((work / r).stat().st_mtime_ns, (work / r).read_bytes()) for r in RECORDS}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("plan")
    (work / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = snakemake(work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert all(read_record(work / r)["status"] == "ok" for r in RECORDS)
    return work


@pytest.mark.slow
def test_a_damaged_dataset_is_prepared_again_and_costs_no_record(work):
    (dataset,) = (work / "data" / "listops").glob("*/dataset.pt")
    before = state(work)
    dataset.write_bytes(dataset.read_bytes()[:5000])  # truncated (and newer than every record)
    result = snakemake(work)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert f"the prepared data {dataset.relative_to(work)} cannot be read" in out
    assert re.search(r"rule prepare_data:", out) and not re.search(r"rule (train|distill):", out)
    assert state(work) == before  # every record kept, untouched
    params = CONFIG["tasks"]["listops"]["data"]
    assert len(load_prepared(dataset, "listops", params).splits["train"]["labels"]) == params["n_train"]
    (aside,) = (work / "data" / "set_aside" / "listops").glob("*/dataset.*.pt")
    assert aside.stat().st_size == 5000 and "cannot be read" in aside.with_suffix(".reason.txt").read_text()
    (log,) = (work / "logs" / "prepare").rglob("*.log")
    assert "the same content as when it was first prepared" in log.read_text()
    # the next run finds everything up to date: the data got its first time back
    assert planned(snakemake(work, "-n")) == {} and dataset.stat().st_mtime_ns < before[RECORDS[0]][0]


@pytest.mark.slow
def test_a_finished_run_of_a_killed_snakemake_keeps_its_record_and_a_running_one_does_not(work):
    finished, running = RECORDS
    markers = FilePersistence(nolock=True, path=work / ".snakemake")  # what a job's start notes, as Snakemake does
    for record in RECORDS:
        markers._mark_incomplete(record, None)
    lock = locks.try_lock(work / STUDENT / ".lock")  # the student's trainer still holds its run folder
    try:
        dry = snakemake(work, "-n")
    finally:
        locks.release(lock)
        markers._unmark_incomplete(running)
    out = dry.stdout + dry.stderr
    assert f"kept {finished}" in out and f"kept {running}" not in out
    assert planned(dry) == {"distill": 1}  # planned again: that job then refuses, naming the pid
    assert not markers._filter_incomplete_keys([finished])
    # a killed snakemake never noted the finished job's params (its metadata): once the run's settings
    # change, the kept record is set aside so that it is trained again, as Snakemake does a noted one
    markers._delete_record(finished)
    (work / "steps.yaml").write_text(yaml.safe_dump({**CONFIG, "train": {**CONFIG["train"], "steps": 12}}))
    dry = snakemake(work, "-n", config="steps.yaml")
    assert planned(dry) == {"train": 1, "distill": 1} and "made with other settings" in dry.stdout + dry.stderr
    (aside,) = (work / "results" / "set_aside").rglob("record.*.json")
    aside.rename(work / finished)


@pytest.mark.slow
def test_a_damaged_teacher_checkpoint_trains_the_teacher_and_its_student_again(work, tmp_path):
    teacher = work / TEACHER
    best, record = teacher / "best.pt", teacher / "record.json"
    shutil.copy(best, tmp_path / "best.pt")
    shutil.copy(record, tmp_path / "record.json")
    best.write_bytes(best.read_bytes()[:3000])
    try:
        with pytest.raises(TeacherError, match=rf"teacher checkpoint {re.escape(str(best))} cannot be read"):
            load_teacher(best, {}, None, torch.device("cpu"))  # what the student's failed record would say
        dry = snakemake(work, "-n")
        assert planned(dry) == {"train": 1, "distill": 1}
        assert f"its best checkpoint {best.relative_to(work)} cannot be read" in dry.stdout + dry.stderr
        (aside,) = (work / "results" / "set_aside" / "listops" / "full" / "seed0").glob("record.*.json")
        assert "best checkpoint" in aside.with_suffix(".reason.txt").read_text() and not record.exists()
    finally:
        shutil.copy(tmp_path / "best.pt", best)
        shutil.copy(tmp_path / "record.json", record)


@pytest.mark.slow
def test_a_damaged_sweep_json_is_set_aside_and_swept_again(work, capsys):
    config = {**TINY_CONFIG, "bench": {"lengths": [32], "repeats": 2}}
    (work / "bench.yaml").write_text(yaml.safe_dump(config))
    sweep = work / "results" / "bench" / "full.json"
    sweep.parent.mkdir(parents=True, exist_ok=True)
    sweep.write_text('{"attnbench": {"rows": [')
    assert cli.main(["aggregate-bench", "--inputs", str(sweep), "--out", str(work / "bench.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"sweep {sweep} cannot be read" in err and "Traceback" not in err
    dry = snakemake(work, "-n", "results/bench/full.json", config="bench.yaml")
    assert planned(dry) == {"bench_variant": 1} and "set aside results/bench/full.json" in dry.stdout + dry.stderr
    (aside,) = (work / "results" / "set_aside" / "bench").glob("full.*.json")
    assert aside.read_text() == '{"attnbench": {"rows": [' and not sweep.exists()
