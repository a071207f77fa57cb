"""Per-class accuracy and the best label's confusion matrix in the report (issue 29), from the confusion
counts in the runs' records. Runs' tables are built as in test_report_summary.py; each run's record is
written by hand beside its row's record path, holding what the section reads (identity, confusion, data),
so every expected number follows from the matrices here."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from test_report_browser import PROBE, _probe, chromium  # noqa: F401 (chromium: the fixture)
from test_report_figures import clipped
from test_report_summary import run_row, table

import attnbench.harness.report.writer as writer
from attnbench.harness.report.classes import (
    best_label,
    class_table,
    figure_confusion,
    load_confusions,
    read_confusion,
    shown_classes,
)
from attnbench.harness.report.render import render_report

NAMES = ["World", "Sports", "Business"]
# (label, seed) -> the test confusion (rows true, columns predicted) of 10 test examples: 5, 3 and 2 per class
MATRICES = {("full", 0): [[5, 0, 0], [1, 2, 0], [0, 1, 1]],  # 8 of 10
            ("full", 1): [[4, 1, 0], [0, 3, 0], [0, 0, 2]],  # 9 of 10
            ("window", 0): [[3, 2, 0], [0, 3, 0], [1, 0, 1]]}  # 7 of 10


def record_of(task: str, label: str, seed: int, confusion, names=NAMES, **data) -> dict:
    """The part of a run's record the section reads."""
    classes = len(confusion) if confusion is not None else len(names)
    test = int(np.sum(confusion)) if confusion is not None else 10
    return {"task": task, "label": label, "variant": label, "seed": seed,
            "accuracy": {"test": None, "test_confusion": confusion},
            "data": {"num_classes": classes, "sizes": {"train": 100, "test": test}, "label_names": names, **data}}


def runs_with_records(root: Path) -> pd.DataFrame:
    """full seeds 0, 1 and window seed 0 with confusions; window seed 1 from before confusions (none in its
    record), linear seed 0 without a record file, lsh seed 0 with a record that is not JSON."""
    rows = []
    for (label, seed), matrix in MATRICES.items():
        rows.append(run_row("textcls", label, seed, np.trace(matrix) / 10))
    rows += [run_row("textcls", "window", 1, 0.6), run_row("textcls", "linear", 0, 0.5),
             run_row("textcls", "lsh", 0, 0.4)]
    for row in rows:
        path = root / "runs" / row["task"] / row["variant"] / f"seed{row['seed']}" / "record.json"
        row["record"] = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = (row["variant"], row["seed"])
        if key in MATRICES:
            path.write_text(json.dumps(record_of("textcls", *key, MATRICES[key])))
        elif key == ("window", 1):
            old = record_of("textcls", "window", 1, None)
            del old["accuracy"]["test_confusion"], old["data"]["label_names"]
            path.write_text(json.dumps(old))
        elif key == ("lsh", 0):
            path.write_bytes(b"{\"task\": \"textcls\", \"accur")  # cut off
    return table(rows)


def test_per_class_accuracy_is_the_mean_of_what_the_confusions_say(tmp_path):
    runs, without, warnings = load_confusions(runs_with_records(tmp_path))
    assert sorted(zip(runs["variant"], runs["seed"], strict=True)) == sorted(MATRICES)
    assert sorted(zip(without["variant"], without["seed"], strict=True)) == [("linear", 0), ("window", 1)]
    assert len(warnings) == 1 and "lsh/seed0/record.json" in warnings[0] and "cannot be read" in warnings[0]
    best = best_label(runs)
    assert best == "full"  # mean test accuracy 85% against window's 70%
    out = class_table(runs, best, shown_classes(runs["confusion"].iloc[0].counts))
    assert list(out["class"]) == [*NAMES, "all (test accuracy)"]
    assert list(out.columns) == ["class", "full (best, n=2)", "window (n=1)", "share of test (%)"]
    for label, column in (("full", "full (best, n=2)"), ("window", "window (n=1)")):
        per_seed = [np.diag(m) / np.sum(m, axis=1) for (lab, _), m in MATRICES.items() if lab == label]
        expected = 100 * np.mean(per_seed, axis=0)
        assert list(out[column][:3]) == [f"{x:.1f}" for x in expected]
        accuracy = np.mean([np.trace(m) / 10 for (lab, _), m in MATRICES.items() if lab == label])
        assert out[column].iloc[3] == f"{100 * accuracy:.1f}"
    assert list(out["share of test (%)"]) == ["50.0", "30.0", "20.0", "100.0"]
    assert out["full (best, n=2)"].iloc[0] == "90.0"  # by hand: (100 + 80) / 2


