"""The report's Data section: one row per task saying what its runs ran on, flagged where they disagree."""
from __future__ import annotations

import pandas as pd

from attnbench.harness.report.data import data_section, data_table
from attnbench.harness.report.writer import Document


def runs(**over) -> pd.DataFrame:
    row = {"task": "ng20", "base_task": "textcls", "data_source": "local CSV 20ng.csv",
           "data_sizes": "train 9000 / val 1000 / test 1000", "data_classes": "2: alt.atheism, sci.space",
           "data_tokenizer": "subword", "seq_len": 256, "vocab_size": 4096}
    return pd.DataFrame([{**row, "seed": 0}, {**row, "seed": 1, **over}])


def test_one_row_per_task_with_what_it_ran_on():
    table, mixed = data_table(pd.concat([runs(), runs().assign(task="fashion", base_task="image",
                                                                data_tokenizer=None)]))
    assert mixed == []
    assert list(table["task"]) == ["ng20", "fashion"]
    ng20 = table.iloc[0]
    assert (ng20["instance of"], ng20["classes"], ng20["length"], ng20["tokenizer"]) == (
        "textcls", "2: alt.atheism, sci.space", "256", "subword")
    assert table.iloc[1]["tokenizer"] == "–"


def test_runs_of_one_name_on_different_data_are_flagged(tmp_path):
    df = runs(data_sizes="train 500 / val 50 / test 50")
    table, mixed = data_table(df)
    assert mixed == ["ng20"]
    assert table.iloc[0]["examples"] == "train 9000 / val 1000 / test 1000 | train 500 / val 50 / test 50"
    doc = Document(tmp_path)
    data_section(doc, df)
    assert any("ran on different data" in w for w in doc.warnings)


def test_a_summary_from_before_the_data_columns_has_no_section(tmp_path):
    doc = Document(tmp_path)
    data_section(doc, runs().drop(columns=["data_source"]))
    assert doc.sections == []
