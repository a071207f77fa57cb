"""Self-pretraining (method `spt`) through snakemake: a built-in variant and an out-of-tree one (`from:`, a module
written into the working folder) are each pretrained on the task's training inputs (rule pretrain), then fine-tuned
from that checkpoint (rule train_spt, the pretraining record its input), beside their runs from scratch; the
records link the two, the DAG re-plans exactly what a change touches, and the report has its section."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml

from attnbench.harness.conformance.template import write_template
from attnbench.harness.results.records import read_record
from snakemake_runs import planned_jobs, planned_wildcards, snakemake

VARIANTS = ("full", "mine")
#: the out-of-tree variant: module and class (written by `attnbench new-variant`'s template)
SOURCE = "sptownattn:SptownattnAttention"
N_TRAIN = 120
CONFIG = {
    "seeds": [0],
    "variants": {"full": {}, "mine": {"from": SOURCE, "params": {"temperature": 1.5}}},
    "spt": {"variants": list(VARIANTS), "train": {"steps": 6}},
    "bench": {"enabled": False},
    "model": {"layers": 1, "dim": 16, "heads": 2, "mlp_dim": 32},
    "train": {"steps": 6, "batch_size": 16, "eval_every": 3, "warmup_steps": 1},
    "tasks": {"listops": {"data": {"n_train": N_TRAIN, "n_val": 30, "n_test": 30, "min_length": 2,
                                   "max_length": 24, "max_depth": 3}}},
}
#: what the parent process's validation exported must not reach the jobs: they register `mine` from the config
ENV = {"ATTNBENCH_VARIANTS": ""}


@pytest.fixture(scope="module")
def spt_pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("spt")
    module, _ = write_template(SOURCE.split(":")[0], work)  # the jobs' current folder: importable from there
    (work / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = snakemake(work, env=ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, hashlib.sha256((work / module).read_bytes()).hexdigest()[:12]


def pretraining(work, variant: str):
    return work / "results" / "pretrain" / "listops" / variant / "seed0" / "record.json"


def fine_tuning(work, variant: str):
    return work / "results" / "runs" / "listops" / f"spt-{variant}" / "seed0" / "record.json"


@pytest.mark.slow
def test_each_variant_is_pretrained_then_fine_tuned_from_that_run_the_out_of_tree_one_too(spt_pipeline):
    work, sha = spt_pipeline
    for variant in VARIANTS:
        pre, spt = read_record(pretraining(work, variant)), read_record(fine_tuning(work, variant))
        assert (pre["status"], pre["method"], pre["label"]) == ("ok", "pretrain", f"pretrain[{variant}]")
        assert (spt["status"], spt["method"], spt["label"]) == ("ok", "spt", f"spt[{variant}]")
        assert pre["variant"] == spt["variant"] == variant and pre["accuracy"]["test"] is None
        assert 0.0 <= spt["accuracy"]["test"] <= 1.0
        # the fine-tuning run names the pretraining run it started from, and that run's checkpoint
        link = spt["pretrain"]
        assert (link["run_id"], link["config_hash"]) == (pre["run_id"], pre["config_hash"])
        assert link["run_id"] == f"listops/pretrain[{variant}]/seed0" and link["status"] == "ok"
        folder = fine_tuning(work, variant).parent
        assert (folder / link["record"]).resolve() == pretraining(work, variant).resolve()
        assert (folder / link["checkpoint"]).resolve() == (pretraining(work, variant).parent / "best.pt").resolve()
        assert link["tokens_seen"] == pre["pretraining"]["tokens_seen"] > 0
        assert pre["training"]["steps_done"] == CONFIG["spt"]["train"]["steps"]
        # its from-scratch twin ran too, with the same model
        scratch = read_record(work / "results" / "runs" / "listops" / variant / "seed0" / "record.json")
        assert scratch["method"] == "labels" and scratch["config"]["model"] == spt["config"]["model"]
        assert "pretrain" not in scratch
    for path in (pretraining(work, "mine"), fine_tuning(work, "mine")):  # where the variant's code came from
        record = read_record(path)
        assert record["config"]["variant"] == {"name": "mine", "params": {"temperature": 1.5}, "source": SOURCE}
        origin = record["variant_origin"]
        assert (origin["source"], origin["file"], origin["sha256"]) == (SOURCE, "sptownattn.py", sha)
        assert origin["found_in"] == str(work) and origin["distribution"] is None  # the test's own file
    assert "source" not in read_record(pretraining(work, "full"))["config"]["variant"]
    assert read_record(fine_tuning(work, "full")).get("variant_origin") is None  # a built-in: none


@pytest.mark.slow
def test_pretraining_read_the_training_inputs_only(spt_pipeline):
    """A light check of the records (harness/run's tests prove it on the data): the pretraining run's splits are
    the training inputs' two shares, no validation or test split, and its record says so."""
    work, _ = spt_pipeline
    for variant in VARIANTS:
        pre = read_record(pretraining(work, variant))
        sizes = pre["data"]["sizes"]
        assert set(sizes) == {"train", "val"} and sizes["train"] + sizes["val"] == N_TRAIN
        entry = pre["pretraining"]
        assert (entry["train_examples"], entry["heldout_examples"]) == (sizes["train"], sizes["val"])
        assert entry["reads"] == "the training split's inputs only (no labels, no validation or test split)"
        assert entry["objective"] == "masked tokens" and entry["mask_rate"] == 0.1  # ListOps' rate (Amos et al.)
        assert pre["data"]["label_names"] == [] and "training inputs only" in pre["data"]["source"]
        spt = read_record(fine_tuning(work, variant))
        assert spt["data"]["sizes"] == {"train": N_TRAIN, "val": 30, "test": 30}  # the labels: fine-tuning's


@pytest.mark.slow
def test_the_dag_plans_again_exactly_what_a_change_touches(spt_pipeline):
    work, _ = spt_pipeline
    assert planned_jobs(snakemake(work, "-n", env=ENV)) == {}
    # one variant pretrained again (a new record; a mere touch is not a change: Snakemake compares its checksum):
    # that variant's fine-tuning runs again (the DAG edge), nothing of the other variant's, no run from scratch
    record = pretraining(work, "mine")
    before, stat = record.read_bytes(), record.stat()
    rerun = json.loads(before)
    rerun["created"] = "2030-01-01T00:00:00+00:00"
    record.write_text(json.dumps(rerun, indent=2))
    try:
        dry = snakemake(work, "-n", env=ENV)
    finally:
        record.write_bytes(before)
        os.utime(record, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned_jobs(dry) == {"train_spt": 1, "aggregate": 1, "report": 1, "all": 1}
    assert planned_wildcards(dry, "train_spt") == [{"task": "listops", "variant": "mine", "seed": "0"}]
    # a deleted pretraining record (a target of its own) is pretrained again, and then that fine-tuning
    aside = record.with_name("record.json.aside")
    record.rename(aside)
    try:
        dry = snakemake(work, "-n", env=ENV)
    finally:
        aside.rename(record)
    assert planned_jobs(dry) == {"pretrain": 1, "train_spt": 1, "aggregate": 1, "report": 1, "all": 1}
    assert planned_wildcards(dry, "pretrain") == [{"task": "listops", "variant": "mine", "seed": "0"}]
    # other pretraining steps: every pretraining and fine-tuning run again, no run from scratch
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "spt": {**CONFIG["spt"], "train": {"steps": 8}}}))
    try:
        dry = snakemake(work, "-n", env=ENV)
    finally:
        config.write_text(yaml.safe_dump(CONFIG))
    assert planned_jobs(dry) == {"pretrain": 2, "train_spt": 2, "aggregate": 1, "report": 1, "all": 1}
    assert sorted(w["variant"] for w in planned_wildcards(dry, "pretrain")) == list(VARIANTS)
    assert sorted(w["variant"] for w in planned_wildcards(dry, "train_spt")) == list(VARIANTS)


