"""Render the comparison report from ``results/summary.csv`` and the runs' curves, and/or the
efficiency sweep's ``results/bench.csv``: ``reports/index.html`` (self-contained, figures
embedded), ``reports/summary.md`` and ``reports/figures/*.png``. Every number comes from a run
record or a sweep case; nothing is re-measured. What cannot be used as it is (a measurement that is
not a number in its range, a damaged curve) is left out and said: a warning at the top of the report,
where it applies, and on stderr."""
from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import pandas as pd

from attnbench.harness.core.errors import UserError
from attnbench.harness.report.bench import bench_section
from attnbench.harness.report.bench_tables import BENCH_ENV_COLUMNS, bench_environment_table
from attnbench.harness.report.classes import classes_section
from attnbench.harness.report.compute import equal_compute_section
from attnbench.harness.report.data import data_section
from attnbench.harness.report.differences import differences_section
from attnbench.harness.report.distillation import distillation_section
from attnbench.harness.report.forms import with_forms
from attnbench.harness.report.length import length_section
from attnbench.harness.report.lra import lra_section, published_reference_section
from attnbench.harness.report.machines import for_accuracy, for_cost, machines, machines_table, with_machines
from attnbench.harness.report.marks import MARK, not_finished
from attnbench.harness.report.measurements import BENCH_COLUMNS, RUN_COLUMNS, case_name, clean, run_name
from attnbench.harness.report.origins import origins_section
from attnbench.harness.report.pretraining import pretraining_section
from attnbench.harness.report.resolution import resolution_section
from attnbench.harness.report.runs import (
    accuracy_section,
    cost_section,
    environment_table,
    figures_section,
    runs_section,
)
from attnbench.harness.report.summary import summary_section
from attnbench.harness.report.tuning import final_runs, tuned_line, tuning_section
from attnbench.harness.report.writer import Document, read_table
from attnbench.harness.results.aggregate import left_out_file, set_aside_file


class NothingToReport(UserError, ValueError):
    """Neither the runs' table nor the sweep's holds a row."""


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _status_line(df: pd.DataFrame, what: str) -> str:
    counts = df["status"].value_counts()
    return f"{len(df)} {what}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def _paths(value) -> list[Path]:
    if value is None:
        return []
    return [Path(p) for p in ([value] if isinstance(value, (str, Path)) else value)]


def _read_all(paths: list[Path], columns: dict, name) -> tuple[pd.DataFrame, list[str]]:
    """The tables at ``paths`` in one, each measurement out of its range made missing
    (``measurements.clean``), and the warnings that says."""
    frames, warnings = [], []
    for path in paths:
        table = read_table(path)
        if table.empty:
            continue
        table, said = clean(table, path, columns, name)
        frames.append(table)
        warnings += said
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), warnings


def _write(doc: Document, title: str) -> Path:
    """Write the report; its warnings (a damaged file, a number that is none) also go to stderr."""
    for warning in doc.warnings:
        print(f"attnbench report: warning: {warning}", file=sys.stderr)
    return doc.write(title)


def render_report(summary_csv: Path | list[Path] | None, out_dir: Path, bench_csv: Path | list[Path] | None = None,
                  lra_average: int = 5, seeds: dict | None = None) -> Path:
    """Render ``out_dir/index.html`` and ``out_dir/summary.md`` (figures in ``out_dir/figures``)
    from the training runs' ``summary_csv`` and/or the efficiency sweep's ``bench_csv``, each one
    path or several (results from several machines: the machine becomes a dimension, see
    ``attnbench.harness.report.machines``).

    The report opens with a Summary computed from the data and a table of contents, then goes
    from the accuracies and their confidence intervals to accuracy at equal compute, the costs, the
    sweep and the single runs, and ends with the machines and code the numbers come from. With only
    the sweep, the report holds the sweep alone. ``lra_average`` is the LRA average's convention (5 or
    6 tasks, ``attnbench.harness.report.lra_published``); ``seeds`` the adaptive seeds settings, whose target the
    Seeds section holds each comparison to. Raises NothingToReport when nothing holds a row."""
    summaries, benches = _paths(summary_csv), _paths(bench_csv)
    (df, run_warnings), (bench, bench_warnings) = (_read_all(summaries, RUN_COLUMNS, run_name),
                                                   _read_all(benches, BENCH_COLUMNS, case_name))
    sources = ", ".join(f"`{p}`" for p in [*summaries, *benches])
    if df.empty and bench.empty:
        why = [f"{', '.join(map(str, summaries))} hold(s) no runs" if summaries else "no summary_csv given",
               f"{', '.join(map(str, benches))} hold(s) no efficiency cases" if benches else "no bench_csv given"]
        raise NothingToReport(f"{'; '.join(why)}: nothing to report")
    doc = Document(out_dir)
    if df.empty:
        title = "attnbench efficiency report"
        doc.heading(1, title)
        doc.note(f"Generated {_stamp()} from {sources}. {_status_line(bench, 'cases')}.")
        doc.warnings_here()
        for warning in bench_warnings:
            doc.warn(warning, here=False)
        summary_section(doc, df, df, bench)
        doc.toc()
        _bench_sections(doc, bench, benches)
        _environment(doc, bench_environment_table(bench), "library")
        return _write(doc, title)
    df = with_forms(with_machines(df))
    final = final_runs(df)  # every section but Tuning shows the final runs; the trials are Tuning's
    acc, cost = for_accuracy(final), for_cost(final)
    title = "attnbench report"
    doc.heading(1, title)
    doc.note(f"Generated {_stamp()} from {sources}. {_status_line(df, 'runs')}"
             + (f" on {len(machines(df))} machines." if len(machines(df)) > 1 else "."))
    doc.warnings_here()
    for warning in run_warnings + bench_warnings:
        doc.warn(warning, here=False)
    not_ok = not_finished(df)
    if not_ok:
        doc.note(f"{not_ok} (see Runs). Those with a test accuracy (a "
                 f"time limit or a diverging loss stops a run, and it still tests a checkpoint) count in every "
                 f"accuracy view, marked {MARK} with where they stopped; those without one are counted there by "
                 "status.", alert=True, html_only=True)
    for path in summaries:
        _set_aside_note(doc, set_aside_file(path))
        _left_out_note(doc, left_out_file(path))
    summary_section(doc, acc, final, _single_machine_bench(bench), tuned=tuned_line(df))
    doc.toc()
    accuracy_section(doc, acc)
    data_section(doc, final)
    origins_section(doc, final)
    differences_section(doc, acc)
    resolution_section(doc, final, seeds)
    tuning_section(doc, df)
    lra_section(doc, acc, lra_average)
    figures_section(doc, cost)
    classes_section(doc, acc)
    equal_compute_section(doc, acc, cost)
    length_section(doc, acc, _single_machine_bench(bench))
    cost_section(doc, cost)
    if not bench.empty:
        _bench_sections(doc, bench, benches)
    distillation_section(doc, cost)
    pretraining_section(doc, final)
    published_reference_section(doc, acc, lra_average)
    runs_section(doc, final)
    _about(doc, df)
    return _write(doc, title)


