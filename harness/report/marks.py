"""Runs that stopped early but were tested, in the report's views. A run stopped by its time limit
(``timeout``) or by a non-finite loss (``diverged``) still tests a checkpoint, so its test accuracy is
real: every accuracy view counts it, marked ``†`` with a footnote saying where it stopped, and the
Summary never names a best variant past it. Runs without a test accuracy (``oom``, ``failed``) are in
no accuracy view: the views count them by status and the Runs table names them. The report opens
with a sentence naming the runs that did not finish ok, by status (``not_finished``)."""
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


NAMED = 4  # (task, variant) groups a status names in ``not_finished``; more are counted


def named_runs(runs: pd.DataFrame) -> str:
    """'listops/window seeds 0, 1; text/lsh trial 3' (a tuning trial by its index), the first ``NAMED``
    groups, then how many more."""
    trial = (runs["stage"] == "tune") if "stage" in runs else pd.Series(False, index=runs.index)
    groups: dict[tuple[str, str, str], list[str]] = {}
    for (_, r), is_trial in zip(runs.iterrows(), trial, strict=True):
        kind, number = ("trial", r["trial"]) if is_trial and "trial" in r else ("seed", r["seed"])
        groups.setdefault((str(r["task"]), str(r["variant"]), kind), []).append(_int(number))
    parts = [f"{task}/{variant} {kind}{'s' * (len(numbers) > 1)} "
             + ", ".join(sorted(numbers, key=lambda n: (len(n), n)))
             for (task, variant, kind), numbers in sorted(groups.items())]
    return "; ".join(parts[:NAMED]) + (f"; and {len(parts) - NAMED} more" if len(parts) > NAMED else "")


def not_finished(df: pd.DataFrame) -> str | None:
    """'5 of 10 runs did not finish ok: 2 oom (listops/lsh seeds 0, 1), 2 timeout (listops/window seeds 0,
    1), 1 diverged (listops/linear seed 0)': the runs of ``df`` whose status is not ok, by status (most
    first) and named, or None when every run finished ok."""
    bad = df[incomplete(df)]
    if bad.empty:
        return None
    counts = bad["status"].astype(str).value_counts()
    order = sorted(counts.index, key=lambda s: (-counts[s], s))
    parts = [f"{counts[s]} {s} ({named_runs(bad[bad['status'].astype(str) == s])})" for s in order]
    return f"{len(bad)} of {len(df)} run{'s' * (len(df) > 1)} did not finish ok: " + ", ".join(parts)
