"""The report's LRA Table 1 comparison: our test accuracy per variant in LRA's layout (tasks
as columns, an average by the configured convention), each variant followed by the row LRA
published for the model it implements, labelled as published."""
from __future__ import annotations

import pandas as pd

from attnbench.harness.report.lra_published import (
    CONVENTIONS,
    LRA_TASKS,
    OTHER_PUBLISHED,
    SOURCE,
    lra_average,
    published_row,
)
from attnbench.harness.report.writer import Document


def _fmt(x: float | None) -> str:
    """A task's accuracy: FAIL (the paper's None), '–' when not run (NaN), else two decimals."""
    return "FAIL" if x is None else ("–" if pd.isna(x) else f"{x:.2f}")


def _fmt_average(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def lra_table(df: pd.DataFrame, convention: int = 5) -> pd.DataFrame:
    """One row per variant (mean test accuracy over ok seeds, %) and after it LRA's published
    row for the same model; empty when the runs hold no LRA task."""
    tasks = [t for t in LRA_TASKS if t in set(df["task"])]
    if not tasks:
        return pd.DataFrame()
    lengths = df.groupby("task")["seq_len"].first()
    columns = {t: f"{LRA_TASKS[t]} (N={int(lengths[t])})" for t in tasks}
    rows = []
    for variant, vdf in df.groupby("variant", sort=True):
        ok = vdf[(vdf["status"] == "ok") & vdf["test_acc"].notna()]
        means = {t: 100 * ok[ok["task"] == t]["test_acc"].mean() for t in tasks}
        row = {"model": f"{variant} (this run)", **{columns[t]: _fmt(means[t]) for t in tasks},
               "average": _fmt_average(lra_average(means, convention)),
               "seeds": ok.groupby("task")["seed"].count().max()}
        rows.append(row)
        published = vdf["published_as"].dropna().unique() if "published_as" in vdf else []
        for model in published:
            accs, source = published_row(model)
            label = source if source == "LRA Table 1" else source.split(":")[0]
            rows.append({"model": f"{model} (published, {label})", **{columns[t]: _fmt(accs[t]) for t in tasks},
                         "average": _fmt_average(lra_average(accs, convention)), "seeds": ""})
    out = pd.DataFrame(rows)
    out["seeds"] = out["seeds"].map(lambda s: "" if s == "" or pd.isna(s) else str(int(s)))
    return out


def lra_note(convention: int) -> str:
    others = "; ".join(f"{model}: {source}" for model, (_, source) in OTHER_PUBLISHED.items())
    return (f"Test accuracy (%) in LRA's layout; N is this run's sequence length. Rows marked published are "
            f"{SOURCE}, measured on LRA's data and settings (`config/lra.yaml`), unless they name another "
            f"source ({others}); rows of this run are comparable with them only when it ran that config. Average: "
            f"{CONVENTIONS[convention]}; '–' where a task it needs was not run or the paper did not report it. "
            "FAIL: the paper's chance-level entry.")


def lra_section(doc: Document, df: pd.DataFrame, convention: int = 5) -> None:
    """Nothing when no LRA task was run."""
    table = lra_table(df, convention)
    if table.empty:
        return
    doc.heading(2, "LRA Table 1 comparison")
    doc.note(lra_note(convention))
    doc.table(table)
