"""LRA's published Table 1 in the report, beside this run's accuracy only where that is a
comparison: per task, when every run of it used LRA's own data and length (the ``lra_settings``
column, decided from each run's config). Then our test accuracy per variant sits in LRA's layout
(tasks as columns, an average by the configured convention), each variant followed by the row LRA
published for the model it implements. LRA tasks run at other settings get no such table: the
published rows appear on their own, in a separate "published reference" section."""
from __future__ import annotations

import pandas as pd

from attnbench.harness.report.forms import form_of
from attnbench.harness.report.lra_published import (
    CONVENTIONS,
    LRA_TASKS,
    OTHER_PUBLISHED,
    SOURCE,
    lra_average,
    published_row,
)
from attnbench.harness.report.marks import MARK, footnote, mark, tested
from attnbench.harness.report.measurements import whole
from attnbench.harness.report.runs import tested_checkpoints
from attnbench.harness.report.writer import Document


def _fmt(x: float | None) -> str:
    """A task's accuracy: FAIL (the paper's None), '–' when not run (NaN), else two decimals."""
    return "FAIL" if x is None else ("–" if pd.isna(x) else f"{x:.2f}")


def _fmt_average(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def comparable_tasks(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(LRA tasks of the run whose every run used LRA's settings, the other LRA tasks of the run)."""
    settings = df["lra_settings"] if "lra_settings" in df else pd.Series(False, index=df.index)
    ran = [t for t in LRA_TASKS if t in set(df["task"])]
    same = [t for t in ran if settings[df["task"] == t].fillna(False).astype(bool).all()]
    return same, [t for t in ran if t not in same]


def _published_rows(models, tasks: list[str], columns: dict[str, str], convention: int) -> list[dict]:
    rows = []
    for model in models:
        accs, source = published_row(model)
        label = source if source == "LRA Table 1" else source.split(":")[0]
        rows.append({"model": f"{model} (published, {label})", "form": "LRA's code",
                     **{columns[t]: _fmt(accs[t]) for t in tasks},
                     "average": _fmt_average(lra_average(accs, convention)), "seeds": ""})
    return rows


def lra_table(df: pd.DataFrame, convention: int = 5, tasks: list[str] | None = None) -> pd.DataFrame:
    """One row per variant (mean test accuracy over the seeds with one, %, marked where some did not
    finish ok) and after it LRA's published row for the same model, over ``tasks`` (default: every LRA
    task that ran); empty when none."""
    tasks = [t for t in LRA_TASKS if t in set(df["task"])] if tasks is None else tasks
    if not tasks:
        return pd.DataFrame()
    lengths = df.groupby("task")["seq_len"].first()
    columns = {t: f"{LRA_TASKS[t]} (N={whole(lengths[t])})" for t in tasks}
    rows = []
    for variant, vdf in df.groupby("variant", sort=True):
        runs = tested(vdf[vdf["task"].isin(tasks)])
        means = {t: 100 * runs[runs["task"] == t]["test_acc"].mean() for t in tasks}
        marks = {t: mark(runs[runs["task"] == t]) for t in tasks}
        average = lra_average(means, convention)
        row = {"model": f"{variant} (this run)", "form": form_of(vdf),
               **{columns[t]: _fmt(means[t]) + marks[t] for t in tasks},
               "average": _fmt_average(average) + (mark(runs) if average is not None else ""),
               "seeds": runs.groupby("task")["seed"].count().max()}
        rows.append(row)
        published = vdf["published_as"].dropna().unique() if "published_as" in vdf else []
        rows += _published_rows(published, tasks, columns, convention)
    out = pd.DataFrame(rows)
    out["seeds"] = out["seeds"].map(lambda s: "" if s == "" or pd.isna(s) else str(int(s)))
    return out


def published_reference_table(df: pd.DataFrame, convention: int = 5) -> pd.DataFrame:
    """LRA's published rows for the models this run's variants implement, all six tasks, no row of this run."""
    models = sorted(df["published_as"].dropna().unique()) if "published_as" in df else []
    out = pd.DataFrame(_published_rows(models, list(LRA_TASKS), dict(LRA_TASKS), convention))
    return out.drop(columns="seeds") if not out.empty else out


def lra_note(convention: int) -> str:
    others = "; ".join(f"{model}: {source}" for model, (_, source) in OTHER_PUBLISHED.items())
    return (f"Test accuracy (%) in LRA's layout; N is this run's sequence length. Rows marked published are "
            f"{SOURCE}, measured on LRA's data and settings (`config/lra.yaml`), unless they name another "
            f"source ({others}); rows of this run are comparable with them only when it ran that config. Average: "
            f"{CONVENTIONS[convention]}; '–' where a task it needs was not run or the paper did not report it. "
            "FAIL: the paper's chance-level entry. Form: whether a row's attention was computed as LRA's released "
            "code does (what Table 1 measured: `config/lra.yaml`) or as its paper defines it "
            "(`config/lra_paper.yaml`); a variant run both ways has a row for each.")


def lra_section(doc: Document, df: pd.DataFrame, convention: int = 5) -> None:
    """The comparison over the LRA tasks that ran LRA's settings; nothing when none did."""
    same, _ = comparable_tasks(df)
    if not same:
        return
    doc.heading(2, "LRA Table 1 comparison")
    doc.note(lra_note(convention) + " Only tasks that ran LRA's data and length are shown here. LRA tests its final "
             f"weights; this run tested each run's {tested_checkpoints(df)} (`train.test_checkpoint`). Every run "
             f"with a test accuracy counts; {MARK}: some of them did not finish ok (below).")
    doc.table(lra_table(df, convention, same))
    marked = footnote(tested(df[df["task"].isin(same)]))
    if marked:
        doc.note(marked)


def published_reference_section(doc: Document, df: pd.DataFrame, convention: int = 5) -> None:
    """LRA's published numbers on their own, when some LRA task ran at settings other than LRA's."""
    _, other = comparable_tasks(df)
    table = published_reference_table(df, convention)
    if not other or table.empty:
        return
    lengths = df.groupby("task")["seq_len"].first()
    ran = ", ".join(f"{LRA_TASKS[t]} at N={whole(lengths[t])}" for t in other)
    doc.heading(2, "Published reference: LRA Table 1")
    doc.note(f"This run's {ran} did not use LRA's data and length (`config/lra.yaml` does), so its accuracies are "
             f"not comparable with LRA's and are not shown here. For reference only: {SOURCE}, for the models "
             f"this run's variants implement. Average: {CONVENTIONS[convention]}; FAIL: the paper's chance-level "
             "entry.")
    doc.table(table)
