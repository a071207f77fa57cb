"""Unreadable run records are set aside, named and listed, and the rest are aggregated and reported."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml

from attnbench.harness import cli
from attnbench.harness.core.hashing import config_hash
from attnbench.harness.report.render import render_report
from attnbench.harness.results.aggregate import aggregate, set_aside_file
from attnbench.harness.results.records import RecordError, read_record
from attnbench.harness.results.set_aside import destination
from attnbench.harness.run.train import train_run
from conftest import tiny_config, tiny_run, torch_state_restored


@pytest.fixture(scope="module")
def record_text(tmp_path_factory, tiny_listops_data):
    """The text of one real record (a tiny ListOps run)."""
    out = tmp_path_factory.mktemp("one_run")
    with torch_state_restored():
        train_run(tiny_run(), tiny_listops_data, out, bar=False)
    return (out / "record.json").read_text(), out


def reseeded(record: dict, seed: int) -> dict:
    """The record as that of the same run with another seed: its seed, run_id, config and config hash agree."""
    record = copy.deepcopy(record)
    record["seed"] = record["config"]["seed"] = seed
    record["run_id"] = f"{record['task']}/{record['label']}/seed{seed}"
    record["config_hash"] = config_hash(record["config"])
    return record


def make_runs(tmp_path, record_text, seeds=(0, 1, 2)):
    """The record of ``record_text`` as listops/full with each seed, in its run folder under
    ``tmp_path/results/runs``; returns their paths."""
    text, source = record_text
    records = []
    for seed in seeds:
        folder = tmp_path / "results" / "runs" / "listops" / "full" / f"seed{seed}"
        folder.mkdir(parents=True)
        shutil.copy(source / "curve.csv", folder / "curve.csv")
        (folder / "record.json").write_text(json.dumps(reseeded(json.loads(text), seed)))
        records.append(folder / "record.json")
    return records


def test_a_non_utf8_record_is_a_record_error_that_names_the_file(tmp_path):
    path = tmp_path / "record.json"
    path.write_bytes(b'{"status": "ok", "message": "caf\xe9"}')
    with pytest.raises(RecordError, match=rf"{path}: not UTF-8 text \(byte 32"):
        read_record(path)
    path.write_text("[1, 2]")
    with pytest.raises(RecordError, match="holds a JSON list, not an object"):
        read_record(path)


def test_set_aside_goes_beside_the_runs_folder_at_the_same_place(tmp_path):
    record = tmp_path / "results" / "runs" / "listops" / "full" / "seed3" / "record.json"
    assert destination(record, "T") == tmp_path / "results/set_aside/listops/full/seed3/record.T.json"
    assert destination(tmp_path / "other" / "record.json", "T") == tmp_path / "other/set_aside/record.T.json"


@pytest.mark.slow
def test_aggregate_sets_aside_a_truncated_and_a_non_utf8_record_and_keeps_the_rest(tmp_path, record_text):
    good, truncated, binary = make_runs(tmp_path, record_text)
    truncated.write_text(truncated.read_text()[:200])
    binary.write_bytes(b"\xff\xfe" + binary.read_bytes())
    out = tmp_path / "results" / "summary.csv"
    df, aside, _ = aggregate(tmp_path / "results" / "runs", out)
    assert df["seed"].tolist() == [0] and df["record"].tolist() == [str(good)]
    assert [a["record"] for a in aside] == [str(truncated), str(binary)]
    assert "Expecting" in aside[0]["reason"] or "Unterminated" in aside[0]["reason"]
    assert "not UTF-8" in aside[1]["reason"] and str(binary) in aside[1]["reason"]
    for entry, folder in zip(aside, ("seed1", "seed2"), strict=True):
        moved = tmp_path / entry["moved_to"]
        assert moved.parent == tmp_path / "results" / "set_aside" / "listops" / "full" / folder and moved.exists()
        assert str(entry["record"]) in moved.with_suffix(".reason.txt").read_text()
    assert not truncated.exists() and not binary.exists() and good.exists()
    assert json.loads(set_aside_file(out).read_text()) == aside
    # the next aggregation has nothing to set aside: the listing goes with it
    df, aside, _ = aggregate(tmp_path / "results" / "runs", out)
    assert len(df) == 1 and aside == [] and not set_aside_file(out).exists()


@pytest.mark.slow
def test_the_cli_says_what_it_set_aside_and_the_report_shows_it(tmp_path, record_text, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, bad, _ = make_runs(tmp_path, record_text)
    bad.write_text("")
    config = tmp_path / "config.yaml"  # plans seeds 0 to 2 of the tiny run
    config.write_text(yaml.safe_dump(tiny_config(seeds=[0, 1, 2])))
    assert cli.main(["aggregate", "--config", str(config), "--runs", "results/runs", "--out",
                     "results/summary.csv"]) == 0
    captured = capsys.readouterr()
    assert "set aside 1 unreadable or false record(s)" in captured.out and "aggregated 2 run records" in captured.out
    assert f"set aside {bad.relative_to(tmp_path)} -> results/set_aside/listops/full/seed1/record." in captured.err
    index = render_report(tmp_path / "results" / "summary.csv", tmp_path / "reports")
    page = index.read_text()
    assert "could not be read, or contradicted themselves or their folder, and were set aside" in page
    assert "seed1/record.json" in page


def test_a_report_of_nothing_is_one_line_and_exit_2(tmp_path, record_text, capsys):
    (record,) = make_runs(tmp_path, record_text, seeds=(0,))
    record.write_text("{")
    out = tmp_path / "summary.csv"
    assert cli.main(["aggregate", "--records", str(record), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["report", "--summary", str(out), "--out", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to report" in err and "Traceback" not in err
