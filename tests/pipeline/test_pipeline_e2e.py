"""The pipeline end to end: a tiny config through snakemake in a temporary folder."""
from __future__ import annotations

import json
import re
import subprocess
import zipfile

import pandas as pd
import pytest
import torch
import yaml

from attnbench.harness.results.records import read_record
from conftest import REPO
from snakemake_runs import SNAKEMAKE, TINY, empty_hf_cache, planned_jobs, planned_wildcards, snakemake


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
    assert len(records) == 8  # 2 tasks x 2 variants x 2 seeds
    for path in records:
        rec = read_record(path)
        assert rec["status"] == "ok", rec["message"]
        assert 0.0 <= rec["accuracy"]["test"] <= 1.0
        assert (path.parent / "curve.csv").exists() and (path.parent / "best.pt").exists()
        if rec["method"] == "distill":  # its teacher: the full run of the same task and seed
            assert rec["label"] == "distilled[full]" and path.parent.parent.name == "distilled-full"
            assert rec["teacher"]["run_id"] == f"{rec['task']}/full/seed{rec['seed']}"
            assert (path.parent / rec["teacher"]["checkpoint"]).resolve() == (
                work / "results" / "runs" / rec["task"] / "full" / f"seed{rec['seed']}" / "best.pt").resolve()
            assert (rec["config"]["model"]["layers"], rec["teacher"]["layers"]) == (1, 2)
        else:
            assert "teacher" not in rec and rec["label"] == rec["variant"] == "full"
    df = pd.read_csv(work / "results" / "summary.csv")
    assert sorted(zip(df["task"], df["variant"], df["seed"], strict=True)) == [
        (t, v, s) for t in ("image", "listops") for v in ("distilled[full]", "full") for s in (0, 1)]
    distilled = df[df["variant"] == "distilled[full]"]
    assert distilled["teacher_test_acc"].notna().all() and (distilled["params"] < distilled["teacher_params"]).all()
    assert (distilled["attention"] == "full").all() and (distilled["method"] == "distill").all()
    assert distilled["published_as"].isna().all()  # a student is not LRA's Transformer
    assert (df[df["variant"] == "full"]["published_as"] == "Transformer").all()
    assert df[df["variant"] == "full"]["teacher_run_id"].isna().all()
    assert (work / "results" / "summary.parquet").exists()
    bench = pd.read_csv(work / "results" / "bench.csv")  # the sweep: full on its default and math kernels
    assert sorted(zip(bench["impl"], bench["n"], bench["status"], strict=True)) == [
        ("full", 32, "ok"), ("full", 64, "ok"), ("full [math]", 32, "ok"), ("full [math]", 64, "ok")]
    assert json.loads((work / "results" / "bench" / "full.json").read_text())["benchmarks"]  # pytest-benchmark's

    html = (work / "reports" / "index.html").read_text()
    assert "<table" in html and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html.replace("https://json", "")  # self-contained
    md = (work / "reports" / "summary.md").read_text()
    # accuracy table: one row per task, 'mean ± std (n=2)' per variant, baselines beside
    for task in ("image", "listops"):
        row = next(line for line in md.splitlines() if line.startswith(f"| {task} |"))
        for variant in ("distilled[full]", "full"):
            mean = df[(df["task"] == task) & (df["variant"] == variant)]["test_acc"].mean() * 100
            assert f"{mean:.1f} ± " in row, (variant, row)
        assert row.count("(n=2)") == 2
    assert (work / "reports" / "figures" / "accuracy_vs_throughput.png").stat().st_size > 1000

    assert "## About this run" in md and torch.__version__.split("+")[0] in md
    assert "Efficiency sweep" in md and "Efficiency sweep" in html
    # the distillation section: accuracy kept and speed gained per task, versus the teacher
    assert "<h2 id='distillation'>Distillation</h2>" in html and "accuracy kept" in html
    section = md.split("## Distillation", 1)[1].split("## Runs", 1)[0]
    for task in ("image", "listops"):
        row = next(line for line in section.splitlines()
                   if line.startswith(f"| {task} | distilled[full] | full | 1/2 | full |"))
        pairs = distilled[distilled["task"] == task]
        kept = (pairs["test_acc"] / pairs["teacher_test_acc"]).mean() * 100
        assert "| 2/2 |" in row and f"| {kept:.1f} |" in row, row


