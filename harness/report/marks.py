"""Runs that stopped early but were tested, in the report's views. A run stopped by its time limit
(``timeout``) or by a non-finite loss (``diverged``) still tests a checkpoint, so its test accuracy is
real: every accuracy view counts it, marked ``†`` with a footnote saying where it stopped, and the
Summary never names a best variant past it. Runs without a test accuracy (``oom``, ``failed``) are in
no accuracy view: the views count them by status and the Runs table names them."""
from __future__ import annotations

import pandas as pd

MARK = "†"
TESTED = {"best": "best-validation checkpoint", "final": "final weights"}
STOPPED = {"timeout": "stopped by the time limit", "diverged": "diverged (a non-finite loss)"}


def tested(df: pd.DataFrame) -> pd.DataFrame:
    """The runs with a test accuracy, whatever their status."""
    return df[df["test_acc"].notna()]


def incomplete(df: pd.DataFrame) -> pd.Series:
    """Per run: True where it did not finish ok (the runs a view marks)."""
    return df["status"] != "ok"


def mark(df: pd.DataFrame) -> str:
    """``MARK`` when some of these runs did not finish ok, else ''."""
    return MARK if incomplete(df).any() else ""


def _int(x, sep: str = "") -> str:
    return "?" if pd.isna(x) else format(int(x), sep)


def stopped(row) -> str:
    """Where one run stopped: 'stopped by the time limit after 280 of 300 steps'."""
    return (f"{STOPPED.get(row['status'], row['status'])} after {_int(row['steps_done'], ',')} of "
            f"{_int(row['steps_planned'], ',')} steps")


def footnote(df: pd.DataFrame) -> str | None:
    """'† Did not finish ok: window seeds 0, 1 stopped by the time limit after 300 of 300 steps (best-
    validation checkpoint tested); ...' for the runs of ``df`` that did not finish ok, or None. A run
    is named ``task/variant`` when ``df`` holds several tasks."""
    bad = df[incomplete(df)]
    if bad.empty:
        return None
    several = df["task"].nunique() > 1
    parts = []
    for (task, variant), runs in bad.groupby(["task", "variant"], sort=True):
        name = f"{task}/{variant}" if several else str(variant)
        by_where: dict[str, list[str]] = {}
        for _, r in runs.sort_values("seed").iterrows():
            where = stopped(r)
            checkpoint = r.get("tested_checkpoint")
            if pd.notna(r["test_acc"]) and checkpoint in TESTED:
                where += f" ({TESTED[checkpoint]} tested)"
            by_where.setdefault(where, []).append(_int(r["seed"]))
        for where, seeds in by_where.items():
            parts.append(f"{name} seed{'s' * (len(seeds) > 1)} {', '.join(seeds)} {where}")
    return f"{MARK} Did not finish ok: " + "; ".join(parts) + "."