@pytest.mark.slow
def test_the_report_shows_the_section_with_names_figure_and_the_runs_left_out(tmp_path, capsys):
    summary = tmp_path / "summary.csv"
    runs_with_records(tmp_path).to_csv(summary, index=False)
    render_report(summary, tmp_path / "reports")
    md = (tmp_path / "reports" / "summary.md").read_text(encoding="utf-8")
    part = md[md.index("## Per-class accuracy and confusion"):]
    part = part[:part.index("\n## ", 3)]
    assert "| class | full (best, n=2) | window (n=1) | share of test (%) |" in part
    assert "| World | 90.0 | 60.0 | 50.0 |" in part and "| Business | 75.0 | 50.0 | 20.0 |" in part
    assert "Best label: full (85.0% mean test accuracy, seeds 0, 1)" in part
    assert ("Left out of this section: 2 tested run(s) whose record holds no test confusion (written before it "
            "was recorded, or not found): textcls/linear seed 0; textcls/window seed 1.") in part
    assert "lsh/seed0/record.json` cannot be read" in part  # the damaged record: warned where it applies
    assert "record.json` cannot be read" in capsys.readouterr().err  # and on stderr
    figure = tmp_path / "reports" / "figures" / "confusion_textcls.png"
    assert figure.stat().st_size > 1000 and "](figures/confusion_textcls.png)" in part
    assert "data:image/png;base64," in (tmp_path / "reports" / "index.html").read_text(encoding="utf-8")


def test_runs_without_any_confusion_leave_the_section_a_note(tmp_path):
    rows = [run_row("listops", "full", 0, 0.5)]  # its record path does not exist: an old results folder
    summary = tmp_path / "summary.csv"
    table(rows).to_csv(summary, index=False)
    render_report(summary, tmp_path / "reports")
    md = (tmp_path / "reports" / "summary.md").read_text(encoding="utf-8")
    assert "2 tested run" not in md and "textcls" not in md
    assert ("Left out of this section: 1 tested run(s) whose record holds no test confusion (written before it "
            "was recorded, or not found): listops/full seed 0.") in md
    assert "warning(s)" not in md and not list((tmp_path / "reports" / "figures").glob("confusion_*"))


@pytest.mark.parametrize(("change", "problem"), [
    (lambda r: r.update(seed=5), "is the record of textcls/full seed 5, not of textcls/full seed 0"),
    (lambda r: r["accuracy"].update(test_confusion=[[5, 0], [1, 2]]), "is not 3 x 3 counts ≥ 0"),
    (lambda r: r["accuracy"].update(test_confusion=[[5, 0, 0], [1, -2, 0], [0, 1, 1]]), "is not 3 x 3 counts"),
    (lambda r: r["data"]["sizes"].update(test=11), "counts 10 test examples, its test split 11"),
    (lambda r: r["accuracy"].update(test_confusion=[[4, 1, 0], [1, 2, 0], [0, 1, 1]]),
     "is 70.00% correct, its test accuracy 80.00%"),
])
def test_a_record_that_disagrees_with_its_row_is_left_out_and_said(tmp_path, change, problem):
    record = record_of("textcls", "full", 0, MATRICES[("full", 0)])
    change(record)
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    confusion, said = read_confusion(path, pd.Series(run_row("textcls", "full", 0, 0.8)))
    assert confusion is None and said.startswith(f"`{path}`") and problem in said


def test_class_names_default_to_ids_and_bad_names_are_said(tmp_path):
    record = record_of("textcls", "full", 0, MATRICES[("full", 0)])
    path, row = tmp_path / "record.json", pd.Series(run_row("textcls", "full", 0, 0.8))
    del record["data"]["label_names"]  # a record from before class names
    path.write_text(json.dumps(record))
    assert read_confusion(path, row)[0].names == ("0", "1", "2") and read_confusion(path, row)[1] is None
    record["data"]["label_names"] = ["a", "b"]
    path.write_text(json.dumps(record))
    confusion, said = read_confusion(path, row)
    assert confusion.names == ("0", "1", "2") and "are not 3 names" in said


@pytest.mark.slow
def test_with_many_classes_the_most_confused_are_shown_and_the_figure_stays_whole(tmp_path, monkeypatch):
    classes = 25
    counts = np.diag(np.full(classes, 10))
    counts[3, 7] = counts[11, 3] = counts[20, 21] = 4  # classes 3, 7, 11, 20, 21 confused
    assert shown_classes(counts, most=5) == [3, 7, 11, 20, 21]
    shown = shown_classes(counts)
    assert len(shown) == 20 and {3, 7, 11, 20, 21} <= set(shown) and shown == sorted(shown)
    assert shown_classes(counts[:12, :12]) == list(range(12))
    kept = []
    monkeypatch.setattr(writer.plt, "close", kept.append)
    names = tuple(f"class number {i}" for i in range(classes))
    path = figure_confusion(counts, names, shown, "a long title " * 12, tmp_path / "c.png")
    try:
        [fig] = kept
        heatmap = fig.axes[0]
        assert [t.get_text() for t in heatmap.get_xticklabels()] == [names[i] for i in shown]
        assert heatmap.get_yticklabels()[0].get_text() == "class number 0 (n=10)"
        assert clipped(fig) == [] and path.stat().st_size > 1000
    finally:
        plt.close("all")


@pytest.mark.slow
def test_the_confusion_figure_reads_whole_in_headless_chromium(chromium, tmp_path):  # noqa: F811
    """As test_report_browser.py reads the report: the confusion matrix decodes with nothing cut at its edges."""
    summary = tmp_path / "summary.csv"
    runs_with_records(tmp_path).to_csv(summary, index=False)
    index = render_report(summary, tmp_path / "reports")
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    check = _probe(chromium, tmp_path / "profile", (1400, 900), probe)
    [figure] = [i for i in check["images"] if i["alt"].startswith("textcls: confusion matrix")]
    assert check["errors"] == [] and figure["w"] > 0 and figure["edge_ink"] == 0, figure
