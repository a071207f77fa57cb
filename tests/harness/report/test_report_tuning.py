"""The report's Tuning section (issue 27, part 1): per (task, variant) the trials' untuned and tuned validation
accuracy, the settings chosen, the spread across trials, after how many trials the best was found, the final
runs' test accuracy, the best-so-far figure, and the Summary's line. Runs' tables are built row by row (as in
test_report_summary.py) with the tuning columns (stage, trial, point), so every expected number is known."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_report_summary import run_row

from attnbench.harness.report.tuning import (
    figure_best_so_far,
    final_runs,
    format_point,
    tuned_line,
    tuned_pairs,
    tuning_section,
    tuning_table,
)
from attnbench.harness.report.writer import Document

NAN = math.nan
# per (task, variant): each trial's best validation accuracy (%), trial 0 first (NaN: a failed trial)
VAL = {("listops", "full"): [40, 42, 45, 50, 48, 47, 49, 46],  # best at trial 3: after 4 of 8
       ("listops", "window"): [30, 31, 32, 33, 34, 35, 36, 38],  # best at the last trial
       ("listops", "linear"): [50, 50, 40, 41, 42, 43, 44, 45],  # tied 0 and 1; its final runs name trial 1
       ("text", "full"): [60, 72, 65, 62, 61, 60, 59, 58],  # the largest gain: +12
       ("text", "window"): [55, 54, 53, 52, 51, 50, 49, 48],  # untuned is best; final runs name no trial
       ("text", "linear"): [50, 51, 52, 53, 54, NAN, 56, 55.5]}  # trial 5 failed
SELECTED = {("listops", "linear"): 1, ("text", "window"): None}
TEST = (0.50, 0.52, 0.54)  # the final runs' test accuracy, seeds 0-2: 52.0 ± 2.0 (n=3)


def point(variant: str, trial: int) -> str:
    values = {"train.lr": 1.2345e-3 * (trial + 1), "train.weight_decay": 0.01 * trial,
              "train.warmup_steps": 10 * trial, "model.dropout": 0.05 * trial}
    if variant == "window":
        values["variant.window"] = 16 * (trial + 1)
    return json.dumps(values, sort_keys=True)


def rows(pairs=VAL) -> list[dict]:
    """8 trials and 3 final seeds of each pair; a final run names the best trial (or ``SELECTED``'s)."""
    out = []
    for (task, variant), accs in pairs.items():
        for trial, acc in enumerate(accs):
            row = run_row(task, variant, 0, acc / 100, seq_len=48)
            row.update(stage="tune", trial=trial, point=point(variant, trial), test_acc=NAN, best_val_acc=acc / 100)
            if math.isnan(acc):
                row.update(status="failed")
            out.append(row)
        chosen = SELECTED.get((task, variant), int(np.nanargmax(accs)))
        for seed, acc in enumerate(TEST):
            row = run_row(task, variant, seed, acc)
            row.update(stage="final", trial=NAN if chosen is None else chosen,
                       point=NAN if chosen is None else point(variant, chosen))
            out.append(row)
    return out


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return pd.DataFrame(rows())


def row_of(table: pd.DataFrame, task: str, variant: str) -> pd.Series:
    return table[(table["task"] == task) & (table["variant"] == variant)].iloc[0]


def test_final_runs_drops_the_trials_and_a_missing_stage_is_final(df):
    finals = final_runs(df)
    assert len(finals) == 6 * 3 and set(finals["stage"]) == {"final"}
    legacy = df.assign(stage=df["stage"].where(df["stage"] == "tune"))  # final rows with an empty stage
    assert len(final_runs(legacy)) == 18
    older = df[df["stage"] == "final"].drop(columns=["stage", "trial", "point"])  # results from before tuning
    assert len(final_runs(older)) == 18


def test_a_point_reads_short_with_three_significant_digits():
    assert format_point(point("window", 3)) == "lr 0.00494, wd 0.03, warmup 30, dropout 0.15, window 64"
    assert format_point(json.dumps({"train.lr": 1e-5, "model.dropout": 0.1, "variant.dropout": 0.2})) == \
        "lr 1e-5, model.dropout 0.1, variant.dropout 0.2"  # two that would read alike keep their sections
    assert format_point(NAN) == "the config's own" and format_point("") == "the config's own"


def test_the_table_compares_trial_0_with_the_selected_trial(df):
    table = tuning_table(df)
    assert list(zip(table["task"], table["variant"], strict=True)) == sorted(VAL)
    full = row_of(table, "listops", "full")
    assert (full["trials"], full["untuned val (%)"], full["tuned val (%)"], full["gain (points)"]) == \
        ("8", "40.0", "50.0", "+10.0")
    assert full["chosen settings"] == format_point(point("full", 3)) == "lr 0.00494, wd 0.03, warmup 30, dropout 0.15"
    assert full["best reached"] == "after 4 of 8 trials"
    assert full["val across trials (%)"] == f"40.0–50.0 (std {np.std(VAL[('listops', 'full')], ddof=1):.1f})"
    assert full["final test (%)"] == "52.0 ± 2.0 (n=3)"
    # the final runs name the trial selected (of two equal, the second); without, the best (the first of equals)
    linear = row_of(table, "listops", "linear")
    assert (linear["tuned val (%)"], linear["gain (points)"], linear["chosen settings"]) == \
        ("50.0", "+0.0", format_point(point("linear", 1)))
    window = row_of(table, "text", "window")
    assert (window["gain (points)"], window["best reached"]) == ("+0.0", "after 1 of 8 trials")
    assert window["chosen settings"] == "lr 0.00123, wd 0, warmup 0, dropout 0, window 16"
    assert row_of(table, "listops", "window")["best reached"] == "after 8 of 8 trials"
    # a failed trial counts by status, out of the spread and the best
    failed = row_of(table, "text", "linear")
    scored = [a for a in VAL[("text", "linear")] if not math.isnan(a)]
    assert (failed["trials"], failed["tuned val (%)"], failed["best reached"]) == \
        ("8 (FAILED×1)", "56.0", "after 7 of 8 trials")
    assert failed["val across trials (%)"] == f"50.0–56.0 (std {np.std(scored, ddof=1):.1f})"
    assert [p.best_last for p in tuned_pairs(df)] == [False, False, True, False, False, False]


def test_the_section_renders_its_table_figure_and_the_pairs_the_budget_may_not_have_sufficed(df, tmp_path):
    doc = Document(tmp_path)
    tuning_section(doc, df)
    doc.write("t")
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "## Tuning" in md and "8 trials" in md and "trial 0 with the config's own settings" in md
    assert "| task | variant | trials | untuned val (%) | tuned val (%) | gain (points) |" in md
    assert "| listops | full | 8 | 40.0 | 50.0 | +10.0 |" in md
    assert "](figures/tuning.png)" in md and (tmp_path / "figures" / "tuning.png").stat().st_size > 0
    assert "the budget may not have sufficed (more trials might find better settings): window on listops." in md
    assert "<h2 id='tuning'>Tuning</h2>" in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_nothing_is_rendered_or_drawn_without_trials(df, tmp_path):
    doc = Document(tmp_path)
    for finals in (final_runs(df), final_runs(df).drop(columns=["stage", "trial", "point"])):
        tuning_section(doc, finals)
        assert tuning_table(finals).empty and figure_best_so_far(finals, tmp_path / "x.png") is None
    assert doc.md == [] and doc.html == [] and doc.sections == []
    assert not (tmp_path / "x.png").exists()


def test_the_summary_line_says_the_accuracies_are_tuned_and_by_how_much(df):
    assert tuned_line(df) == ("Accuracies are of tuned settings (8 trials per variant, selected on validation "
                              "accuracy): tuning changed the validation accuracy by at most 12.0 points (largest "
                              "gain: full on text, +12.0).")
    partly = df[~((df["stage"] == "tune") & (df["variant"] == "window"))]
    assert tuned_line(partly).endswith("(largest gain: full on text, +12.0); not tuned: window on listops, "
                                       "window on text.")
    assert tuned_line(final_runs(df)) is None
