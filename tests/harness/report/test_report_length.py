"""Accuracy against length in the report: a task run at several lengths (``base_task``
'listops' as 'listops@64' ... 'listops@512', its ``length`` and ``length_param``) gets a table of each
variant's test accuracy per length, a figure beside the sweep's cost against length, and a Summary line
saying from which length each variant falls more than 5 points below full and stays there. Runs' tables
are built as in test_report_summary.py, the sweep as in test_bench_report.py."""
from __future__ import annotations

import matplotlib.image
import pandas as pd
import pytest
from test_bench_report import make_bench_df
from test_report_summary import run_row

from attnbench.harness.report.length import (
    MARGIN_PTS,
    falls_below,
    figure_accuracy_vs_length,
    length_lines,
    length_section,
    length_table,
    taught_nothing,
)
from attnbench.harness.report.writer import Document

LENGTHS = (64, 128, 256, 512)
# mean test accuracy (%) per length; seed 0 one point below, seed 1 one point above (std 1.4)
MEANS = {
    "full": (80, 78, 75, 70),
    "lsh": (79, 76, 65, 55),     # gaps -1, -2, -10, -15: falls from 256 and stays
    "linear": (78, 70, 72, 68),  # gaps -2, -8, -3, -2: dips at 128 only, recovers
    "sparse": (81, 77, 74, 71),  # gaps +1, -1, -1, +1: never falls
}
LINE = ("**listops** at 4 lengths (max_length 64–512), mean test accuracy over seeds against **full**: lsh falls "
        "more than 5 points below it from length 256 (-15.0 points at 512); linear is more than 5 points below it "
        "at 128, but not at the longest length both ran (512); sparse never falls more than 5 points below it up "
        "to length 512.")


def length_row(variant: str, length: int, seed: int, acc: float | None, **extra) -> dict:
    row = run_row(f"listops@{length}", variant, seed, acc, seq_len=length)
    return {**row, "base_task": "listops", "length": length, "length_param": "max_length", "stage": "final",
            "trial": None, "point": None, **extra}