@pytest.mark.slow
def test_rerun_does_nothing_and_deleting_a_record_reruns_only_that_job(pipeline):
    work = pipeline
    assert planned_jobs(snakemake(work, "-n")) == {}
    runs = work / "results" / "runs" / "listops"
    student = runs / "distilled-full" / "seed0" / "record.json"
    student.rename(student.with_suffix(".bak"))  # a student alone: only its job
    try:
        assert planned_jobs(snakemake(work, "-n")) == {"distill": 1, "aggregate": 1, "report": 1, "all": 1}
    finally:
        student.with_suffix(".bak").rename(student)
    # a teacher: its job, and then (the DAG edge) its student's of the same task and seed
    (runs / "full" / "seed1" / "record.json").unlink()
    dry = snakemake(work, "-n")
    assert planned_jobs(dry) == {"train": 1, "distill": 1, "aggregate": 1, "report": 1, "all": 1}
    assert planned_wildcards(dry, "train") == [{"task": "listops", "variant": "full", "seed": "1"}]
    assert planned_wildcards(dry, "distill") == [{"task": "listops", "variant": "full", "seed": "1"}]
    result = snakemake(work)
    assert result.returncode == 0, result.stderr[-3000:]
    teacher = read_record(runs / "full" / "seed1" / "record.json")
    student = read_record(runs / "distilled-full" / "seed1" / "record.json")
    assert teacher["status"] == student["status"] == "ok"
    assert student["teacher"]["config_hash"] == teacher["config_hash"]
    assert student["teacher"]["test_acc"] == teacher["accuracy"]["test"]  # distilled from the new teacher
    assert planned_jobs(snakemake(work, "-n")) == {}


