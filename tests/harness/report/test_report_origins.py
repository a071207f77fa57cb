"""The report's list of variants from outside the repository (harness/report/origins.py): each out-of-tree run
label with its package, version and file hash; runs of one label whose file hashes differ are flagged."""
from __future__ import annotations

import pandas as pd
import pytest
from test_report_summary import run_row

from attnbench.harness.report.origins import NOT_RECORDED, origins_section, origins_table
from attnbench.harness.report.render import render_report
from attnbench.harness.report.writer import Document
from attnbench.harness.results.aggregate import COLUMNS

ORIGIN = "not installed as a package, localmha.py sha256:{sha}; uses local-attention 1.11.2"


def run(variant: str, seed: int, *, source: str | None = None, sha: str | None = None, acc: float = 0.5,
        recorded: bool = True) -> dict:
    """A run's row (``run_row``) of a variant from ``source`` whose file hashed to ``sha`` (``recorded``: its
    record has the origin, as records since origins do)."""
    row = run_row("listops", variant, seed, acc, setup=variant)
    row["variant_source"] = source
    if source and sha and recorded:
        row.update(variant_origin=ORIGIN.format(sha=sha), variant_sha256=sha)
    return row


def test_each_out_of_tree_label_is_listed_with_its_origin():
    df = pd.DataFrame([run("full", 0), run("full", 1),
                       run("mine", 0, source="localmha:LocalMHAAttention", sha="aaaa11112222"),
                       run("mine", 1, source="localmha:LocalMHAAttention", sha="aaaa11112222"),
                       run("performer", 0, source="attnbench.variants.linear:LinearAttention")],  # in-tree
                      columns=COLUMNS)
    table, mixed = origins_table(df)
    assert mixed == {}
    assert list(table["run label"]) == ["mine"]
    row = table.iloc[0]
    assert row["from"] == "localmha:LocalMHAAttention" and row["runs"] == 2
    assert row["origin"] == ORIGIN.format(sha="aaaa11112222")


def test_runs_of_one_label_with_different_files_are_flagged(tmp_path):
    df = pd.DataFrame([run("mine", 0, source="localmha:LocalMHAAttention", sha="aaaa11112222"),
                       run("mine", 1, source="localmha:LocalMHAAttention", sha="bbbb33334444")], columns=COLUMNS)
    table, mixed = origins_table(df)
    assert mixed == {"mine": ["aaaa11112222", "bbbb33334444"]}
    assert len(table) == 2  # one row per origin
    doc = Document(tmp_path)
    origins_section(doc, df)
    assert [text for _, text, _ in doc.sections] == ["Variants from outside this repository"]
    assert any("mine: its runs ran different code" in w and "bbbb33334444" in w for w in doc.warnings)


def test_a_record_from_before_origins_is_listed_as_not_recorded():
    df = pd.DataFrame([run("mine", 0, source="localmha:LocalMHAAttention", sha="aaaa11112222", recorded=False)],
                      columns=COLUMNS)
    table, _ = origins_table(df)
    assert list(table["origin"]) == [NOT_RECORDED]


def test_no_out_of_tree_variant_and_a_summary_without_the_columns_give_no_section(tmp_path):
    doc = Document(tmp_path)
    origins_section(doc, pd.DataFrame([run("full", 0)], columns=COLUMNS))
    origins_section(doc, pd.DataFrame([run("full", 0)], columns=COLUMNS).drop(
        columns=["variant_source", "variant_origin", "variant_sha256"]))
    assert doc.sections == [] and doc.warnings == []


@pytest.mark.slow
def test_the_rendered_report_lists_the_out_of_tree_variant(tmp_path):
    rows = [run("full", s, acc=0.5 + s / 100) for s in (0, 1)]
    rows += [run("mine", s, source="localmha:LocalMHAAttention", sha=sha, acc=0.4)
             for s, sha in ((0, "aaaa11112222"), (1, "bbbb33334444"))]
    summary = tmp_path / "summary.csv"
    pd.DataFrame(rows, columns=COLUMNS).to_csv(summary, index=False)
    render_report(summary, tmp_path / "report")
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## Variants from outside this repository" in md
    assert "localmha:LocalMHAAttention" in md and "sha256:aaaa11112222" in md
    assert "mine: its runs ran different code" in md
    assert "Variants from outside this repository" in (tmp_path / "report" / "index.html").read_text()
