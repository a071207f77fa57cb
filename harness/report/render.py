"""Render the comparison report from ``results/summary.csv`` and the runs' curves, and/or the
efficiency sweep's ``results/bench.csv``: ``reports/index.html`` (self-contained, figures
embedded), ``reports/summary.md`` and ``reports/figures/*.png``. Every number comes from a run
record or a sweep case; nothing is re-measured."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd

from attnbench.harness.core.errors import UserError
from attnbench.harness.report.bench import bench_environment_table, bench_section
from attnbench.harness.report.distillation import distillation_section
from attnbench.harness.report.lra import lra_section
from attnbench.harness.report.runs import (
    accuracy_section,
    cost_section,
    environment_table,
    figures_section,
    runs_section,
)
from attnbench.harness.report.writer import Document, read_table
from attnbench.harness.results.aggregate import set_aside_file


class NothingToReport(UserError, ValueError):
    """Neither the runs' table nor the sweep's holds a row."""


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _status_line(df: pd.DataFrame, what: str) -> str:
    counts = df["status"].value_counts()
    return f"{len(df)} {what}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def render_report(summary_csv: Path | None, out_dir: Path, bench_csv: Path | None = None,
                  lra_average: int = 5) -> Path:
    """Render ``out_dir/index.html`` and ``out_dir/summary.md`` (figures in ``out_dir/figures``)
    from the training runs' ``summary_csv`` and/or the efficiency sweep's ``bench_csv``.

    With both, the sweep's section follows the training cost; with only the sweep, the report
    holds the sweep alone. ``lra_average`` is the LRA Table 1 comparison's averaging convention
    (5 or 6 tasks, ``attnbench.harness.report.lra_published``). Raises ValueError when neither
    holds any rows."""
    df, bench = read_table(summary_csv), read_table(bench_csv)
    if df.empty and bench.empty:
        why = [f"{summary_csv} holds no runs" if summary_csv is not None else "no summary_csv given",
               f"{bench_csv} holds no efficiency cases" if bench_csv is not None else "no bench_csv given"]
        raise NothingToReport(f"{'; '.join(why)}: nothing to report")
    doc = Document(out_dir)
    if df.empty:
        title = "attnbench efficiency report"
        doc.heading(1, title)
        doc.note(f"Generated {_stamp()} from `{bench_csv}`. {_status_line(bench, 'cases')}.")
        bench_section(doc, bench, bench_csv)
        _environment(doc, bench_environment_table(bench), "library")
        return doc.write(title)
    title = "attnbench report"
    doc.heading(1, title)
    doc.note(f"Generated {_stamp()} from `{summary_csv}`. {_status_line(df, 'runs')}.")
    not_ok = {k: v for k, v in df["status"].value_counts().to_dict().items() if k != "ok"}
    if not_ok:
        doc.note(f"Runs that did not finish ok: {json.dumps(not_ok)} (see Runs).", alert=True, html_only=True)
    if summary_csv is not None:
        _set_aside_note(doc, set_aside_file(summary_csv))
    accuracy_section(doc, df)
    lra_section(doc, df, lra_average)
    figures_section(doc, df)
    cost_section(doc, df)
    if not bench.empty:
        bench_section(doc, bench, bench_csv)
    distillation_section(doc, df)
    runs_section(doc, df)
    _environment(doc, environment_table(df), "code")
    return doc.write(title)


def _set_aside_note(doc: Document, listing: Path) -> None:
    """Records the aggregation could not read and set aside: said at the top, each with its reason."""
    if not listing.exists():
        return
    entries = json.loads(listing.read_text(encoding="utf-8"))
    doc.note(f"{len(entries)} run record(s) could not be read and were set aside (moved out of their run folders, "
             "so the next `snakemake` trains those runs again); this report holds the others:", alert=True)
    doc.table(pd.DataFrame(entries, columns=["record", "reason", "moved_to"]))


def _environment(doc: Document, table: pd.DataFrame, what: str) -> None:
    doc.heading(2, "Environment")
    doc.note(f"The machines and {what} versions these numbers come from:")
    doc.table(table)
