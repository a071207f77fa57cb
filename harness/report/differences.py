"""How sure the accuracies are: per task and variant the mean test accuracy with its t-interval
over seeds, and each variant against full attention paired by seed (the same seed gives both
sides the same data order), saying when a difference is within noise and how many seeds would
tell it apart. Pure functions of the runs' table (``results/summary.csv``)."""
from __future__ import annotations

import math

import pandas as pd

from attnbench.harness.report.marks import MARK, footnote, mark, tested
from attnbench.harness.report.stats import LEVEL, fmt_seeds, paired_difference, seeds_for, t_interval, verdict
from attnbench.harness.report.writer import Document

REFERENCE = "full"
TARGET_HALF_WIDTH = 1.0  # accuracy points: the interval the seed suggestion aims at


def runs_of(df: pd.DataFrame, task: str, variant: str) -> pd.DataFrame:
    """The runs of (task, variant) with a test accuracy, whatever their status (``marks``)."""
    return tested(df[(df["task"] == task) & (df["variant"] == variant)])


def seed_accuracies(df: pd.DataFrame, task: str, variant: str) -> pd.Series:
    """Test accuracy (%) of the runs of (task, variant) with one (those that stopped early too:
    ``marks``), indexed by seed; a seed recorded more than once (the same config on several machines)
    counts once, as its mean."""
    return (100 * runs_of(df, task, variant).groupby("seed")["test_acc"].mean()).sort_index()


def accuracy_bounds(low: float, high: float) -> tuple[float, float]:
    """An accuracy interval's bounds within 0-100 %: the t-interval itself does not know them."""
    return max(low, 0.0), min(high, 100.0)


def pts(x: float) -> str:
    """Accuracy points to one decimal ('–' where not a number)."""
    return "–" if not math.isfinite(x) else f"{x:.1f}"


def signed_pts(x: float) -> str:
    """A difference in points, signed, to one decimal ('–' where not a number)."""
    return "–" if not math.isfinite(x) else f"{x:+.1f}"


def interval_table(df: pd.DataFrame, half_width: float = TARGET_HALF_WIDTH) -> pd.DataFrame:
    """One row per (task, variant) with tested runs: mean (marked when some did not finish ok),
    t-interval, n, std and the seeds a ±half_width interval would need at this spread."""
    rows = []
    for (task, variant), _ in df.groupby(["task", "variant"], sort=True):
        iv = t_interval(seed_accuracies(df, task, variant))
        if iv.n == 0:
            continue
        low, high = accuracy_bounds(iv.low, iv.high)
        rows.append({"task": task, "variant": variant, "mean (%)": pts(iv.mean) + mark(runs_of(df, task, variant)),
                     f"{int(LEVEL * 100)}% CI": f"{pts(low)} – {pts(high)}" if iv.defined else "– (1 seed)",
                     "seeds": iv.n, "std": pts(iv.std),
                     f"seeds for ±{half_width:g} pt": fmt_seeds(seeds_for(iv.std, half_width))})
    return pd.DataFrame(rows)


def paired_rows(df: pd.DataFrame, reference: str = REFERENCE) -> list[dict]:
    """Each variant against ``reference`` per task (variant - reference, points): the paired
    interval, the verdict, the seeds that would resolve a difference this large at this spread, and
    ``mark`` (``MARK`` when a run on either side did not finish ok)."""
    rows = []
    for task in sorted(df["task"].unique()):
        ref = seed_accuracies(df, task, reference)
        if ref.empty:
            continue
        for variant in sorted(set(df[df["task"] == task]["variant"]) - {reference}):
            diff = paired_difference(seed_accuracies(df, task, variant), ref)
            if diff.n == 0:
                continue
            resolve = (seeds_for(diff.std, abs(diff.mean)) if diff.defined and diff.contains(0.0) and diff.mean
                       else None)
            rows.append({"task": task, "variant": variant, "diff": diff, "verdict": verdict(diff),
                         "seeds_to_resolve": resolve,
                         "mark": mark(pd.concat([runs_of(df, task, variant), runs_of(df, task, reference)]))})
    return rows


def paired_table(df: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    rows = []
    for r in paired_rows(df, reference):
        d = r["diff"]
        rows.append({"task": r["task"], "variant": r["variant"],
                     f"minus {reference} (points)": signed_pts(d.mean) + r["mark"],
                     f"{int(LEVEL * 100)}% CI": f"{signed_pts(d.low)} – {signed_pts(d.high)}" if d.defined else "–",
                     "pairs": d.n, "verdict": r["verdict"],
                     "seeds to resolve": fmt_seeds(r["seeds_to_resolve"]) if r["seeds_to_resolve"] else ""})
    return pd.DataFrame(rows)


def differences_section(doc: Document, df: pd.DataFrame) -> None:
    """Intervals, then the paired comparison against full attention (when full ran)."""
    level = int(LEVEL * 100)
    doc.heading(2, "Accuracy with confidence intervals")
    doc.note(f"Mean test accuracy over seeds with its two-sided {level}% Student-t interval (exact for few seeds "
             "if per-seed accuracies are roughly normal; with 2 seeds the t quantile is 12.7, so intervals are "
             "wide: that is the honest width; bounds are cut at 0 and 100). "
             f"`seeds for ±{TARGET_HALF_WIDTH:g} pt`: the seeds a ±{TARGET_HALF_WIDTH:g}-point interval would need "
             "at the spread seen here. Every run with a test accuracy counts, whatever its status: a mean marked "
             f"{MARK} holds runs that did not finish ok (below).")
    doc.table(interval_table(df))
    _footnote(doc, tested(df))
    paired = paired_table(df)
    if paired.empty:
        return
    doc.heading(2, f"Each variant against {REFERENCE} attention (paired by seed)")
    doc.note(f"Difference in test accuracy (variant minus {REFERENCE}, points) over the seeds both ran, with the "
             f"{level}% t-interval of the per-seed differences. `within noise`: the interval holds 0, so this run "
             "cannot tell the two apart; `higher`/`lower`: it excludes 0. `seeds to resolve`: the seeds that would "
             "exclude 0 if the difference and its spread stayed as measured. A difference marked "
             f"{MARK} holds runs that did not finish ok, on either side (below).")
    doc.table(paired)
    shown = df["task"].isin(set(paired["task"])) & df["variant"].isin(set(paired["variant"]) | {REFERENCE})
    _footnote(doc, tested(df[shown]))


def _footnote(doc: Document, runs: pd.DataFrame) -> None:
    text = footnote(runs)
    if text:
        doc.note(text)
