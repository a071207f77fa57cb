"""The report's Data section: what each task ran on, from the data columns of ``results/summary.csv``
(``results.aggregate.data_columns``): the task it is an instance of, the source, the split sizes, the classes
with their names, the tokenizer and the length. A task whose runs disagree on one of them (records of two data
sets under one task name, e.g. summaries of two machines with other data) shows each value and is flagged."""
from __future__ import annotations

import pandas as pd

from attnbench.harness.report.measurements import whole
from attnbench.harness.report.writer import Document

#: table column -> summary column
SHOWN = {"task": "task", "instance of": "base_task", "source": "data_source", "examples": "data_sizes",
         "classes": "data_classes", "tokenizer": "data_tokenizer", "length": "seq_len", "vocabulary": "vocab_size"}

DATA_NOTE = ("What each task's runs trained and were tested on, from their records: the registered task a named "
             "instance (`tasks: {ng20: {task: textcls, ...}}`) is of, where the data came from, the examples per "
             "split, the classes (with their names, in label order), the tokenizer of a text task and the sequence "
             "length (tokens, before a CLS token).")


def _value(values: pd.Series, column: str) -> str:
    present = [v for v in dict.fromkeys(values.dropna()) if v != ""]
    if not present:
        return "–"
    shown = [whole(v) if column in ("seq_len", "vocab_size") else str(v) for v in present]
    return " | ".join(shown)


def data_table(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per task: what its runs ran on; and the tasks whose runs disagree (empty when the summary
    predates the data columns)."""
    if "data_source" not in df or df["data_source"].isna().all():
        return pd.DataFrame(), []
    rows, mixed = [], []
    for task, g in df.groupby("task", sort=False):
        row = {}
        for shown, column in SHOWN.items():
            row[shown] = task if column == "task" else _value(g[column], column) if column in g else "–"
        rows.append(row)
        if any(" | " in v for k, v in row.items() if k != "task"):
            mixed.append(str(task))
    table = pd.DataFrame(rows)
    if (table["tokenizer"] == "–").all():
        table = table.drop(columns="tokenizer")
    return table, mixed


def data_section(doc: Document, df: pd.DataFrame) -> None:
    """The Data section (nothing when the summary has no data columns: records from before them)."""
    table, mixed = data_table(df)
    if table.empty:
        return
    doc.heading(2, "Data")
    doc.note(DATA_NOTE)
    if mixed:
        doc.warn(f"task(s) {', '.join(mixed)}: the runs under one name ran on different data (each value is shown, "
                 "separated by |); their accuracies are not of one task")
    doc.table(table)