@pytest.mark.slow
def test_the_report_compares_each_variant_from_scratch_and_self_pretrained(spt_pipeline):
    work, _ = spt_pipeline
    md = (work / "reports" / "summary.md").read_text()
    assert "<h2 id='self-pretraining'>Self-pretraining</h2>" in (work / "reports" / "index.html").read_text()
    section = md.split("\n## Self-pretraining\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
            for line in lines[1:]]
    assert sorted((row["task"], row["variant"]) for row in rows) == [("listops", v) for v in VARIANTS]
    for row in rows:  # against the records
        variant = row["variant"]
        scratch = read_record(work / "results" / "runs" / "listops" / variant / "seed0" / "record.json")
        spt, pre = read_record(fine_tuning(work, variant)), read_record(pretraining(work, variant))
        assert row["from scratch (%)"] == f"{100 * scratch['accuracy']['test']:.1f}"
        assert row["self-pretrained (%)"] == f"{100 * spt['accuracy']['test']:.1f}"
        assert row["pairs"] == "1/1" and row["pretraining steps"] == str(pre["training"]["steps_done"])
        assert row["tokens seen"] == f"{pre['pretraining']['tokens_seen']:,}"
    assert any(line.startswith("- listops: from scratch ") and "the ranking" in line for line in section.splitlines())