def length_runs(means: dict = MEANS) -> pd.DataFrame:
    """Two seeds of every variant at every length, and a task run at one length (``length`` empty)."""
    rows = [length_row(v, n, seed, (m + (2 * seed - 1)) / 100)
            for v, accs in means.items() for n, m in zip(LENGTHS, accs, strict=True) for seed in (0, 1)]
    rows += [{**run_row("text", v, seed, 0.6), "base_task": "text", "length": None, "length_param": None,
              "stage": "final"} for v in means for seed in (0, 1)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return length_runs()


def test_a_variant_falls_below_from_the_length_it_stays_below_at(runs):
    assert MARGIN_PTS == 5.0
    assert falls_below(runs, "listops", "lsh") == 256
    assert falls_below(runs, "listops", "linear") is None  # below at 128 only: it recovers, no fall
    assert falls_below(runs, "listops", "sparse") is None
    assert falls_below(runs, "listops", "full") is None
    # the margin decides: 1.5 points below everywhere from 64; 2.5 below at 128 and 256, not at 512
    assert falls_below(runs, "listops", "linear", margin=1.5) == 64
    assert falls_below(runs, "listops", "linear", margin=2.5) is None
    assert falls_below(runs, "listops", "sparse", reference="lsh") is None
    assert falls_below(runs, "listops", "lsh", reference="sparse") == 256
    assert falls_below(runs, "text", "lsh") is None  # one length: not in this view


def test_only_lengths_where_both_ran_count(runs):
    no_full_at_512 = runs[~((runs["task"] == "listops@512") & (runs["variant"] == "full"))]
    assert falls_below(no_full_at_512, "listops", "lsh") == 256  # -1, -2, -10
    # a run without a test accuracy (OOM) is no run to compare: linear's 128 dip is now its last
    oom = runs.copy()
    at = (oom["variant"] == "linear") & oom["task"].isin(["listops@256", "listops@512"])
    oom.loc[at, ["status", "test_acc"]] = ["oom", None]
    assert falls_below(oom, "listops", "linear") == 128
    # tuning trials never count (they have no test accuracy; their validation is not the comparison)
    trial = pd.DataFrame([length_row("sparse", 512, 0, None, stage="tune", trial=1, best_val_acc=0.1)])
    assert falls_below(pd.concat([runs, trial]), "listops", "sparse") is None


def test_the_summary_says_where_each_variant_falls_below_full(runs):
    assert length_lines(runs) == [LINE]
    assert length_lines(runs[runs["base_task"] == "text"]) == []
    without_full = length_lines(runs[runs["variant"] != "full"])
    assert without_full == ["**listops** at 4 lengths (max_length 64–512): no full attention run with a test "
                            "accuracy, so no variant is compared with it."]
    # two variants that never fall are named together; a timeout is marked and said
    two = runs.copy()
    two.loc[two["variant"] == "linear", "test_acc"] = two.loc[two["variant"] == "sparse", "test_acc"].to_numpy()
    two.loc[(two["variant"] == "lsh") & (two["seed"] == 1) & (two["task"] == "listops@512"), "status"] = "timeout"
    line = length_lines(two)[0]
    assert "linear and sparse never fall more than 5 points below it up to length 512" in line
    assert "lsh† falls more than 5 points below it from length 256" in line
    assert line.endswith("(†: with runs that did not finish ok, see Runs).")


def test_the_table_holds_each_variants_accuracy_per_length(runs):
    oom = pd.DataFrame([length_row("sparse", 512, 2, None, status="oom")])
    table = length_table(pd.concat([runs, oom])).set_index("variant")
    assert list(table.columns) == ["task", "64", "128", "256", "512", "more than 5 points below full from"]
    assert list(table.index) == ["full", "linear", "lsh", "sparse"]  # full first
    assert set(table["task"]) == {"listops"}
    assert table.loc["full", "64"] == "80.0 ± 1.4 (n=2)"
    assert table.loc["lsh", "512"] == "55.0 ± 1.4 (n=2)"
    assert table.loc["sparse", "512"] == "71.0 ± 1.4 (n=2) OOM×1"
    assert table["more than 5 points below full from"].to_dict() == {
        "full": "", "linear": "none up to 512", "lsh": "256", "sparse": "none up to 512"}
    assert length_table(runs[runs["base_task"] == "text"]).empty


@pytest.mark.slow
@pytest.mark.parametrize("with_bench", [True, False])
def test_the_section_renders_its_table_and_figure(runs, tmp_path, with_bench):
    bench = make_bench_df() if with_bench else pd.DataFrame()
    doc = Document(tmp_path)
    length_section(doc, runs, bench)
    doc.write("t")
    md = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "## Accuracy against length" in md
    assert "_listops: test accuracy (%) by max_length_" in md
    assert "| listops | lsh | 79.0 ± 1.4 (n=2) | 76.0 ± 1.4 (n=2) | 65.0 ± 1.4 (n=2) | 55.0 ± 1.4 (n=2) | 256 |" in md
    assert "![accuracy vs length](figures/accuracy_vs_length.png)" in md
    assert ("efficiency sweep's time per training step" in md) == with_bench
    image = matplotlib.image.imread(tmp_path / "figures" / "accuracy_vs_length.png")
    # accuracy beside cost: two panels side by side with the sweep, one without
    assert image.shape[1] > image.shape[0] * (1.8 if with_bench else 1.0)
    assert "<h2 id='accuracy-against-length'>" in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_nothing_is_rendered_for_tasks_run_at_one_length(runs, tmp_path):
    doc = Document(tmp_path)
    one = runs[runs["base_task"] == "text"]
    length_section(doc, one, make_bench_df())
    assert doc.md == [] and doc.html == []
    assert figure_accuracy_vs_length(one, None, tmp_path / "x.png") is None
    older = one.drop(columns=["base_task", "length", "length_param", "stage"])  # a summary.csv before lengths
    length_section(doc, older, pd.DataFrame())
    assert doc.md == [] and length_lines(older) == [] and length_table(older).empty


def test_lengths_where_full_taught_nothing_are_left_out_of_the_comparison():
    # at 256 and 512 full is at the majority class (10%) as every variant is: nothing can fall below it there
    means = {"full": (80, 70, 11, 10), "lsh": (79, 60, 10, 10), "sparse": (79, 69, 10, 10)}
    runs = length_runs(means).assign(majority_test_acc=0.10)
    assert taught_nothing(runs[runs["length"].notna()], "listops") == [256, 512]
    assert falls_below(runs, "listops", "lsh") == 128  # below full at 128, the longest length full taught anything
    [line] = length_lines(runs)
    assert "lsh falls more than 5 points below it from length 128 (-10.0 points at 128)" in line
    assert "sparse never falls more than 5 points below it up to length 128" in line
    assert line.endswith("(lengths 256 and 512 left out: full is within 5 points of the majority class there, so "
                         "nothing can fall below it).")
    nothing = length_runs({"full": (10, 10, 10, 10), "lsh": (10, 10, 10, 10)}).assign(majority_test_acc=0.10)
    assert length_lines(nothing)[0].endswith("full is within 5 points of the majority class at every length: no "
                                             "length taught anything to compare.")
