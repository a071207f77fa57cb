"""A record is counted only as the run it is: in its own run folder, once, and planned by the config
(issue 26, item 3). Records copied into another run's folder are set aside; records of an unplanned
run, of another config, or a second record of one run are left where they are, named, and not counted."""
from __future__ import annotations

import json
import shutil

import pytest
import test_set_aside
import yaml
from test_set_aside import make_runs

from attnbench.harness import cli
from attnbench.harness.core.hashing import config_hash
from attnbench.harness.results.aggregate import aggregate, left_out_file, set_aside_file
from conftest import tiny_config

record_text = test_set_aside.record_text  # the fixture: one tiny run's record


def _write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.mark.slow
def test_a_record_copied_into_another_runs_folder_is_not_aggregated_as_that_run(tmp_path, record_text):
    seed0, seed1 = make_runs(tmp_path, record_text, seeds=(0, 1))
    runs = tmp_path / "results" / "runs" / "listops"
    copies = [runs / "full" / "seed2" / "record.json", runs / "window" / "seed0" / "record.json"]
    for copy in copies:
        copy.parent.mkdir(parents=True)
        shutil.copy(seed0, copy)
    out = tmp_path / "results" / "summary.csv"
    result = aggregate(tmp_path / "results" / "runs", out)
    # two seeds of full, not three: the copies are set aside, each reason naming the folder's run and the record's
    assert sorted(zip(result.table["variant"], result.table["seed"], strict=True)) == [("full", 0), ("full", 1)]
    assert [a["record"] for a in result.set_aside] == [str(p) for p in copies]
    seed2, window = (a["reason"] for a in result.set_aside)
    assert "listops/full/seed0" in seed2 and "listops/full/seed2" in seed2 and "\n" not in seed2
    assert "listops/full/seed0" in window and "listops/window/seed0" in window
    assert not any(p.exists() for p in copies) and seed0.exists() and seed1.exists()
    assert json.loads(set_aside_file(out).read_text()) == result.set_aside


def _config_file(tmp_path, **override):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**override)))
    return path


@pytest.mark.slow
def test_aggregate_counts_only_the_runs_its_config_plans_and_names_the_rest(tmp_path, record_text, capsys,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    planned, unplanned = make_runs(tmp_path, record_text, seeds=(0, 7))  # the config plans seed 0 only
    config = _config_file(tmp_path)
    assert cli.main(["aggregate", "--config", str(config), "--out", "results/summary.csv"]) == 0
    captured = capsys.readouterr()
    assert "aggregated 1 run records" in captured.out and "left out 1 record(s)" in captured.out
    assert f"left out: {unplanned.relative_to(tmp_path)}: listops/full/seed7 is not a run of {config}" in captured.err
    summary = tmp_path / "results" / "summary.csv"
    listing = json.loads(left_out_file(summary).read_text())
    assert [e["record"] for e in listing] == [str(unplanned.relative_to(tmp_path))]
    assert unplanned.exists() and not set_aside_file(summary).exists()  # named, never moved
    assert cli.main(["report", "--summary", str(summary), "--out", "reports"]) == 0  # and named in the report
    report = (tmp_path / "reports" / "summary.md").read_text()
    assert "1 run record(s) were left out" in report and "listops/full/seed7 is not a run of" in report
    # another config plans seed 0 with other settings: its record is not that run's either
    assert cli.main(["aggregate", "--config", str(_config_file(tmp_path, train={"lr": 0.5})),
                     "--out", "results/summary.csv"]) == 0
    captured = capsys.readouterr()
    assert "aggregated 0 run records" in captured.out and "left out 2 record(s)" in captured.out
    record_hash = json.loads(planned.read_text())["config_hash"]
    line = next(line for line in captured.err.splitlines() if "seed0" in line)
    assert f"config hash {record_hash}" in line and "listops/full/seed0" in line
    # the pipeline passes its plan: run_id -> config hash
    plan = {"listops/full/seed0": record_hash, "listops/full/seed7": "0" * 16}
    assert cli.main(["aggregate", "--plan", json.dumps(plan), "--records", str(planned), str(unplanned),
                     "--out", "results/summary.csv"]) == 0
    captured = capsys.readouterr()
    assert "aggregated 1 run records" in captured.out and f"plans it with {'0' * 16}" in captured.err


def test_two_records_of_one_run_count_once_the_one_in_its_own_folder(tmp_path, record_text):
    (own,) = make_runs(tmp_path, record_text, seeds=(0,))
    elsewhere = _write(tmp_path / "copy" / "record.json", json.loads(own.read_text()))
    out = tmp_path / "summary.csv"
    result = aggregate([elsewhere, own], out)
    assert result.table["record"].tolist() == [str(own)] and result.set_aside == []
    assert [e["record"] for e in result.left_out] == [str(elsewhere)]
    assert str(own) in result.left_out[0]["reason"] and "listops/full/seed0" in result.left_out[0]["reason"]
    assert elsewhere.exists() and json.loads(left_out_file(out).read_text()) == result.left_out
    # the next aggregation has nothing to leave out: the listing goes with it
    assert aggregate([own], out).left_out == [] and not left_out_file(out).exists()


@pytest.mark.slow
def test_a_record_that_lies_about_itself_is_set_aside_and_the_report_renders(tmp_path, record_text, capsys):
    honest, lying, infinite = make_runs(tmp_path, record_text, seeds=(0, 1, 2))
    record = json.loads(lying.read_text())
    record["config"]["seed"] = 5  # its config says another seed: the hash no longer matches either
    record["config_hash"] = config_hash(record["config"])
    lying.write_text(json.dumps(record))
    record = json.loads(infinite.read_text())
    record["efficiency"]["train_tokens_per_s"] = float("inf")
    infinite.write_text(json.dumps(record))  # Python writes the literal Infinity, and reads it back
    out, planned = tmp_path / "summary.csv", {"listops/full/seed0": json.loads(honest.read_text())["config_hash"]}
    assert cli.main(["aggregate", "--plan", json.dumps(planned),
                     "--records", str(honest), str(lying), str(infinite), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "seed 1" in err and "config's seed 5" in err and "efficiency.train_tokens_per_s is inf" in err
    assert cli.main(["report", "--summary", str(out), "--out", str(tmp_path / "reports")]) == 0