@pytest.mark.slow
def test_unreadable_records_are_set_aside_and_their_runs_trained_again(pipeline):
    work = pipeline
    students = work / "results" / "runs" / "image" / "distilled-full"
    truncated, binary = students / "seed0" / "record.json", students / "seed1" / "record.json"
    truncated.write_text(truncated.read_text()[:100])
    binary.write_bytes(b"\xff" + binary.read_bytes())
    dry = snakemake(work, "-n")  # planning sets them aside: their runs are planned again
    assert planned_jobs(dry) == {"distill": 2, "aggregate": 1, "report": 1, "all": 1}
    err = dry.stdout + dry.stderr
    assert f"set aside the unreadable {truncated.relative_to(work)}" in err and "not UTF-8" in err
    aside = sorted((work / "results" / "set_aside" / "image" / "distilled-full").rglob("record.*.json"))
    assert [p.parent.name for p in aside] == ["seed0", "seed1"]
    result = snakemake(work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_record(truncated)["status"] == read_record(binary)["status"] == "ok"
    summary = pd.read_csv(work / "results" / "summary.csv")
    assert len(summary[(summary["task"] == "image") & (summary["method"] == "distill")]) == 2
    assert planned_jobs(snakemake(work, "-n")) == {}


@pytest.mark.slow
def test_changing_one_tasks_settings_reruns_only_that_tasks_jobs(pipeline, tmp_path):
    work = pipeline
    cfg = json.loads(json.dumps(TINY))
    cfg["tasks"]["image"]["train"]["steps"] = 25
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    try:
        jobs = planned_jobs(snakemake(work, "-n"))
        # image x 2 seeds, same data; their students follow their teachers
        assert jobs.get("train") == 2 and jobs.get("distill") == 2 and "prepare_data" not in jobs
    finally:
        (work / "config.yaml").write_text(yaml.safe_dump(TINY))


@pytest.mark.slow
def test_bench_settings_rerun_only_the_sweep_and_bench_target_reports_it_alone(pipeline):
    work = pipeline
    cfg = json.loads(json.dumps(TINY))
    cfg["bench"]["repeats"] = 3
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    try:
        assert planned_jobs(snakemake(work, "-n")) == {"bench_variant": 1, "bench_aggregate": 1, "report": 1, "all": 1}
    finally:
        (work / "config.yaml").write_text(yaml.safe_dump(TINY))
    assert planned_jobs(snakemake(work, "bench", "-n")) == {"bench_report": 1, "bench": 1}
    result = snakemake(work, "bench")
    assert result.returncode == 0, result.stderr[-3000:]
    page = (work / "reports" / "bench" / "index.html").read_text()
    assert "Efficiency sweep" in page and "Test accuracy" not in page


@pytest.mark.slow
def test_invalid_config_stops_before_any_job(tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["variants"] = {"fulll": {}}
    bad["train"]["lr"] = "fast"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    result = snakemake(tmp_path, "-n", timeout=120)
    assert result.returncode != 0
    err = result.stdout + result.stderr
    assert "unknown variant 'fulll'" in err and re.search(r"known variants: .*\bfull\b", err)
    assert "'train.lr' is 'fast'" in err and "expected number" in err
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_snakemake_lint_is_clean():
    result = subprocess.run([str(SNAKEMAKE), "--lint", "--snakefile", str(REPO / "Snakefile")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_lra_config_plans_the_grid_and_names_the_missing_data(tmp_path):
    """config/lra.yaml with none of its data present: every task, variant and seed is planned,
    and the dry run says, per task, what to download and where it must land."""
    (tmp_path / "config.yaml").write_text((REPO / "config" / "lra.yaml").read_text())
    result = snakemake(tmp_path, "-n", timeout=120, env=empty_hf_cache(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lra = yaml.safe_load((REPO / "config" / "lra.yaml").read_text())
    tasks, variants = list(lra["tasks"]), list(lra["variants"])
    assert set(tasks) == {"listops", "text", "retrieval", "image", "pathfinder", "pathx"}
    jobs = planned_jobs(result)
    assert jobs["prepare_data"] == 6 and jobs["distill"] == 6 and jobs["train"] == 6 * len(variants)
    assert sorted((w["task"], w["variant"]) for w in planned_wildcards(result, "train")) == sorted(
        (t, v) for t in tasks for v in variants)
    assert sorted(w["task"] for w in planned_wildcards(result, "distill")) == sorted(tasks)
    out = result.stdout + result.stderr
    missing = {t: line for line in out.splitlines() for t in tasks if line.startswith(f"attnbench: data of task '{t}'")}
    assert set(missing) == set(tasks), out[-3000:]
    url = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
    for task, where in (("listops", "lra_release/listops-1000/basic_train.tsv"),
                        ("retrieval", "lra_release/lra_release/tsv_data/new_aan_pairs.train.tsv"),
                        ("pathfinder", "lra_release/lra_release/pathfinder32/curv_contour_length_14/metadata"),
                        ("pathx", "lra_release/lra_release/pathfinder128/curv_contour_length_14/metadata")):
        assert url in missing[task] and where in missing[task] and f"tasks.{task}.data.path" in missing[task]
    assert "datasets.load_dataset('stanfordnlp/imdb')" in missing["text"]
    assert "datasets.load_dataset('uoft-cs/cifar10')" in missing["image"]


@pytest.mark.slow
def test_optional_task_without_its_data_is_left_out(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["tasks"]["textcls"] = {"optional": True, "data": {"path": str(tmp_path / "absent.csv")}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake(tmp_path, "-n", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {w["task"] for w in planned_wildcards(result, "train")} == {"listops", "image"}
    out = result.stdout + result.stderr
    assert "task 'textcls' is left out (optional, its data is missing)" in out and str(tmp_path / "absent.csv") in out
    # the same task, present: planned
    _rows = "text,label\n" + "".join(f"{'good' if i % 2 else 'bad'} film {i},{i % 2}\n" for i in range(40))
    (tmp_path / "absent.csv").write_text(_rows)
    result = snakemake(tmp_path, "-n", timeout=120)
    assert "textcls" in {w["task"] for w in planned_wildcards(result, "train")}


@pytest.mark.slow
def test_snakemakes_own_report_holds_our_outputs_with_their_provenance(pipeline):
    """`snakemake --report report.zip` after a run: Snakemake's interactive report, whose results are
    the outputs the rules mark with report(...), grouped in categories, each with its caption."""
    result = snakemake(pipeline, "--report", "report.zip", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with zipfile.ZipFile(pipeline / "report.zip") as archive:
        names = archive.namelist()
        entry = next(n for n in names if n.endswith("/report.html"))
        page = archive.read(entry).decode("utf-8", "replace")
    for marked in ("index.html", "frontier.png", "accuracy_vs_throughput.png", "summary.csv", "bench.csv"):
        assert any(n.endswith("/" + marked) for n in names), (marked, names[:40])
    assert sum(n.endswith("/record.json") for n in names) == 8  # every run record
    for category in ("Report", "Figures", "Tables", "Runs of listops", "Runs of image"):
        assert category in page, category
    # captions (rst, rendered) and provenance: the rule that made each result
    assert "Pareto frontier" in page and "attnbench's own report" in page
    assert "aggregate" in page and "bench_aggregate" in page
