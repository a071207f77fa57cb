"""The report's list of the variants from outside this repository: each run label whose attention a config
brought with ``from:`` (or an installed package's entry point), with where its code came from, from the
origin columns of ``results/summary.csv`` (``results.provenance.origin_columns``): the providing package and
its version, the defining file and its hash, the packages it uses. Runs of one label whose files' hashes
differ ran different code; that is flagged. A built-in class under a second name (config/zoo.yaml's
``performer``) is in-tree and not listed."""
from __future__ import annotations

import pandas as pd

from attnbench.harness.report.writer import Document
from attnbench.harness.results.provenance import IN_TREE

ORIGINS_NOTE = ("These variants' code is not part of this repository: a config named them with "
                "`from: package.module:Class` (or an installed package registered them). Their numbers are of the "
                "code described here (the providing package and version, the defining file and the first digits "
                "of its SHA-256, the packages it uses), recorded by each run; the commit in About this run does "
                "not cover it.")
#: the origin shown for a run whose record predates origins
NOT_RECORDED = "not recorded (a record from before origins were)"


def _present(value: object) -> bool:
    return isinstance(value, str) and value != ""


def out_of_tree(df: pd.DataFrame) -> pd.DataFrame:
    """The runs whose variant comes from outside this repository (empty when the summary predates the origin
    columns): those with an origin, and those whose source is not in-tree (records from before origins)."""
    if "variant_source" not in df:
        return df.iloc[0:0]
    origin = df["variant_origin"].map(_present) if "variant_origin" in df else pd.Series(False, index=df.index)
    source = df["variant_source"].map(lambda s: _present(s) and not str(s).startswith(f"{IN_TREE}."))
    return df[origin | source]


def origins_table(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """One row per out-of-tree run label and origin, with its runs' count; and the labels whose runs' file
    hashes differ, each with its hashes."""
    runs = out_of_tree(df)
    if runs.empty:
        return pd.DataFrame(), {}
    runs = runs.assign(origin=runs["variant_origin"].where(runs["variant_origin"].map(_present), NOT_RECORDED)
                       if "variant_origin" in runs else NOT_RECORDED)
    table = (runs.groupby(["variant", "attention", "variant_source", "origin"], sort=True, dropna=False)
             .size().reset_index(name="runs")
             .rename(columns={"variant": "run label", "variant_source": "from"}))
    mixed = {}
    if "variant_sha256" in runs:
        for label, g in runs.groupby("variant", sort=True):
            hashes = sorted({h for h in g["variant_sha256"] if _present(h)})
            if len(hashes) > 1:
                mixed[str(label)] = hashes
    return table, mixed


def origins_section(doc: Document, df: pd.DataFrame) -> None:
    """The section (nothing when no run's variant comes from outside this repository)."""
    table, mixed = origins_table(df)
    if table.empty:
        return
    doc.heading(2, "Variants from outside this repository")
    doc.note(ORIGINS_NOTE)
    for label, hashes in mixed.items():
        doc.warn(f"variant {label}: its runs ran different code (its file's sha256 {', '.join(hashes)}): their "
                 "numbers do not come from one implementation")
    doc.table(table)