def _bench_machines(bench: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The sweep's cases per machine (one entry, unnamed, when all come from one)."""
    cols = [c for c in BENCH_ENV_COLUMNS if c in bench]
    keys = bench[cols].astype(str).agg(" · ".join, axis=1)
    if keys.nunique() <= 1:
        return [("", bench)]
    return [(key, bench[keys == key]) for key in sorted(keys.unique())]


def _single_machine_bench(bench: pd.DataFrame) -> pd.DataFrame:
    """The sweep for the summary: all of it from one machine, else none (never pooled)."""
    return bench if bench.empty or len(_bench_machines(bench)) == 1 else pd.DataFrame()


def _bench_sections(doc: Document, bench: pd.DataFrame, benches: list[Path]) -> None:
    source = ", ".join(map(str, benches)) or "results/bench.csv"
    for machine, cases in _bench_machines(bench):
        if machine:
            doc.heading(2, f"Efficiency sweep on {machine}")
        bench_section(doc, cases, source, level=3 if machine else 2)


def _about(doc: Document, df: pd.DataFrame) -> None:
    """The run's metadata in one place: machines, code, configs."""
    doc.heading(2, "About this run")
    doc.note("The machines, code and configs these numbers come from. A machine is a device name, device type, "
             "torch version and commit; with several, throughput and memory are shown per machine and accuracy "
             "is pooled only across runs whose configs are identical but for the seed (same setup hash).")
    doc.table(machines_table(df))
    doc.table(environment_table(df))
    if "setup_hash" in df:
        setups = df.groupby(["task", "variant"], sort=True).agg(
            setup_hash=("setup_hash", lambda h: ", ".join(sorted(set(map(str, h))))),
            config_hashes=("config_hash", "nunique"), machines=("machine", "nunique")).reset_index()
        doc.details(f"Setup hashes of {len(setups)} (task, variant) pairs (config without the seed)", setups,
                    "Setup hashes (config without the seed): `setup_hash` in the runs' table.")


def _set_aside_note(doc: Document, listing: Path) -> None:
    """Records the aggregation could not read and set aside: said at the top, each with its reason."""
    if not listing.exists():
        return
    entries = json.loads(listing.read_text(encoding="utf-8"))
    doc.note(f"{len(entries)} run record(s) could not be read, or contradicted themselves or their folder, and were "
             "set aside (moved out of their run folders, so the next `snakemake` trains those runs again); this "
             "report holds the others:", alert=True)
    doc.table(pd.DataFrame(entries, columns=["record", "reason", "moved_to"]))


def _left_out_note(doc: Document, listing: Path) -> None:
    """Records the aggregation left out where they are (not in its plan, another config, a second record of one
    run): said at the top, each with its reason, so that none is averaged unseen."""
    if not listing.exists():
        return
    entries = json.loads(listing.read_text(encoding="utf-8"))
    doc.note(f"{len(entries)} run record(s) were left out (not runs of the config aggregated, or a second record of "
             "one run); they stay where they are and count nowhere in this report:", alert=True)
    doc.table(pd.DataFrame(entries, columns=["record", "reason"]))


def _environment(doc: Document, table: pd.DataFrame, what: str) -> None:
    doc.heading(2, "Environment")
    doc.note(f"The machines and {what} versions these numbers come from:")
    doc.table(table)
